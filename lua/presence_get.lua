-- Drop expired entries, then return every live one.
-- KEYS[1] presence data hash
-- KEYS[2] presence expiry zset
-- KEYS[3] user expiry zset
-- KEYS[4] user connection counts
-- ARGV[1] now, unix s
-- Returns a flat HGETALL list: client id, info, client id, info, ...
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
for _, client in ipairs(expired) do
  -- An expired client leaves its user's count too, as presence_remove does;
  -- the stored info is the JSON array [user, client, conn_info, chan_info].
  local info = redis.call('hget', KEYS[1], client)
  if info then
    redis.call('hdel', KEYS[1], client)
    local user = cjson.decode(info)[1]
    if redis.call('hincrby', KEYS[4], user, -1) <= 0 then
      redis.call('hdel', KEYS[4], user)
      redis.call('zrem', KEYS[3], user)
    end
  end
end
redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
return redis.call('hgetall', KEYS[1])
