-- Publish without history, at most once per idempotency key within its TTL.
-- KEYS[1] result hash key   (P.result.<ch>.<idempotency key>)
-- ARGV[1] PUB/SUB channel
-- ARGV[2] payload
-- ARGV[3] result ttl, s
-- Returns 1 when published, 0 when the key was already used.
if redis.call('exists', KEYS[1]) == 1 then
  return 0
end
redis.call('spublish', ARGV[1], ARGV[2])
redis.call('hset', KEYS[1], 'e', '')
redis.call('expire', KEYS[1], ARGV[3])
return 1
