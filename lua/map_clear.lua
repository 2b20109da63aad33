-- Forget one map channel: stream, meta, state and its bookkeeping, atomically (centrifuge's
-- Clear). The next write or read starts a new epoch. Nothing is published.
-- KEYS[1] stream, KEYS[2] meta hash, KEYS[3] state hash, KEYS[4] expire zset,
-- KEYS[5] state meta hash, KEYS[6] state order zset (centrifuge's ordered state: unused
-- here, deleted so a channel Centrifugo wrote is cleared whole), KEYS[7] cleanup zset
-- ARGV[1] channel           (the member of KEYS[7])
-- Returns the number of keys deleted.
redis.call('zrem', KEYS[7], ARGV[1])
return redis.call('del', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
