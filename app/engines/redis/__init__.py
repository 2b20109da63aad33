"""Redis engine: broker (history, offsets, sharded PUB/SUB fan-out) and presence."""

from __future__ import annotations

from app.config import RedisConfig
from app.engines.redis.broker import RedisBroker
from app.engines.redis.presence import RedisPresenceManager
from app.engines.redis.shard import Shard, specs_from_config


def create_redis_engine(rcfg: RedisConfig) -> tuple[RedisBroker, RedisPresenceManager]:
    shards = [Shard(spec, rcfg, i) for i, spec in enumerate(specs_from_config(rcfg))]
    broker = RedisBroker(shards, io_timeout=float(rcfg.io_timeout))
    return broker, RedisPresenceManager(broker, float(rcfg.presence_ttl))


async def check_reachable(rcfg: RedisConfig, attempts: int = 3) -> None:
    """Connect to every shard once, retrying; raises ConnectionError naming the
    address that could not be reached (the CLI turns it into one error line)."""
    import asyncio

    from redis.exceptions import RedisError

    for i, spec in enumerate(specs_from_config(rcfg)):
        shard = Shard(spec, rcfg, i)
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                await shard.connect()
                last = None
                break
            except (RedisError, OSError) as e:
                last = e
                await asyncio.sleep(min(0.5 * (attempt + 1), 2.0))
            finally:
                await shard.close()
        if last is not None:
            where = spec.unix_path or f"{spec.host}:{spec.port}"
            raise ConnectionError(f"redis {spec.kind} at {where} unreachable: {last}")
