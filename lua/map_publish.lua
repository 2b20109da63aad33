-- Map publish of one key: idempotency, epoch, per-key version, key mode, compare-and-swap,
-- offset, state, per-key expiry, stream append, fan-out, all atomic (centrifuge's
-- map_broker_add.lua, publish half; the key names are its layout, app/engines/redis/maps_keys.py).
-- KEYS[1] stream            (P:stream:<ch>; entries <offset>-0 with e = epoch, d = payload)
-- KEYS[2] meta hash         (P:meta:<ch>: e = epoch, s = top offset)
-- KEYS[3] result hash       (P.result.<ch>.<idempotency key>; unused when ARGV[9] == '0')
-- KEYS[4] state hash        (P:state:<ch>: key -> '<offset>:<epoch>:<payload>')
-- KEYS[5] expire zset       (P:state:expire:<ch>: key -> expiry, unix ms)
-- KEYS[6] state meta hash   (P:state:meta:<ch>: epoch = the epoch the state belongs to,
--                            updated_at, v:<key> / ve:<key> = the key's version and its epoch,
--                            ss / st / mt = stream size, stream ttl ms, meta ttl ms: what
--                            the expiry of keys (map_remove_expired.lua) appends with)
-- KEYS[7] cleanup zset      (P:cleanup:channels: channel -> its earliest key expiry, unix ms)
-- ARGV[1]  key
-- ARGV[2]  payload          (app/engines/redis/codec.py encode_payload: stored and published)
-- ARGV[3]  PUB/SUB channel  (SPUBLISH target; '' = store only: skip_pub_sub)
-- ARGV[4]  streamless       ('1': ephemeral mode, no stream, meta nor state meta; offset 0,
--                            epoch '')
-- ARGV[5]  stream size      (exact XADD MAXLEN)
-- ARGV[6]  stream ttl, ms   (stream PEXPIRE, from the last append)
-- ARGV[7]  meta ttl, ms     ('0' = never: meta, state and its zset, state meta otherwise
--                            PEXPIRE this long after the last write)
-- ARGV[8]  candidate epoch  (adopted only when the meta hash has none)
-- ARGV[9]  result ttl, ms   ('0' = no idempotency key)
-- ARGV[10] delta            ('1': the published message carries "dl" and, when the key had a
--                            value, its data as "pd", base64, in the payload's meta object)
-- ARGV[11] version          (decimal uint64; '0' = not versioned; ignored when streamless)
-- ARGV[12] version epoch    ('' matches any stored one)
-- ARGV[13] key ttl, ms      ('0' = the key never expires)
-- ARGV[14] channel          (the member of KEYS[7])
-- ARGV[15] key mode         ('', 'if_new', 'if_exists')
-- ARGV[16] refresh ttl on suppress ('1': an if_new write suppressed by an existing key still
--                            extends the key's expiry, and the containers' TTLs)
-- ARGV[17] expected offset  ('' = no compare-and-swap)
-- ARGV[18] expected epoch
-- ARGV[19] now, unix ms
-- Returns {offset, epoch, reason, current}: reason '' stored (offset the new top), else why
-- nothing was stored nor sent ('idempotency': offset and epoch of the first result;
-- 'version', 'key_exists', 'key_not_found', 'position_mismatch': the current top), current
-- the key's stored value on 'position_mismatch' ('' when absent), else ''.
-- A failing redis.call aborts the script with its error; the writes before it stay (Redis
-- scripts are not rolled back): only the checks precede the first write of a stored change.
local stream, meta, result, state, expire, state_meta, cleanup =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local key, payload, pubsub = ARGV[1], ARGV[2], ARGV[3]
local streamless = ARGV[4] == '1'
local meta_ttl, result_ttl = ARGV[7], ARGV[9]
local version, version_epoch = ARGV[11], ARGV[12]
local key_ttl = tonumber(ARGV[13])
local channel, key_mode = ARGV[14], ARGV[15]
local expected_offset, expected_epoch = ARGV[17], ARGV[18]
local now = tonumber(ARGV[19])

-- Versions compare as decimal strings (length, then bytes): uint64 values past 2^53 stay
-- exact (Lua numbers are doubles), as lua/history_add.lua.
local function newer(v, stored)
  if #v ~= #stored then
    return #v > #stored
  end
  return v > stored
end

local B64 = {}
local letters = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
for i = 1, 64 do
  B64[i - 1] = string.sub(letters, i, i)
end

-- Standard base64 with padding (Redis's Lua has no encoder): prev_data travels in the
-- payload's JSON meta, as codec.py encodes it.
local function b64(s)
  local out, n = {}, #s
  local i = 1
  while i + 2 <= n do
    local a, b, c = string.byte(s, i, i + 2)
    local v = a * 65536 + b * 256 + c
    out[#out + 1] = B64[math.floor(v / 262144)] .. B64[math.floor(v / 4096) % 64]
      .. B64[math.floor(v / 64) % 64] .. B64[v % 64]
    i = i + 3
  end
  if n - i == 1 then
    local a, b = string.byte(s, i, i + 1)
    local v = a * 65536 + b * 256
    out[#out + 1] = B64[math.floor(v / 262144)] .. B64[math.floor(v / 4096) % 64]
      .. B64[math.floor(v / 64) % 64] .. '='
  elseif n - i == 0 then
    local v = string.byte(s, i) * 65536
    out[#out + 1] = B64[math.floor(v / 262144)] .. B64[math.floor(v / 4096) % 64] .. '=='
  end
  return table.concat(out)
end

-- The published message of a delta write: "dl" (and "pd", the previous data) spliced into
-- the payload's meta object, which the payload of a map key always opens (it has "k").
local function with_delta(prev)
  local extra = '"dl":true'
  if prev then
    -- prev is '<offset>:<epoch>:<meta>\n<data>'
    local c1 = string.find(prev, ':', 1, true)
    local c2 = string.find(prev, ':', c1 + 1, true)
    local nl = string.find(prev, '\n', c2 + 1, true)
    extra = extra .. ',"pd":"' .. b64(string.sub(prev, nl + 1)) .. '"'
  end
  if string.sub(payload, 1, 1) == '{' then
    return '{' .. extra .. ',' .. string.sub(payload, 2)
  end
  return '{' .. extra .. '}' .. payload
end

-- The channel's earliest key expiry in the cleanup zset: lowered, never raised here (a
-- too-early entry only costs the cleanup one look).
local function register(expire_at)
  local score = redis.call('zscore', cleanup, channel)
  if not score or tonumber(score) > expire_at then
    redis.call('zadd', cleanup, expire_at, channel)
  end
end

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
  -- State is valid only in the epoch its state meta names: a state that outlived its meta
  -- (expired, evicted) belongs to a dead epoch and must not suppress writes of the new one.
  if redis.call('exists', state) == 1 and redis.call('hget', state_meta, 'epoch') ~= epoch then
    redis.call('del', state, expire, state_meta)
    redis.call('zrem', cleanup, channel)
  end
  if version ~= '0' then
    local stored = redis.call('hmget', state_meta, 'v:' .. key, 've:' .. key)
    if stored[1] and (version_epoch == '' or version_epoch == stored[2])
        and not newer(version, stored[1]) then
      return {top, epoch, 'version', ''}
    end
  end
end

if key_mode ~= '' then
  local exists = redis.call('hexists', state, key) == 1
  if key_mode == 'if_new' and exists then
    if ARGV[16] == '1' and key_ttl > 0 then
      local expire_at = now + key_ttl
      redis.call('zadd', expire, expire_at, key)
      register(expire_at)
      -- Keeping a key alive keeps its channel alive: else the meta would expire under it
      -- and the next write would start a new epoch.
      if meta_ttl ~= '0' then
        redis.call('pexpire', state, meta_ttl)
        redis.call('pexpire', expire, meta_ttl)
        if not streamless then
          redis.call('pexpire', meta, meta_ttl)
          redis.call('pexpire', state_meta, meta_ttl)
        end
      end
      if not streamless then
        redis.call('pexpire', stream, ARGV[6])
      end
    end
    return {top, epoch, 'key_exists', ''}
  end
  if key_mode == 'if_exists' and not exists then
    return {top, epoch, 'key_not_found', ''}
  end
end

if expected_offset ~= '' then
  local current = redis.call('hget', state, key)
  if expected_epoch ~= epoch or not current then
    return {top, epoch, 'position_mismatch', current or ''}
  end
  local colon = string.find(current, ':', 1, true)
  if string.sub(current, 1, colon - 1) ~= expected_offset then
    return {top, epoch, 'position_mismatch', current}
  end
end

if not streamless then
  top = redis.call('hincrby', meta, 's', 1)
  if meta_ttl ~= '0' then
    redis.call('pexpire', meta, meta_ttl)
  end
end

local message = payload
if ARGV[10] == '1' then
  message = with_delta(redis.call('hget', state, key))
end

redis.call('hset', state, key, top .. ':' .. epoch .. ':' .. payload)
if key_ttl > 0 then
  local expire_at = now + key_ttl
  redis.call('zadd', expire, expire_at, key)
  register(expire_at)
end
if meta_ttl ~= '0' then
  redis.call('pexpire', state, meta_ttl)
  if key_ttl > 0 then
    redis.call('pexpire', expire, meta_ttl)
  end
end

if not streamless then
  redis.call('hset', state_meta, 'epoch', epoch, 'updated_at', now,
    'ss', ARGV[5], 'st', ARGV[6], 'mt', meta_ttl)
  if version ~= '0' then
    redis.call('hset', state_meta, 'v:' .. key, version, 've:' .. key, version_epoch)
  end
  if meta_ttl ~= '0' then
    redis.call('pexpire', state_meta, meta_ttl)
  end
  if top == 1 then
    -- A new series (meta expired or evicted while the stream survived): drop stale entries.
    redis.call('del', stream)
  end
  redis.call('xadd', stream, 'MAXLEN', ARGV[5], top .. '-0', 'e', epoch, 'd', payload)
  redis.call('pexpire', stream, ARGV[6])
end

if pubsub ~= '' then
  redis.call('spublish', pubsub, '__p1:' .. top .. ':' .. epoch .. '__' .. message)
end

if result_ttl ~= '0' then
  redis.call('hset', result, 'e', epoch, 's', top)
  redis.call('pexpire', result, result_ttl)
end
return {top, epoch, '', ''}
