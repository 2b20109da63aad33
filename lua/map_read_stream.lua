-- Entries of one map channel's stream after (or, reversed, before) a position, and its top
-- (centrifuge's map_broker_stream_read.lua, plus the recoverability check the map broker
-- contract asks of every broker: app/maps/broker.py read_stream).
-- KEYS[1] stream            (P:stream:<ch>; entries <offset>-0 with e = epoch, d = payload)
-- KEYS[2] meta hash         (P:meta:<ch>: e = epoch, s = top offset)
-- ARGV[1] since offset      ('' = from the start, or the end when reversed)
-- ARGV[2] since epoch       ('' = not checked, as centrifuge)
-- ARGV[3] limit             ('-1' all, '0' position only, N at most N)
-- ARGV[4] reverse           ('1': newest first, before since)
-- ARGV[5] meta ttl, ms      ('0' = never)
-- ARGV[6] candidate epoch   (adopted only when the meta hash has none: the stream of a new
--                            epoch starts empty, so a stale one is dropped)
-- Returns {top offset, epoch, flag, entries}: flag '' or 'u' (unrecoverable: since names
-- another epoch, or entries after it are gone: the oldest kept is past since + 1), entries
-- as XRANGE answers them.
local stream, meta = KEYS[1], KEYS[2]
local since, limit = ARGV[1], ARGV[3]
local reverse = ARGV[4] == '1'

local m = redis.call('hmget', meta, 'e', 's')
local epoch, top = m[1], tonumber(m[2]) or 0
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', meta, 'e', epoch)
  redis.call('del', stream)
end
if ARGV[5] ~= '0' then
  redis.call('pexpire', meta, ARGV[5])
end

if since ~= '' then
  if ARGV[2] ~= '' and ARGV[2] ~= epoch then
    return {top, epoch, 'u', {}}
  end
  local from = tonumber(since)
  if not reverse and from < top then
    local first = redis.call('xrange', stream, '-', '+', 'COUNT', 1)
    if #first == 0 or tonumber(string.match(first[1][1], '^(%d+)')) > from + 1 then
      return {top, epoch, 'u', {}}
    end
  end
end

if limit == '0' then
  return {top, epoch, '', {}}
end
local count = {}
if limit ~= '-1' then
  count = {'COUNT', limit}
end
if reverse then
  local last = '+'
  if since ~= '' then
    if tonumber(since) <= 1 then
      return {top, epoch, '', {}}
    end
    last = (tonumber(since) - 1) .. '-0'
  end
  return {top, epoch, '', redis.call('xrevrange', stream, last, '-', unpack(count))}
end
local first = '-'
if since ~= '' then
  first = (tonumber(since) + 1) .. '-0'
end
return {top, epoch, '', redis.call('xrange', stream, first, '+', unpack(count))}
