-- Release a shared poll channel's polling lease (app/sharedpoll/redis_link.py), only if
-- this link still holds it: a lease that expired and went to another worker stays theirs.
-- KEYS[1] lease
-- ARGV[1] this link's token
-- Returns 1 when released, 0 when another worker (or nobody) held it.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
