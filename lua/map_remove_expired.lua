-- Removal of expired keys of one map channel, each like lua/map_remove.lua (offset, stream
-- append, fan-out), all atomic (centrifuge's map_broker_batch_remove.lua). Every node runs
-- the expiry: a key is removed only while its expiry score is still the one the caller
-- found, so a key refreshed meanwhile stays, and a key another node removed first is a
-- no-op here (one removal publication per expiry).
-- KEYS[1] state hash, KEYS[2] expire zset, KEYS[3] stream, KEYS[4] meta hash,
-- KEYS[5] state meta hash, KEYS[6] cleanup zset (see lua/map_publish.lua)
-- ARGV[1] PUB/SUB channel   ('' = store only)
-- ARGV[2] channel           (the member of KEYS[6])
-- ARGV[3] candidate epoch   (adopted only when the meta hash has none)
-- ARGV[4 + 3i], ARGV[5 + 3i], ARGV[6 + 3i] (i from 0): key, removal payload (codec.py
--          encode_payload with key, removed, time, the key's tags), the expiry score found
-- The channel has a stream when the state meta names its stream size (ss, written by every
-- publish of a mode with a stream); the stream's ttl and the meta ttl come from there too.
-- Returns the number of keys removed.
local state, expire, stream, meta, state_meta, cleanup =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local pubsub, channel = ARGV[1], ARGV[2]
local opts = redis.call('hmget', state_meta, 'ss', 'st', 'mt')
local size, stream_ttl, meta_ttl = opts[1], opts[2], opts[3]

local epoch = ''
if size then
  epoch = redis.call('hget', meta, 'e')
  if not epoch then
    epoch = ARGV[3]
    redis.call('hset', meta, 'e', epoch)
  end
end

local removed = 0
for i = 4, #ARGV, 3 do
  local key, payload, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('zscore', expire, key) == score then
    local top = 0
    if size then
      top = redis.call('hincrby', meta, 's', 1)
      if meta_ttl ~= '0' then
        redis.call('pexpire', meta, meta_ttl)
      end
      if top == 1 then
        redis.call('del', stream)
      end
      redis.call('xadd', stream, 'MAXLEN', size, top .. '-0', 'e', epoch, 'd', payload)
      redis.call('pexpire', stream, stream_ttl)
      redis.call('hdel', state_meta, 'v:' .. key, 've:' .. key)
    end
    redis.call('hdel', state, key)
    redis.call('zrem', expire, key)
    if pubsub ~= '' then
      redis.call('spublish', pubsub, '__p1:' .. top .. ':' .. epoch .. '__' .. payload)
    end
    removed = removed + 1
  end
end

local earliest = redis.call('zrange', expire, 0, 0, 'WITHSCORES')
if earliest[2] then
  redis.call('zadd', cleanup, earliest[2], channel)
else
  redis.call('zrem', cleanup, channel)
end
return removed
