-- Publish with history: idempotency check, epoch, offset, append, fan-out, all atomic.
-- KEYS[1] stream key        (P.stream.<ch>)
-- KEYS[2] meta hash key     (P.stream.meta.<ch>: e = epoch, s = top offset)
-- KEYS[3] result hash key   (P.result.<ch>.<idempotency key>; unused when ARGV[7] == '0')
-- ARGV[1] payload           (stored as field d; published after the __p1 header)
-- ARGV[2] history size      (exact XADD MAXLEN)
-- ARGV[3] history ttl, s    (stream EXPIRE, counted from the last publish)
-- ARGV[4] PUB/SUB channel   ('' = store only)
-- ARGV[5] meta ttl, s       ('0' = meta never expires)
-- ARGV[6] candidate epoch   (adopted only when the meta hash has none)
-- ARGV[7] result ttl, s     ('0' = no idempotency key)
-- Returns {offset, epoch, from_cache ('1' when an idempotency key matched)}.
if ARGV[7] ~= '0' then
  local cached = redis.call('hmget', KEYS[3], 'e', 's')
  if cached[1] then
    return {tonumber(cached[2]), cached[1], '1'}
  end
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
if ARGV[5] ~= '0' then
  redis.call('expire', KEYS[2], ARGV[5])
end
if offset == 1 then
  -- A new series (meta expired or evicted while the stream survived): drop stale entries.
  redis.call('del', KEYS[1])
end
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('spublish', ARGV[4], '__p1:' .. offset .. ':' .. epoch .. '__' .. ARGV[1])
end
if ARGV[7] ~= '0' then
  redis.call('hset', KEYS[3], 'e', epoch, 's', offset)
  redis.call('expire', KEYS[3], ARGV[7])
end
return {offset, epoch, '0'}
