-- Drop a channel's stored publications; the meta hash (epoch, top offset) stays.
-- KEYS[1] stream key
return redis.call('del', KEYS[1])
