"""Redis engine: broker (history, offsets, sharded PUB/SUB fan-out) and presence."""

from __future__ import annotations

from app.config import RedisConfig
from app.engines.redis.address import specs_from_config
from app.engines.redis.broker import RedisBroker
from app.engines.redis.presence import RedisPresenceManager
from app.engines.redis.shard import Shard


def create_redis_engine(
    rcfg: RedisConfig, where: str = "redis"
) -> tuple[RedisBroker, RedisPresenceManager]:
    """Broker and presence manager over the shards of `rcfg` (the config section `where`,
    named in RedisConfigError messages)."""
    shards = [Shard(spec, rcfg, i) for i, spec in enumerate(specs_from_config(rcfg, where))]
    broker = RedisBroker(shards, io_timeout=float(rcfg.io_timeout))
    return broker, RedisPresenceManager(broker, float(rcfg.presence_ttl))
