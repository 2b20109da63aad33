-- One worker's heartbeat for one shared poll channel (app/sharedpoll/redis_link.py): keep
-- the keys it tracks in the channel's tracked-key set, keep the channel's versionless epoch,
-- and hold or take the channel's polling lease. Exactly one worker of the deployment holds
-- the lease and polls the backend for the union of every worker's keys.
-- KEYS[1] lease            (string: the holder's token, expires unless renewed)
-- KEYS[2] tracked keys     (zset: key -> unix ms after which no worker tracks it)
-- KEYS[3] channel meta     (hash: epoch e, versionless counter c)
-- ARGV[1] this link's token ('<node id>:<random>': a link never takes another's lease)
-- ARGV[2] lease ttl, ms
-- ARGV[3] key ttl, ms      (a key no worker refreshed for this long leaves the set)
-- ARGV[4] meta ttl, ms     (the epoch and counter outlive short idle spells)
-- ARGV[5] candidate epoch  (kept only when the meta has none)
-- ARGV[6..] keys this worker tracks (all on a timer tick, new ones on a join)
-- Returns {1, epoch, every tracked key} to the lease holder, {0, epoch} to the others.
-- Partial failure: each command stands alone; a failed call changes nothing a later
-- heartbeat would not redo.
local lease, tracked, meta = KEYS[1], KEYS[2], KEYS[3]
local token, lease_ttl, key_ttl, meta_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

-- Redis's clock, not the workers': hosts may disagree.
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + key_ttl

-- GT: a key another worker refreshed for longer keeps its later expiry.
local batch = {}
for i = 6, #ARGV do
  batch[#batch + 1] = until_ms
  batch[#batch + 1] = ARGV[i]
  if #batch >= 1000 then
    redis.call('zadd', tracked, 'GT', unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('zadd', tracked, 'GT', unpack(batch))
end
if redis.call('exists', tracked) == 1 then
  redis.call('pexpire', tracked, key_ttl * 2)
end

redis.call('hsetnx', meta, 'e', ARGV[5])
redis.call('pexpire', meta, meta_ttl)
local epoch = redis.call('hget', meta, 'e')

local holder = redis.call('get', lease)
if holder == token then
  redis.call('pexpire', lease, lease_ttl)
elseif not holder then
  redis.call('set', lease, token, 'PX', lease_ttl)
else
  return {0, epoch}
end
redis.call('zremrangebyscore', tracked, '-inf', now)
return {1, epoch, redis.call('zrange', tracked, 0, -1)}
