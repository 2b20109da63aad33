"""Shared poll end to end: a real server whose refresh proxies point at a real HTTP backend
(aiohttp, in this module's event loop), raw JSON WebSocket clients that subscribe with
type 4 and track signed keys, and the server API's shared_poll_publish.

The backend answers each refresh from its `items` and logs every request; tests await the
requests they expect (the log wakes waiters on arrival), never a fixed time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from app.sharedpoll.signature import sign
from tests.support.poll_backend import Backend

from .helpers import RawWS, ServerHandle, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "e2e-poll-secret"
USER = "alice"
INTERVAL = 0.1


def _namespace(name: str, **shared_poll: Any) -> dict[str, Any]:
    return {
        "name": name,
        "subscription_type": "shared_poll",
        "allow_subscribe_for_client": True,
        "shared_poll": {"refresh_interval": f"{int(INTERVAL * 1000)}ms", **shared_poll},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


@pytest.fixture(scope="module")
def server(backend: Backend) -> Iterator[ServerHandle]:
    url = f"http://127.0.0.1:{backend.port}"
    handle = start_server(
        {
            "shared_poll": {"hmac_secret_key": SECRET},
            "proxies": [{"name": "poller", "endpoint": f"{url}/named", "timeout": "2s"}],
            "channel": {
                "proxy": {"shared_poll_refresh": {"endpoint": f"{url}/default", "timeout": "2s"}},
                "namespaces": [
                    _namespace(
                        "poll",
                        proxy_name="poller",
                        mode="versioned",
                        max_keys_per_connection=3,
                        channel_shutdown_delay="1ms",
                    ),
                    _namespace("pollvl", proxy_name="poller"),
                    _namespace("polldef", mode="versioned"),
                    _namespace("pollpub", mode="versioned", publish_enabled=True),
                    {"name": "stream", "allow_subscribe_for_client": True},
                ],
            },
        }
    )
    yield handle
    handle.stop()


def channel(ns: str) -> str:
    return f"{ns}:{uuid.uuid4().hex[:8]}"


def signature(ch: str, keys: list[str], user: str = USER, ttl: int = 3600) -> str:
    now = int(time.time())
    return sign(SECRET, ch, keys, user, now, now + ttl)


async def connected(server: ServerHandle, ws: RawWS) -> None:
    reply = await ws.connect_cmd(server.token(USER))
    assert "connect" in reply, reply


async def subscribe(ws: RawWS, ch: str) -> dict[str, Any]:
    reply = await ws.command({"subscribe": {"channel": ch, "type": 4}})
    assert "subscribe" in reply, reply
    return reply["subscribe"]


async def track(
    ws: RawWS, ch: str, *items: tuple[str, int], sig: str | None = None
) -> dict[str, Any]:
    keys = [k for k, _ in items]
    batch = {
        "signature": sig if sig is not None else signature(ch, keys),
        "items": [{"key": k, "version": v} for k, v in items],
    }
    return await ws.command({"sub_refresh": {"channel": ch, "type": 1, "track": [batch]}})


async def publication(ws: RawWS) -> dict[str, Any]:
    push = await ws.push()
    assert "pub" in push, push
    return {"channel": push["channel"], **push["pub"]}


async def test_track_delivers_backend_items_as_publications(
    server: ServerHandle, backend: Backend
) -> None:
    ch = channel("poll")
    backend.set(ch, "k1", {"v": 1}, 1)
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        assert await subscribe(ws, ch) == {"type": 4}  # versioned: no epoch yet
        reply = await track(ws, ch, ("k1", 0))
        assert reply["sub_refresh"]["expires"] is True
        assert 3590 <= reply["sub_refresh"]["ttl"] <= 3600
        assert await publication(ws) == {"channel": ch, "data": {"v": 1}, "key": "k1", "version": 1}
        # The cold key was asked for at once, by name and without a version.
        assert backend.of(ch)[0] == {"channel": ch, "items": [{"key": "k1"}]}
        backend.set(ch, "k1", {"v": 2}, 2)
        assert await publication(ws) == {"channel": ch, "data": {"v": 2}, "key": "k1", "version": 2}
    assert all(path == "named" for path, body in backend.requests if body["channel"] == ch)


async def test_one_refresh_call_per_channel_for_all_connections(
    server: ServerHandle, backend: Backend
) -> None:
    ch = channel("poll")
    backend.set(ch, "k", "x", 1)
    async with RawWS.connect(server.ws_url) as a, RawWS.connect(server.ws_url) as b:
        for ws in (a, b):
            await connected(server, ws)
            await subscribe(ws, ch)
            await track(ws, ch, ("k", 0))
            assert (await publication(ws))["version"] == 1
        seen = len(backend.of(ch))
        # Three more timer cycles: each asks once for the key, with the version it holds.
        await backend.wait(lambda: len(backend.of(ch)) >= seen + 3)
        for body in backend.of(ch)[seen:]:
            assert body["items"] == [{"key": "k", "version": 1}]
        backend.set(ch, "k", "y", 2)
        assert (await publication(a))["data"] == "y"
        assert (await publication(b))["data"] == "y"


async def test_bad_and_expired_signatures_are_refused(server: ServerHandle) -> None:
    ch = channel("poll")
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        await subscribe(ws, ch)
        reply = await track(ws, ch, ("k", 0), sig="invalid-signature")
        assert reply["error"]["code"] == 103
        other_user = signature(ch, ["k"], user="bob")
        assert (await track(ws, ch, ("k", 0), sig=other_user))["error"]["code"] == 103
        expired = signature(ch, ["k"], ttl=-60)
        assert (await track(ws, ch, ("k", 0), sig=expired))["error"]["code"] == 109


async def test_key_limit_untrack_and_unsubscribe(server: ServerHandle, backend: Backend) -> None:
    ch = channel("poll")
    for key in "abcd":
        backend.set(ch, key, key, 1)
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        await subscribe(ws, ch)
        four = [(k, 0) for k in "abcd"]
        assert (await track(ws, ch, *four))["error"]["code"] == 106  # max_keys_per_connection 3
        await track(ws, ch, ("a", 0), ("b", 0))
        got = {(await publication(ws))["key"] for _ in range(2)}
        assert got == {"a", "b"}
        reply = await ws.command({"sub_refresh": {"channel": ch, "type": 2, "untrack": ["a"]}})
        assert reply["sub_refresh"] == {}
        backend.set(ch, "a", "a2", 2)
        backend.set(ch, "b", "b2", 2)
        assert await publication(ws) == {"channel": ch, "data": "b2", "key": "b", "version": 2}
        await ws.command({"unsubscribe": {"channel": ch}})
        # No subscriber left: the channel stops polling (channel_shutdown_delay 1ms). A
        # second channel's three polls prove cycles ran meanwhile.
        probe = channel("poll")
        await subscribe(ws, probe)
        await track(ws, probe, ("p", 0))
        stopped = len(backend.of(ch))
        await backend.wait(lambda: len(backend.of(probe)) >= 4)
        assert len(backend.of(ch)) <= stopped + 1  # at most a call already in flight
        assert not ws.pushes


async def test_removal_is_a_removed_publication(server: ServerHandle, backend: Backend) -> None:
    ch = channel("poll")
    backend.set(ch, "k", 1, 1)
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        await subscribe(ws, ch)
        await track(ws, ch, ("k", 0))
        assert (await publication(ws))["version"] == 1
        backend.set(ch, "k", None, 2, removed=True)
        assert await publication(ws) == {"channel": ch, "key": "k", "removed": True}


async def test_versionless_versions_come_from_content_changes(
    server: ServerHandle, backend: Backend
) -> None:
    ch = channel("pollvl")
    backend.set(ch, "k", {"n": 1})
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        result = await subscribe(ws, ch)
        assert result["type"] == 4 and len(result["epoch"]) == 8
        await track(ws, ch, ("k", 0))
        first = await publication(ws)
        assert first["data"] == {"n": 1} and first["version"] > 0
        seen = len(backend.of(ch))
        await backend.wait(lambda: len(backend.of(ch)) >= seen + 2)  # unchanged: nothing
        assert not ws.pushes
        assert all(body["items"] == [{"key": "k"}] for body in backend.of(ch))
        backend.set(ch, "k", {"n": 2})
        second = await publication(ws)
        assert second["data"] == {"n": 2} and second["version"] > first["version"]


async def test_default_proxy_is_channel_proxy_shared_poll_refresh(
    server: ServerHandle, backend: Backend
) -> None:
    ch = channel("polldef")
    backend.set(ch, "k", "v", 7)
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        await subscribe(ws, ch)
        await track(ws, ch, ("k", 0))
        assert (await publication(ws))["version"] == 7
    assert {path for path, body in backend.requests if body["channel"] == ch} == {"default"}


async def test_subscription_types_must_match(server: ServerHandle) -> None:
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        stream = channel("stream")
        reply = await ws.command({"subscribe": {"channel": stream, "type": 4}})
        assert reply["error"]["code"] == 108
        reply = await ws.command({"subscribe": {"channel": channel("poll")}})
        assert reply["error"]["code"] == 107
        ch = channel("poll")
        await subscribe(ws, ch)
        reply = await ws.command({"subscribe": {"channel": ch, "type": 4}})
        assert reply["error"]["code"] == 105


async def test_shared_poll_publish_reaches_trackers(server: ServerHandle, backend: Backend) -> None:
    ch = channel("pollpub")
    backend.set(ch, "k", "polled", 1)
    async with RawWS.connect(server.ws_url) as ws:
        await connected(server, ws)
        await subscribe(ws, ch)
        await track(ws, ch, ("k", 0))
        assert (await publication(ws))["data"] == "polled"
        res = await server.api_async(
            "shared_poll_publish", {"channel": ch, "key": "k", "version": 5, "data": {"x": 1}}
        )
        assert res == {"result": {}}
        assert await publication(ws) == {"channel": ch, "data": {"x": 1}, "key": "k", "version": 5}
        # Not newer: skipped.
        await server.api_async(
            "shared_poll_publish", {"channel": ch, "key": "k", "version": 5, "data": 0}
        )
    bad = await server.api_async("shared_poll_publish", {"channel": ch, "key": "k", "data": 1})
    assert bad["error"]["code"] == 107  # version 0
    off = await server.api_async(
        "shared_poll_publish", {"channel": channel("poll"), "key": "k", "version": 1, "data": 1}
    )
    assert off["error"]["code"] == 108  # publish_enabled off
