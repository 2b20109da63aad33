"""The whole server in this process (app/hosting/server.py) and the one engine choice
(app/engines/build.py)."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from app.config import load_config
from app.engines.build import build_engines, engine_choice, uses_memory_engine
from app.engines.memory import MemoryBroker, MemoryPresenceManager
from app.hosting.gunicorn import gunicorn_options
from app.hosting.server import (
    KEEPALIVE_TIMEOUT,
    LISTEN_BACKLOG,
    DrainingRunner,
    ServerSettings,
    bind_addresses,
    serve,
)
from app.node import NODE_KEY
from app.transports.websocket.lean import LeanServer


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    # The node tunes the worker's GC when it starts; this process is not a worker.
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def _config(**flags: Any) -> Any:
    base = {"http_server.port": 0, "client.insecure": True, "http_api.insecure": True}
    return load_config(None, env={}, flags={**base, **flags})


@pytest.fixture
async def server() -> AsyncIterator[tuple[DrainingRunner, int]]:
    runner = await serve(_config(**{"http_server.address": "127.0.0.1"}))
    port = runner.addresses[0][1]
    yield runner, port
    await runner.cleanup()


async def test_serve_is_the_worker_server(server: tuple[DrainingRunner, int]) -> None:
    runner, port = server
    # The lean WebSocket server sits in front of aiohttp, as in a worker.
    assert isinstance(runner.server, LeanServer)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/api/info", json={}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["result"]["nodes"][0]["uid"] == runner.app[NODE_KEY].id
        async with session.ws_connect(f"ws://127.0.0.1:{port}/connection/websocket") as ws:
            await ws.send_str(json.dumps({"id": 1, "connect": {}}))
            reply = json.loads(await ws.receive_str())
            assert reply["id"] == 1 and reply["connect"]["client"]


async def test_cleanup_drains_clients_with_3001() -> None:
    runner = await serve(_config(**{"http_server.address": "127.0.0.1"}))
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/connection/websocket") as ws:
            await ws.send_str(json.dumps({"id": 1, "connect": {}}))
            await ws.receive_str()
            # What a worker does on SIGTERM: the client learns the server is shutting down.
            await runner.cleanup()
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 3001


def test_settings_follow_the_config() -> None:
    cfg = _config(**{"shutdown.timeout": "10s", "http_server.internal_port": 9001})
    settings = ServerSettings.for_config(cfg)
    assert settings.graceful_timeout == 10
    assert settings.keepalive_timeout == KEEPALIVE_TIMEOUT
    assert settings.backlog == LISTEN_BACKLOG
    assert settings.shutdown_timeout == pytest.approx(9.5)
    assert bind_addresses(cfg) == [("0.0.0.0", 0), ("0.0.0.0", 9001)]
    options = gunicorn_options(cfg, 2, settings)
    assert options["keepalive"] == KEEPALIVE_TIMEOUT
    assert options["backlog"] == LISTEN_BACKLOG
    assert options["graceful_timeout"] == 10


@pytest.mark.parametrize(
    ("flags", "broker", "presence", "memory"),
    [
        ({}, ("memory", "engine"), ("memory", "engine"), True),
        ({"engine.type": "redis"}, ("redis", "engine"), ("redis", "engine"), False),
        (
            {"engine.type": "redis", "presence_manager.enabled": True},
            ("redis", "engine"),
            ("memory", "presence_manager"),
            True,
        ),
        (
            {"broker.enabled": True, "broker.type": "redis"},
            ("redis", "broker"),
            ("memory", "engine"),
            True,
        ),
        (
            {
                "broker.enabled": True,
                "broker.type": "redis",
                "presence_manager.enabled": True,
                "presence_manager.type": "redis",
            },
            ("redis", "broker"),
            ("redis", "presence_manager"),
            False,
        ),
    ],
)
def test_engine_choice(
    flags: dict[str, Any], broker: tuple[str, str], presence: tuple[str, str], memory: bool
) -> None:
    cfg = load_config(None, env={}, flags=flags)
    choice = engine_choice(cfg)
    assert (choice.broker.type, choice.broker.section) == broker
    assert (choice.presence.type, choice.presence.section) == presence
    assert uses_memory_engine(cfg) is memory
    assert [p.section for p in choice.redis_parts()] == [
        section for kind, section in dict.fromkeys((broker, presence)) if kind == "redis"
    ]


def test_build_engines_memory() -> None:
    engines = build_engines(load_config(None, env={}))
    assert isinstance(engines.broker, MemoryBroker)
    assert isinstance(engines.presence, MemoryPresenceManager)


def test_build_engines_share_redis_shards() -> None:
    from app.engines.redis import RedisBroker, RedisPresenceManager

    shared = build_engines(load_config(None, env={}, flags={"engine.type": "redis"}))
    assert isinstance(shared.broker, RedisBroker)
    assert isinstance(shared.presence, RedisPresenceManager)
    # One set of connections for both parts when they use the same section.
    assert shared.presence._broker is shared.broker
    apart = build_engines(
        load_config(
            None,
            env={},
            flags={
                "engine.type": "redis",
                "presence_manager.enabled": True,
                "presence_manager.type": "redis",
                "presence_manager.redis.address": "redis://127.0.0.1:6390",
            },
        )
    )
    assert isinstance(apart.presence, RedisPresenceManager)
    assert apart.presence._broker is not apart.broker
