-- A page of one map channel's state and the stream position it belongs to (centrifuge's
-- map_broker_read_unordered.lua; single-key reads as its readSingleKey).
-- KEYS[1] state hash        (P:state:<ch>: key -> '<offset>:<epoch>:<payload>')
-- KEYS[2] meta hash         (P:meta:<ch>: e = epoch, s = top offset)
-- KEYS[3] state meta hash   (P:state:meta:<ch>: epoch = the epoch the state belongs to)
-- KEYS[4] expire zset       (P:state:expire:<ch>; only its TTL is refreshed)
-- ARGV[1] streamless        ('1': no meta, no epoch check; position 0, '')
-- ARGV[2] cursor            (HSCAN cursor, '0' = first page)
-- ARGV[3] limit             ('-1' all (HGETALL), '0' position only, N: HSCAN COUNT N, which
--                            may answer more than N keys)
-- ARGV[4] key               ('' = a page; else only that key, cursor and limit ignored)
-- ARGV[5] meta ttl, ms      ('0' = never; else meta, state, its zset and state meta are
--                            kept this long from the read, as a write would)
-- ARGV[6] candidate epoch   (adopted only when the meta hash has none: a read fixes the
--                            epoch a later write continues)
-- Returns {top offset, epoch, next cursor ('0' = last page), {key, value, ...}}. Keys whose
-- expiry passed are still listed until the expiry removes them (with a removal the readers
-- then see), as in centrifuge: dropping them here would hide that removal.
local state, meta, state_meta, expire = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, key, meta_ttl = ARGV[3], ARGV[4], ARGV[5]
local epoch, top = '', 0

if ARGV[1] ~= '1' then
  local m = redis.call('hmget', meta, 'e', 's')
  epoch, top = m[1], tonumber(m[2]) or 0
  if not epoch then
    epoch = ARGV[6]
    redis.call('hset', meta, 'e', epoch)
  end
  if meta_ttl ~= '0' then
    redis.call('pexpire', meta, meta_ttl)
    redis.call('pexpire', state, meta_ttl)
    redis.call('pexpire', expire, meta_ttl)
    redis.call('pexpire', state_meta, meta_ttl)
  end
  -- A state of another epoch (its meta expired or was evicted first) is no state of this one.
  if redis.call('hget', state_meta, 'epoch') ~= epoch then
    return {top, epoch, '0', {}}
  end
end

if key ~= '' then
  local value = redis.call('hget', state, key)
  if value then
    return {top, epoch, '0', {key, value}}
  end
  return {top, epoch, '0', {}}
end
if limit == '0' then
  return {top, epoch, '0', {}}
end
if limit == '-1' then
  return {top, epoch, '0', redis.call('hgetall', state)}
end
local page = redis.call('hscan', state, ARGV[2], 'COUNT', limit)
return {top, epoch, page[1], page[2]}
