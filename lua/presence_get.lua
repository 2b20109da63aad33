-- Drop expired entries, then return every live one.
-- KEYS[1] presence data hash
-- KEYS[2] presence expiry zset
-- ARGV[1] now, unix s
-- Returns a flat HGETALL list: client id, info, client id, info, ...
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
for _, client in ipairs(expired) do
  redis.call('hdel', KEYS[1], client)
end
redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
return redis.call('hgetall', KEYS[1])
