-- Map removal of one key: idempotency, epoch, compare-and-swap, existence, offset, state,
-- stream append of the removal, fan-out, all atomic (centrifuge's map_broker_add.lua, leave
-- half; keys as lua/map_publish.lua names them).
-- KEYS[1] stream, KEYS[2] meta hash, KEYS[3] result hash, KEYS[4] state hash,
-- KEYS[5] expire zset, KEYS[6] state meta hash, KEYS[7] cleanup zset (see map_publish.lua)
-- ARGV[1]  key
-- ARGV[2]  removal payload  (codec.py encode_payload with key, removed, time: stored in the
--                            stream and published)
-- ARGV[3]  PUB/SUB channel  ('' = store only)
-- ARGV[4]  streamless       ('1': no stream, meta nor state meta; offset 0, epoch '')
-- ARGV[5]  stream size, ARGV[6] stream ttl ms, ARGV[7] meta ttl ms ('0' = never)
-- ARGV[8]  candidate epoch
-- ARGV[9]  result ttl, ms   ('0' = no idempotency key)
-- ARGV[10] channel          (the member of KEYS[7])
-- ARGV[11] expected offset  ('' = no compare-and-swap), ARGV[12] expected epoch
-- ARGV[13] entry tags       ('1': the removal carries the removed entry's tags, "t" of its
--                            stored meta, spliced into the payload's meta object)
-- Returns {offset, epoch, reason, current} as map_publish.lua: reason '' removed,
-- 'idempotency', 'position_mismatch' (current: the stored value or ''), 'key_not_found'.
local stream, meta, result, state, expire, state_meta, cleanup =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local key, payload, pubsub = ARGV[1], ARGV[2], ARGV[3]
local streamless = ARGV[4] == '1'
local meta_ttl, result_ttl, channel = ARGV[7], ARGV[9], ARGV[10]
local expected_offset, expected_epoch = ARGV[11], ARGV[12]

if result_ttl ~= '0' then
  local cached = redis.call('hmget', result, 'e', 's')
  if cached[1] then
    return {tonumber(cached[2]) or 0, cached[1], 'idempotency', ''}
  end
end

local epoch, top = '', 0
if not streamless then
  epoch = redis.call('hget', meta, 'e')
  if not epoch then
    epoch = ARGV[8]
    redis.call('hset', meta, 'e', epoch)
  end
  top = tonumber(redis.call('hget', meta, 's')) or 0
  -- A state of a dead epoch (see map_publish.lua) holds no key of this one.
  if redis.call('exists', state) == 1 and redis.call('hget', state_meta, 'epoch') ~= epoch then
    redis.call('del', state, expire, state_meta)
    redis.call('zrem', cleanup, channel)
  end
end

local current = redis.call('hget', state, key)
if expected_offset ~= '' then
  if expected_epoch ~= epoch or not current then
    return {top, epoch, 'position_mismatch', current or ''}
  end
  local colon = string.find(current, ':', 1, true)
  if string.sub(current, 1, colon - 1) ~= expected_offset then
    return {top, epoch, 'position_mismatch', current}
  end
end
if not current then
  return {top, epoch, 'key_not_found', ''}
end

if ARGV[13] == '1' then
  local c1 = string.find(current, ':', 1, true)
  local c2 = string.find(current, ':', c1 + 1, true)
  local nl = string.find(current, '\n', c2 + 1, true)
  if nl > c2 + 1 then
    local tags = cjson.decode(string.sub(current, c2 + 1, nl - 1))['t']
    if tags then
      payload = '{"t":' .. cjson.encode(tags) .. ',' .. string.sub(payload, 2)
    end
  end
end

if not streamless then
  top = redis.call('hincrby', meta, 's', 1)
  if meta_ttl ~= '0' then
    redis.call('pexpire', meta, meta_ttl)
  end
end

redis.call('hdel', state, key)
redis.call('zrem', expire, key)
if not streamless then
  redis.call('hdel', state_meta, 'v:' .. key, 've:' .. key)
end
-- The cleanup zset follows the earliest expiry left, or forgets the channel.
local earliest = redis.call('zrange', expire, 0, 0, 'WITHSCORES')
if earliest[2] then
  redis.call('zadd', cleanup, earliest[2], channel)
else
  redis.call('zrem', cleanup, channel)
end

if not streamless then
  if top == 1 then
    redis.call('del', stream)
  end
  redis.call('xadd', stream, 'MAXLEN', ARGV[5], top .. '-0', 'e', epoch, 'd', payload)
  redis.call('pexpire', stream, ARGV[6])
end

if pubsub ~= '' then
  redis.call('spublish', pubsub, '__p1:' .. top .. ':' .. epoch .. '__' .. payload)
end

if result_ttl ~= '0' then
  redis.call('hset', result, 'e', epoch, 's', top)
  redis.call('pexpire', result, result_ttl)
end
return {top, epoch, '', ''}
