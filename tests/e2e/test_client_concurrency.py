"""`client.concurrency` end to end: with N > 1 one connection's commands run concurrently,
at most N at once, replies in the order they finish; with 0 (the default) one at a time.

A real server process (per engine) whose subscribe and RPC proxies point at a tiny aiohttp
backend running in the module's event loop. The backend holds requests on asyncio events
(no sleeps): an RPC is answered only once two RPCs are in flight, a subscribe only once the
test releases its channel. Replies are read from raw WebSocket frames.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from .helpers import RawWS, ServerHandle

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT = 5.0
# The RPC proxy timeout of the default-concurrency server: the first of two RPCs held until
# both are in flight can only end by it there.
RPC_TIMEOUT_MS = 500


def uid() -> str:
    return uuid.uuid4().hex[:10]


class _RpcRound:
    """RPCs of one test: answered together once two are in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.two = asyncio.Event()


class Backend:
    """The proxies' backend. RPCs: answered once two are in flight. Subscribes: answered once
    the test releases the channel; a subscribe request the server abandons is recorded."""

    def __init__(self) -> None:
        self.rpc = _RpcRound()
        self.rpc_calls: list[Any] = []
        self.subscribes: list[str] = []
        self.sub_seen: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.sub_release: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.sub_aborted: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._runners: list[web.AppRunner] = []
        self.rpc_url = ""
        self.subscribe_url = ""

    def reset_rpc(self) -> None:
        self.rpc.two.set()  # no handler of an earlier test stays waiting
        self.rpc = _RpcRound()
        self.rpc_calls.clear()

    async def _rpc(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rpc_calls.append(body.get("data"))
        rnd = self.rpc
        rnd.in_flight += 1
        if rnd.in_flight >= 2:
            rnd.two.set()
        # Not cancelled when the server gives up on the call (no handler cancellation here):
        # a call abandoned by a proxy timeout still counts as in flight.
        await rnd.two.wait()
        rnd.in_flight -= 1
        return web.json_response({"result": {"data": {"echo": body.get("data")}}})

    async def _subscribe(self, request: web.Request) -> web.Response:
        channel = (await request.json())["channel"]
        self.subscribes.append(channel)
        self.sub_seen[channel].set()
        try:
            await self.sub_release[channel].wait()
        except asyncio.CancelledError:  # the server dropped the request
            self.sub_aborted[channel].set()
            raise
        return web.json_response({"result": {}})

    async def _serve(self, path: str, handler: Any, cancel_on_disconnect: bool) -> str:
        app = web.Application()
        app.router.add_post(path, handler)
        runner = web.AppRunner(app, handler_cancellation=cancel_on_disconnect)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}{path}"

    async def start(self) -> None:
        self.rpc_url = await self._serve("/rpc", self._rpc, cancel_on_disconnect=False)
        self.subscribe_url = await self._serve("/subscribe", self._subscribe, True)

    async def stop(self) -> None:
        for ev in self.sub_release.values():
            ev.set()
        self.rpc.two.set()
        for runner in self._runners:
            await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


def config(backend: Backend, concurrency: int, rpc_timeout_ms: int = 5000) -> dict[str, Any]:
    return {
        "client": {"concurrency": concurrency, "channel_limit": 2},
        "channel": {
            "proxy": {"subscribe": {"endpoint": backend.subscribe_url, "timeout": "30s"}},
            "namespaces": [
                {"name": "px", "subscribe_proxy_enabled": True, "presence": True},
                {
                    "name": "jl",
                    "allow_subscribe_for_client": True,
                    "presence": True,
                    "join_leave": True,
                    "force_push_join_leave": True,
                },
            ],
        },
        "rpc": {
            "proxy": {"endpoint": backend.rpc_url, "timeout": f"{rpc_timeout_ms}ms"},
            "without_namespace": {"proxy_enabled": True},
        },
    }


@pytest.fixture(scope="module")
def conc(server_factory: Any, backend: Backend) -> ServerHandle:
    return server_factory(config(backend, 4))


@pytest.fixture(scope="module")
def serial(server_factory: Any, backend: Backend) -> ServerHandle:
    return server_factory(config(backend, 0, RPC_TIMEOUT_MS))


async def connected(srv: ServerHandle, user: str) -> RawWS:
    ctx = RawWS.connect(srv.ws_url)
    ws = await ctx.__aenter__()
    reply = await ws.connect_cmd(srv.token(user))
    assert "connect" in reply, reply
    ws.client_id = reply["connect"]["client"]  # type: ignore[attr-defined]
    return ws


async def join_leave(ws: RawWS, kind: str, client_id: str) -> None:
    """Wait for the `kind` (join/leave) push of `client_id`; other pushes are skipped."""
    while True:
        push = await ws.push(WAIT)
        if push.get(kind, {}).get("info", {}).get("client") == client_id:
            return


async def replies(ws: RawWS, ids: set[int]) -> list[dict[str, Any]]:
    """Replies with these ids, in the order they arrive (pushes are recorded)."""
    out: list[dict[str, Any]] = []
    while len(out) < len(ids):
        obj = await ws.recv(WAIT)
        if obj.get("id") in ids:
            out.append(obj)
        else:
            ws._record(obj)
    return out


def rpc(cmd_id: int, n: int) -> dict[str, Any]:
    return {"id": cmd_id, "rpc": {"method": "m", "data": {"n": n}}}


def sub(cmd_id: int, channel: str) -> dict[str, Any]:
    return {"id": cmd_id, "subscribe": {"channel": channel}}


async def channels(srv: ServerHandle) -> dict[str, Any]:
    return (await srv.api_async("channels", {}))["result"]["channels"]


async def presence(srv: ServerHandle, channel: str) -> dict[str, Any]:
    return (await srv.api_async("presence", {"channel": channel}))["result"]["presence"]


# --------------------------------------------------------------------------------------------
# RPCs


async def test_two_rpcs_in_one_frame_run_together(conc: ServerHandle, backend: Backend) -> None:
    backend.reset_rpc()
    ws = await connected(conc, uid())
    try:
        await ws.send(rpc(10, 1), rpc(11, 2))
        got = await replies(ws, {10, 11})
    finally:
        await ws.close()
    assert {r["id"]: r.get("rpc") for r in got} == {
        10: {"data": {"echo": {"n": 1}}},
        11: {"data": {"echo": {"n": 2}}},
    }
    assert sorted(c["n"] for c in backend.rpc_calls) == [1, 2]


async def test_default_runs_commands_one_at_a_time(serial: ServerHandle, backend: Backend) -> None:
    """Concurrency 0: the second RPC reaches the proxy only once the first has its reply, so
    the first (answered by the backend only with two in flight) ends by the proxy timeout,
    and the second then finds the first's abandoned call in flight and succeeds."""
    backend.reset_rpc()
    ws = await connected(serial, uid())
    try:
        await ws.send(rpc(10, 1), rpc(11, 2))
        got = await replies(ws, {10, 11})
    finally:
        await ws.close()
    assert [r["id"] for r in got] == [10, 11]
    assert got[0].get("error", {}).get("code") == 100, got[0]
    assert got[1].get("rpc") == {"data": {"echo": {"n": 2}}}, got[1]
    assert [c["n"] for c in backend.rpc_calls] == [1, 2]


# --------------------------------------------------------------------------------------------
# subscribe reservations


async def test_concurrent_subscribes_to_one_channel(conc: ServerHandle, backend: Backend) -> None:
    """Both in one frame: the second is answered 105 while the first is still at the proxy."""
    ch = f"px:{uid()}"
    ws = await connected(conc, uid())
    try:
        await ws.send(sub(10, ch), sub(11, ch))
        second = await ws.reply(11, WAIT)
        assert second.get("error", {}).get("code") == 105, second
        await asyncio.wait_for(backend.sub_seen[ch].wait(), WAIT)
        backend.sub_release[ch].set()
        first = await ws.reply(10, WAIT)
        assert "subscribe" in first, first
        assert backend.subscribes.count(ch) == 1
        assert (await channels(conc)).get(ch) == {"num_clients": 1}
    finally:
        await ws.close()


async def test_channel_limit_counts_subscribes_in_flight(
    conc: ServerHandle, backend: Backend
) -> None:
    """channel_limit 2: two subscribes held at the proxy, a third is 106 meanwhile."""
    a, b, c = (f"px:{uid()}" for _ in range(3))
    ws = await connected(conc, uid())
    try:
        await ws.send(sub(10, a), sub(11, b), sub(12, c))
        third = await ws.reply(12, WAIT)
        assert third.get("error", {}).get("code") == 106, third
        backend.sub_release[a].set()
        backend.sub_release[b].set()
        got = await replies(ws, {10, 11})
        assert all("subscribe" in r for r in got), got
        assert c not in backend.subscribes
    finally:
        await ws.close()


async def test_unsubscribe_waits_for_subscribe_in_flight(
    conc: ServerHandle, backend: Backend
) -> None:
    """As centrifuge: an unsubscribe of a channel being subscribed waits for that subscribe,
    then undoes it (it is not answered first, leaving the subscription behind)."""
    ch = f"px:{uid()}"
    ws = await connected(conc, uid())
    try:
        await ws.send(sub(10, ch), {"id": 11, "unsubscribe": {"channel": ch}})
        await asyncio.wait_for(backend.sub_seen[ch].wait(), WAIT)
        backend.sub_release[ch].set()
        got = await replies(ws, {10, 11})
        assert [r["id"] for r in got] == [10, 11], got
        assert "subscribe" in got[0] and got[1] == {"id": 11, "unsubscribe": {}}
        assert ch not in await channels(conc)
        assert await presence(conc, ch) == {}
    finally:
        await ws.close()


# --------------------------------------------------------------------------------------------
# closing with commands in flight


async def test_close_with_commands_in_flight_leaves_nothing(
    conc: ServerHandle, backend: Backend
) -> None:
    """The peer goes while a subscribe waits at the proxy: the server drops that request at
    once, and neither the channel nor presence in it remains."""
    held = f"px:{uid()}"
    joined = f"jl:{uid()}"
    watcher = await connected(conc, uid())
    ws = await connected(conc, uid())
    try:
        assert "subscribe" in await watcher.command({"subscribe": {"channel": joined}})
        assert "subscribe" in await ws.command({"subscribe": {"channel": joined}})
        await join_leave(watcher, "join", ws.client_id)  # type: ignore[attr-defined]
        await ws.send(sub(20, held))
        await asyncio.wait_for(backend.sub_seen[held].wait(), WAIT)
        await ws.close()
        await join_leave(watcher, "leave", ws.client_id)  # type: ignore[attr-defined]
        await asyncio.wait_for(backend.sub_aborted[held].wait(), WAIT)
        listed = await channels(conc)
        assert held not in listed
        assert listed.get(joined) == {"num_clients": 1}
        assert await presence(conc, held) == {}
        assert len(await presence(conc, joined)) == 1
    finally:
        await watcher.close()


async def test_disconnect_raised_in_a_task_closes(conc: ServerHandle) -> None:
    """A publish without a channel is 3501 whether or not it runs in a task."""
    ws = await connected(conc, uid())
    try:
        await ws.send({"id": 5, "publish": {"data": {"x": 1}}})
        code, _ = await ws.wait_closed(WAIT)
    finally:
        await ws.close()
    assert code == 3501


async def test_config_is_not_reported_unsupported(conc: ServerHandle) -> None:
    assert "client.concurrency" not in conc.log_text(), conc.log_tail()
