"""The engine started while its Redis is unreachable: `run` returns, commands fail fast with
error 100, and the engine heals by itself once Redis answers — for a standalone Redis, a
Cluster behind a plain address (detected by INFO at first contact, not at boot) and Sentinel.

Redis "comes back" by a TCP forwarder starting to listen on the configured port in front of
a real redis-server (or sentinel), so the session's shared topologies keep running.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from app.engines.redis import RedisBroker, RedisPresenceManager, create_redis_engine
from app.errors import ClientError
from app.models import ClientInfo, HistoryFilter, PublishOptions
from tests.support.engine import EngineEvents, redis_engine_config, until
from tests.support.ports import free_port
from tests.support.redis_topologies import ClusterTopology, SentinelTopology

HISTORY = PublishOptions(history_size=10, history_ttl=60.0)
FAST = 1.0  # seconds within which a command must fail while Redis is unreachable


class Forwarder:
    """Listens on `port` (once started) and pipes every connection to `target_port`."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._pipes):
            t.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


Started = tuple[RedisBroker, RedisPresenceManager, EngineEvents, Forwarder]
Starter = Callable[[str, int, int], Awaitable[Started]]


@pytest.fixture
async def start_unreachable() -> AsyncIterator[Starter]:
    """`await start(address_template, forwarded_port, target_port)`: an engine on
    `address_template.format(port=forwarded_port)` with nothing listening there yet."""
    started: list[Started] = []

    async def start(template: str, port: int, target: int) -> Started:
        prefix = "t" + uuid.uuid4().hex[:8]
        broker, presence = create_redis_engine(
            redis_engine_config(template.format(port=port), prefix)
        )
        events = EngineEvents()
        t0 = time.monotonic()
        await broker.run_control(events)
        await broker.run(events)  # must neither raise nor wait for Redis
        assert time.monotonic() - t0 < FAST
        fwd = Forwarder(port, target)
        started.append((broker, presence, events, fwd))
        return broker, presence, events, fwd

    yield start
    for broker, presence, _, fwd in started:
        await presence.close()
        await broker.close()
        await fwd.close()


async def fails_fast(call: Awaitable[Any]) -> None:
    t0 = time.monotonic()
    with pytest.raises(ClientError) as e:
        await call
    assert e.value.code == 100
    assert time.monotonic() - t0 < FAST


async def assert_unreachable_then_heals(
    broker: RedisBroker, presence: RedisPresenceManager, events: EngineEvents, fwd: Forwarder
) -> None:
    ch = "news:" + uuid.uuid4().hex[:6]
    assert not broker.healthy
    assert broker.shards[0].keys is None  # mode unknown until Redis is reached
    await fails_fast(broker.subscribe([ch]))
    await fails_fast(broker.publish(ch, b"{}", HISTORY))
    await fails_fast(broker.history(ch, HistoryFilter()))
    await fails_fast(presence.presence(ch))
    await fails_fast(presence.add_presence(ch, "c1", ClientInfo("u1", "c1")))
    await fails_fast(broker.publish_control(b"x"))

    await fwd.start()
    await until("broker healthy", lambda: broker.healthy, 10.0)
    await broker.subscribe([ch])
    res = await broker.publish(ch, b'{"n":1}', HISTORY)
    pub, epoch = await events.next("pub", ch)
    assert (pub.offset, pub.data, epoch) == (1, b'{"n":1}', res.position.epoch)
    await presence.add_presence(ch, "c1", ClientInfo("u1", "c1"))
    assert list(await presence.presence(ch)) == ["c1"]


async def test_standalone_unreachable_at_start_heals(
    start_unreachable: Starter, redis_proc: Any
) -> None:
    broker, presence, events, fwd = await start_unreachable(
        "redis://127.0.0.1:{port}", free_port(), redis_proc.port
    )
    await assert_unreachable_then_heals(broker, presence, events, fwd)
    assert broker.shards[0].spec.kind == "standalone"


async def test_cluster_behind_plain_address_detected_when_first_reached(
    start_unreachable: Starter, redis_cluster: ClusterTopology
) -> None:
    broker, presence, events, fwd = await start_unreachable(
        "redis://127.0.0.1:{port}", free_port(), redis_cluster.ports[0]
    )
    assert broker.shards[0].spec.kind == "standalone"  # all that is known at boot
    await assert_unreachable_then_heals(broker, presence, events, fwd)
    keys = broker.shards[0].keys
    assert keys is not None and keys.cluster
    assert broker.shards[0].spec.kind == "cluster"


async def test_sentinel_unreachable_at_start_heals(
    start_unreachable: Starter, redis_sentinel: SentinelTopology
) -> None:
    template = "redis+sentinel://127.0.0.1:{port}?sentinel_master_name=" + (
        redis_sentinel.master_name
    )
    broker, presence, events, fwd = await start_unreachable(
        template, free_port(), redis_sentinel.sentinel.port
    )
    await assert_unreachable_then_heals(broker, presence, events, fwd)
