-- Count live clients and users without reading every entry.
-- KEYS[1] presence data hash
-- KEYS[2] presence expiry zset
-- KEYS[3] user expiry zset
-- KEYS[4] user connection counts
-- ARGV[1] now, unix s
-- Returns {num_clients, num_users}. A user expires only when none of their
-- clients refreshed it, so a crashed node's users vanish within one TTL.
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
local gone = redis.call('zrangebyscore', KEYS[3], '0', ARGV[1])
for _, user in ipairs(gone) do
  redis.call('hdel', KEYS[4], user)
end
redis.call('zremrangebyscore', KEYS[3], '0', ARGV[1])
return {redis.call('hlen', KEYS[1]), redis.call('hlen', KEYS[4])}
