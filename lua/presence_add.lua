-- Add or refresh one presence entry.
-- KEYS[1] presence data hash    (P.presence.data.<ch>: client id -> info)
-- KEYS[2] presence expiry zset  (P.presence.expire.<ch>: client id scored by expire time)
-- ARGV[1] ttl, s                (whole-key EXPIRE; a dead channel disappears)
-- ARGV[2] expire at, unix s     (per-entry expiry; a dead node's clients disappear)
-- ARGV[3] client id
-- ARGV[4] encoded client info
redis.call('hset', KEYS[1], ARGV[3], ARGV[4])
redis.call('expire', KEYS[1], ARGV[1])
redis.call('zadd', KEYS[2], ARGV[2], ARGV[3])
redis.call('expire', KEYS[2], ARGV[1])
return 1
