-- Remove one presence entry; the user disappears with their last client.
-- KEYS[1] presence data hash
-- KEYS[2] presence expiry zset
-- KEYS[3] user expiry zset
-- KEYS[4] user connection counts
-- ARGV[1] client id
-- ARGV[2] user id
if redis.call('hdel', KEYS[1], ARGV[1]) == 1 then
  redis.call('zrem', KEYS[2], ARGV[1])
  if redis.call('hincrby', KEYS[4], ARGV[2], -1) <= 0 then
    redis.call('hdel', KEYS[4], ARGV[2])
    redis.call('zrem', KEYS[3], ARGV[2])
  end
end
return 1
