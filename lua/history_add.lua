-- Publish with history: idempotency check, epoch, version check, offset, append, fan-out,
-- all atomic. Takes one publication or several (a server API batch): item i (from 0) has
-- KEYS[3i+1 .. 3i+3] and ARGV[9i+1 .. 9i+9]. One call per publication would spend most
-- of Redis's time entering and leaving the script; the items stay independent (a later
-- item's version check sees an earlier item of the same channel stored).
-- KEYS[1] stream key        (P.stream.<ch>)
-- KEYS[2] meta hash key     (P.stream.meta.<ch>: e = epoch, s = top offset,
--                            v = last stored version, ve = its version epoch)
-- KEYS[3] result hash key   (P.result.<ch>.<idempotency key>; unused when ARGV[7] == '0')
-- ARGV[1] payload           (stored as field d; published after the __p1 header)
-- ARGV[2] history size      (exact XADD MAXLEN)
-- ARGV[3] history ttl, s    (stream EXPIRE, counted from the last publish)
-- ARGV[4] PUB/SUB channel   ('' = store only)
-- ARGV[5] meta ttl, s       ('0' = meta never expires)
-- ARGV[6] candidate epoch   (adopted only when the meta hash has none)
-- ARGV[7] result ttl, s     ('0' = no idempotency key)
-- ARGV[8] version           (decimal uint64; '0' = not versioned: no check, v kept)
-- ARGV[9] version epoch     ('' matches any stored one)
-- Returns {offset, epoch, flag} per item, flattened. flag: '0' stored; '1' an idempotency
-- key matched (its first result); 'v' dropped, as its version is not newer than v in the
-- same version epoch (offset = the current top; nothing stored or sent, the meta TTL not
-- slid, as centrifuge's script); 'e' failed ({0, its error message, 'e'}), the others
-- still apply, as separate calls would.
-- Meta fields, version rule and the dropped answer are centrifuge's
-- broker_history_add_stream.lua, but versions compare as decimal strings (length, then
-- bytes) so uint64 values past 2^53 stay exact (Lua numbers are doubles).
local function newer(version, stored)
  if #version ~= #stored then
    return #version > #stored
  end
  return version > stored
end

local function add(i, j)
  local stream, meta, result = KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
  local payload, channel, result_ttl = ARGV[j + 1], ARGV[j + 4], ARGV[j + 7]
  if result_ttl ~= '0' then
    local cached = redis.call('hmget', result, 'e', 's')
    if cached[1] then
      return tonumber(cached[2]), cached[1], '1'
    end
  end
  local epoch = redis.call('hget', meta, 'e')
  if not epoch then
    epoch = ARGV[j + 6]
    redis.call('hset', meta, 'e', epoch)
  end
  local version, version_epoch = ARGV[j + 8], ARGV[j + 9]
  if version ~= '0' then
    local stored = redis.call('hmget', meta, 'v', 've', 's')
    if stored[1] and (version_epoch == '' or version_epoch == stored[2])
        and not newer(version, stored[1]) then
      return tonumber(stored[3]) or 0, epoch, 'v'
    end
    redis.call('hset', meta, 'v', version, 've', version_epoch)
  end
  local offset = redis.call('hincrby', meta, 's', 1)
  if ARGV[j + 5] ~= '0' then
    redis.call('expire', meta, ARGV[j + 5])
  end
  if offset == 1 then
    -- A new series (meta expired or evicted while the stream survived): drop stale entries.
    redis.call('del', stream)
  end
  redis.call('xadd', stream, 'MAXLEN', ARGV[j + 2], offset .. '-0', 'd', payload)
  redis.call('expire', stream, ARGV[j + 3])
  if channel ~= '' then
    redis.call('spublish', channel, '__p1:' .. offset .. ':' .. epoch .. '__' .. payload)
  end
  if result_ttl ~= '0' then
    redis.call('hset', result, 'e', epoch, 's', offset)
    redis.call('expire', result, result_ttl)
  end
  return offset, epoch, '0'
end

local out = {}
for n = 0, #KEYS / 3 - 1 do
  local ok, offset, epoch, cached = pcall(add, 3 * n, 9 * n)
  if not ok then
    -- redis.call raises a table {err = message}
    offset, epoch, cached = 0, type(offset) == 'table' and offset.err or tostring(offset), 'e'
  end
  out[3 * n + 1] = offset
  out[3 * n + 2] = epoch
  out[3 * n + 3] = cached
end
return out
