"""Redis engine: broker (history, offsets, sharded PUB/SUB fan-out), presence, and the map
broker (map channels' keyed state, its own section and shards)."""

from __future__ import annotations

from app.config import RedisConfig, RedisMapBrokerConfig
from app.engines.redis.address import specs_from_config
from app.engines.redis.broker import RedisBroker
from app.engines.redis.maps import RedisMapBroker
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


def create_redis_map_broker(rcfg: RedisMapBrokerConfig, where: str) -> RedisMapBroker:
    """The map broker over the shards of `map_broker.redis` (its own deployment and
    connections, as Centrifugo's)."""
    shards = [Shard(spec, rcfg, i) for i, spec in enumerate(specs_from_config(rcfg, where))]
    return RedisMapBroker(
        shards,
        prefix=rcfg.prefix,
        cleanup_interval=float(rcfg.cleanup_interval),
        cleanup_batch_size=rcfg.cleanup_batch_size,
        idempotent_result_ttl=float(rcfg.idempotent_result_ttl),
        skip_pub_sub=rcfg.skip_pub_sub,
        io_timeout=float(rcfg.io_timeout),
    )
