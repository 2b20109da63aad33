-- Keys of one map channel whose expiry has passed, with what the removal needs (centrifuge's
-- map_broker_find_expired.lua). Read-only: lua/map_remove_expired.lua removes them, after
-- the caller built each removal publication with the key's tags (codec.py is the encoder).
-- KEYS[1] state hash        (P:state:<ch>)
-- KEYS[2] expire zset       (P:state:expire:<ch>: key -> expiry, unix ms)
-- ARGV[1] now, unix ms
-- ARGV[2] batch size        (at most this many keys)
-- Returns {key, stored value ('' if absent), expiry score, ...} flattened, earliest first.
local expired = redis.call('zrangebyscore', KEYS[2], 0, ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
for i = 1, #expired, 2 do
  local key = expired[i]
  out[#out + 1] = key
  out[#out + 1] = redis.call('hget', KEYS[1], key) or ''
  out[#out + 1] = expired[i + 1]
end
return out
