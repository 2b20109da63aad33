-- Remove one presence entry.
-- KEYS[1] presence data hash
-- KEYS[2] presence expiry zset
-- ARGV[1] client id
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
