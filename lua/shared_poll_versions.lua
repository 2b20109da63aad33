-- Versions for a versionless shared poll channel's changed items, made by the polling
-- worker (app/sharedpoll/redis_link.py): from one counter in Redis, so a worker that takes
-- the lease over goes on above every version its predecessor handed out.
-- KEYS[1] channel meta     (hash: epoch e, counter c; see lua/shared_poll_heartbeat.lua)
-- ARGV[1] how many versions
-- ARGV[2] meta ttl, ms
-- Returns the last of the new versions (the first is that - ARGV[1] + 1).
local top = redis.call('hincrby', KEYS[1], 'c', ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[2])
return top
