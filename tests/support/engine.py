"""Driving RedisBroker / RedisPresenceManager directly, as the integration tests do.

- `EngineEvents`: the one BrokerEventHandler recorder of the engine tests (integration and unit):
  lists of what the broker delivered with waits on them, and per (kind, channel) consumption.
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
    """A BrokerEventHandler that records everything the broker delivers and wakes waiters.

    Two ways to read it, over the same record:
    - the lists `pubs` ((channel, pub, epoch)), `joins` / `leaves` ((channel, info)) and
      `controls` (bytes), `pubs_in(channel)`, and `wait_for(predicate)` / `wait_pubs(channel,
      n)` which return once the predicate holds after some delivery;
    - `next(kind, channel)` (kind "pub" gives (pub, epoch), "join"/"leave" the ClientInfo,
      "control" the bytes; channel "" for control), which consumes events in delivery order
      per (kind, channel), and `pending(kind, channel)`, what is delivered but not yet consumed.

    `id` is the node id the broker subscribes its unicast control channel with.
    """

    def __init__(self, node_id: str = "") -> None:
        self.id = node_id or str(uuid.uuid4())
        self.pubs: list[tuple[str, Publication, str]] = []
        self.joins: list[tuple[str, ClientInfo]] = []
        self.leaves: list[tuple[str, ClientInfo]] = []
        self.controls: list[bytes] = []
        self._consumed: dict[tuple[str, str], int] = {}
        self._waiters: list[asyncio.Event] = []

    def _changed(self) -> None:
        for ev in self._waiters:
            ev.set()
        self._waiters.clear()

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        self.pubs.append((channel, pub, epoch))
        self._changed()

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))
        self._changed()

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self._changed()

    def handle_control(self, data: bytes) -> None:
        self.controls.append(data)
        self._changed()

    def pubs_in(self, channel: str) -> list[Publication]:
        return [p for ch, p, _ in self.pubs if ch == channel]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Returns as soon as `predicate()` holds after some delivery; fails on timeout."""
        async with asyncio.timeout(timeout):
            while not predicate():
                ev = asyncio.Event()
                self._waiters.append(ev)
                await ev.wait()

    async def wait_pubs(self, channel: str, n: int, timeout: float = 5.0) -> list[Publication]:
        await self.wait_for(lambda: len(self.pubs_in(channel)) >= n, timeout)
        return self.pubs_in(channel)

    def _events(self, kind: str, channel: str) -> list[Any]:
        if kind == "pub":
            return [(p, e) for ch, p, e in self.pubs if ch == channel]
        if kind == "join":
            return [info for ch, info in self.joins if ch == channel]
        if kind == "leave":
            return [info for ch, info in self.leaves if ch == channel]
        if kind == "control":
            return list(self.controls)
        raise ValueError(f"unknown event kind {kind!r}")

    async def next(self, kind: str, channel: str = "", timeout: float = 5.0) -> Any:
        """The next not yet consumed `kind` event on `channel`, waiting up to `timeout`."""
        key = (kind, channel)
        seen = self._consumed.get(key, 0)
        try:
            await self.wait_for(lambda: len(self._events(kind, channel)) > seen, timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} event on {channel!r} within {timeout}s") from None
        self._consumed[key] = seen + 1
        return self._events(kind, channel)[seen]

    def pending(self, kind: str, channel: str = "") -> list[Any]:
        """Delivered but not yet consumed events (does not wait); consumes them."""
        key = (kind, channel)
        events = self._events(kind, channel)
        out = events[self._consumed.get(key, 0) :]
        self._consumed[key] = len(events)
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
