-- Add or refresh one presence entry and its user's count.
-- KEYS[1] presence data hash        (P.presence.data.<ch>: client id -> info)
-- KEYS[2] presence expiry zset      (P.presence.expire.<ch>: client id scored by expire time)
-- KEYS[3] user expiry zset          (P.presence.user.expire.<ch>: user id scored by expire time)
-- KEYS[4] user connection counts    (P.presence.user.clients.<ch>: user id -> number of clients)
-- ARGV[1] ttl, s                    (whole-key EXPIRE; a dead channel disappears)
-- ARGV[2] expire at, unix s         (per-entry expiry; a dead node's clients disappear)
-- ARGV[3] client id
-- ARGV[4] encoded client info
-- ARGV[5] user id
local is_new = redis.call('hexists', KEYS[1], ARGV[3]) == 0
redis.call('hset', KEYS[1], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
if is_new then
  redis.call('hincrby', KEYS[4], ARGV[5], 1)
end
redis.call('zadd', KEYS[3], ARGV[2], ARGV[5])
for i = 1, 4 do
  redis.call('expire', KEYS[i], ARGV[1])
end
return 1
