"""Driving RedisBroker / RedisPresenceManager directly, as the integration tests do.

- `EngineEvents`: a BrokerEventHandler queueing what the broker delivers, per (kind, channel).
- `redis_engine_config(address, prefix, **opts)`: the `engine.redis` section, built by the
  real config loader.
- `until(what, cond)`: poll a state that has no event of its own (e.g. `broker.healthy`).
- `channels_in_partitions(tag)`: channel names spread over every cluster partition.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from app.config import RedisConfig, load_config
from app.engines.redis.keys import CLUSTER_PARTITIONS, Keys
from app.models import ClientInfo, Publication


class EngineEvents:
    """A BrokerEventHandler that queues what the broker delivers, per (kind, channel).

    `id` is the node id the broker subscribes its unicast control channel with.
    """

    def __init__(self, node_id: str = "") -> None:
        self.id = node_id or str(uuid.uuid4())
        self._queues: dict[tuple[str, str], asyncio.Queue[Any]] = {}

    def _q(self, kind: str, channel: str) -> asyncio.Queue[Any]:
        key = (kind, channel)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = asyncio.Queue()
        return q

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        self._q("pub", channel).put_nowait((pub, epoch))

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self._q("join", channel).put_nowait(info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self._q("leave", channel).put_nowait(info)

    def handle_control(self, data: bytes) -> None:
        self._q("control", "").put_nowait(data)

    async def next(self, kind: str, channel: str = "", timeout: float = 5.0) -> Any:
        try:
            return await asyncio.wait_for(self._q(kind, channel).get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} event on {channel!r} within {timeout}s") from None

    def pending(self, kind: str, channel: str = "") -> list[Any]:
        """Delivered but not yet consumed events (does not wait)."""
        q = self._q(kind, channel)
        out = []
        while not q.empty():
            out.append(q.get_nowait())
        return out


def redis_engine_config(address: str, prefix: str, **redis_opts: Any) -> RedisConfig:
    """`engine.redis` section (RedisConfig) for `address`, built by the real config loader."""
    flags = {"engine.type": "redis", "engine.redis.address": address, "engine.redis.prefix": prefix}
    flags.update({f"engine.redis.{k}": v for k, v in redis_opts.items()})
    return load_config(None, env={}, flags=flags).engine.redis


async def until(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll a state with no event of its own (e.g. `broker.healthy`); returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start


def channels_in_partitions(tag: str, count: int = CLUSTER_PARTITIONS) -> list[str]:
    """`count` channel names `<tag>:<i>`, each in a different cluster partition (all 16 by
    default, so every master of the cluster holds some). Partitions do not depend on the key
    prefix, so the names suit any engine."""
    keys = Keys("p", cluster=True)
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < count:
        ch = f"{tag}:{i}"
        chosen.setdefault(keys.partition(ch), ch)
        i += 1
    return list(chosen.values())
