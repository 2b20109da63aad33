-- Read a channel's stream position and (optionally) a window of publications.
-- KEYS[1] stream key
-- KEYS[2] meta hash key
-- ARGV[1] include publications ('1' / '0')
-- ARGV[2] start id          (forward: first offset to include, '-' = oldest;
--                            reverse: last offset to include, '+' = newest)
-- ARGV[3] limit             ('0' = no COUNT)
-- ARGV[4] reverse           ('1' / '0')
-- ARGV[5] meta ttl, s       ('0' = never expires; a read slides the meta TTL)
-- ARGV[6] candidate epoch   (a read creates the meta, so a position always exists)
-- Returns {top offset, epoch, entries or false}.
local meta = redis.call('hmget', KEYS[2], 'e', 's')
local epoch = meta[1]
local top = tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'e', epoch)
end
if ARGV[5] ~= '0' then
  redis.call('expire', KEYS[2], ARGV[5])
end
local entries = false
if ARGV[1] == '1' then
  if ARGV[4] == '1' then
    if ARGV[3] ~= '0' then
      entries = redis.call('xrevrange', KEYS[1], ARGV[2], '-', 'COUNT', ARGV[3])
    else
      entries = redis.call('xrevrange', KEYS[1], ARGV[2], '-')
    end
  else
    if ARGV[3] ~= '0' then
      entries = redis.call('xrange', KEYS[1], ARGV[2], '+', 'COUNT', ARGV[3])
    else
      entries = redis.call('xrange', KEYS[1], ARGV[2], '+')
    end
  end
end
return {top, epoch, entries}
