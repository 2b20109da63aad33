"""Event proxies end to end with centrifuge-js (tests/e2e/js/run.mjs): the same server
configuration and real backend as test_proxy_e2e.py (HTTP and gRPC default proxies), driven
by the official JavaScript SDK, including its `headers` option (emulated headers).

The SDK is engine-agnostic: this module runs in the memory pass only. Scenarios run in a
node subprocess (`run_js_async`, so the backend in this event loop keeps answering) and
await SDK events; the Python side then checks what the backend received.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from .helpers import ServerHandle, free_port, run_js_async
from .test_proxy_e2e import (
    SERVER_ENV,
    VIAS,
    Request,
    RequestLog,
    body_value,
    matching,
    raw,
    received,
    server_config,
    uid,
)

try:
    from integration.proxy_backend import KINDS, ProxyBackend
except ImportError:  # tests/ itself imported as a package
    from tests.integration.proxy_backend import KINDS, ProxyBackend

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("node_js")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[ProxyBackend]:
    b = ProxyBackend()
    b.requests = RequestLog()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(scope="module", params=VIAS)
def via(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def srv(server_factory: Any, backend: ProxyBackend, via: str) -> ServerHandle:
    cfg = server_config(backend, via, free_port())
    cfg["engine"] = {"type": "memory"}  # the factory skips the redis pass
    for section in (cfg["client"]["proxy"]["connect"], cfg["rpc"]["proxy"]):
        section["emulated_headers"] = ["x-emu", "x-both", "x-emu-static"]
        section["http_headers"] = [*section["http_headers"], "x-emu-static"]
        section["http"] = {"static_headers": {"x-static": "s", "x-both": "s", "x-emu-static": "s"}}
        section["grpc"] = {"static_metadata": section["http"]["static_headers"]}
    return server_factory(cfg, env=SERVER_ENV)


@pytest.fixture(autouse=True)
def plain_backend(backend: ProxyBackend) -> None:
    for kind in KINDS:
        backend.reply(kind, {"result": {}})


async def js(srv: ServerHandle, script: str, **env: str) -> dict[str, Any]:
    return await run_js_async(script, srv.js_env(**env), timeout=15)


async def test_js_proxies_take_effect_and_headers(
    srv: ServerHandle, backend: ProxyBackend, via: str
) -> None:
    name, user, n = "js-" + uid(), "jsu-" + uid(), uid()
    server_ch, ch = f"srv:js-{n}", f"px:js-{n}"
    backend.reply(
        "connect",
        {
            "result": {
                "user": user,
                "info": {"from": "proxy"},
                "data": {"welcome": "js"},
                "channels": [server_ch],
                "meta": {"js": True},
            }
        },
    )
    backend.handler(
        "subscribe",
        lambda r: {"result": {"data": {"sub": body_value(r, "data")}, "info": {"c": 1}}},
    )
    backend.handler(
        "publish",
        lambda r: {"result": {"data": {"wrapped": body_value(r, "data")}, "tags": {"k": "v"}}},
    )
    backend.handler(
        "rpc", lambda r: {"result": {"data": {"m": r.body["method"], "in": body_value(r, "data")}}}
    )
    out = await js(
        srv,
        """
        // Transport (handshake) headers come from the ws constructor, emulated ones from the
        // SDK's `headers` option (sent in the connect command).
        class HeaderWS extends WebSocket {
          constructor(url, protocols) {
            super(url, protocols, { headers: { 'X-Forward-Me': 'transport', 'X-Both': 'transport' } });
          }
        }
        const c = newClient({
          websocket: HeaderWS, name: env.NAME, data: { hello: 'js' },
          headers: { 'x-emu': 'emulated', 'x-both': 'emulated', 'x-emu-static': 'emulated',
                     'x-not-listed': 'emulated' },
        });
        const serverSub = waitEvent(c, 'subscribed', 5000, (ctx) => ctx.channel === env.SERVER_CH);
        c.connect();
        const connected = await waitEvent(c, 'connected');
        await serverSub;
        const rpc = await c.rpc('calc', { a: 1 });
        const sub = c.newSubscription(env.CH, { data: { want: 'it' } });
        const pubs = collect(sub, 'publication');
        sub.subscribe();
        const subscribed = await waitEvent(sub, 'subscribed');
        await sub.publish({ text: 'orig' });
        await waitUntil(sub, 'publication', () => pubs.length > 0, 5000, 'publication');
        return { connected, rpc: rpc.data, subscribed: subscribed.data, pub: pubs[0] };
        """,
        NAME=name,
        SERVER_CH=server_ch,
        CH=ch,
    )
    assert out["connected"]["data"] == {"welcome": "js"}
    assert out["rpc"] == {"m": "calc", "in": {"a": 1}}
    assert out["subscribed"] == {"sub": {"want": "it"}}
    pub = out["pub"]
    assert pub["data"] == {"wrapped": {"text": "orig"}}
    assert pub["tags"] == {"k": "v"}
    assert (pub["info"]["user"], pub["info"]["connInfo"], pub["info"]["chanInfo"]) == (
        user,
        {"from": "proxy"},
        {"c": 1},
    )

    [conn] = matching(backend, "connect", name=name)
    client_id = conn.body["client"]
    assert conn.via == via
    assert raw(conn, "data") == {"hello": "js"}
    # transport header > emulated header > static header; only listed names pass.
    rpc = matching(backend, "rpc", client=client_id)[0]
    for req in (conn, rpc):
        assert req.header("x-forward-me") == "transport"
        assert req.header("x-both") == "transport"
        assert req.header("x-emu") == "emulated"
        assert req.header("x-emu-static") == "emulated"
        assert req.header("x-static") == "s"
        assert req.header("x-not-listed") is None
    assert (rpc.body["user"], raw(rpc, "meta")) == (user, {"js": True})
    [sub] = matching(backend, "subscribe", client=client_id)
    assert (sub.body["channel"], raw(sub, "data")) == (ch, {"want": "it"})


async def test_js_custom_errors_disconnects_and_failures(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    n = uid()
    connect_replies = {
        f"err-{n}": {"error": {"code": 1001, "message": "js connect error"}},
        f"bye-{n}": {"disconnect": {"code": 4501, "reason": "js go away"}},
    }
    backend.handler("connect", lambda r: connect_replies.get(r.body.get("name"), {"result": {}}))
    sub_replies = {
        f"px:e-{n}": {"error": {"code": 1003, "message": "no sub"}},
        f"px:d-{n}": {"disconnect": {"code": 4002, "reason": "resubscribe elsewhere"}},
    }
    backend.handler("subscribe", lambda r: sub_replies.pop(r.body["channel"], {"result": {}}))
    backend.reply("publish", {"error": {"code": 1004, "message": "no pub"}})

    backend.reply("rpc", {"error": {"code": 1005, "message": "no rpc", "temporary": True}})
    out = await js(
        srv,
        """
        const result = {};
        for (const key of ['err', 'bye']) {
          const c = newClient({ name: key + '-' + env.N });
          const done = waitEvent(c, 'disconnected');
          c.connect();
          const ctx = await done;
          result[key] = { code: ctx.code, reason: ctx.reason, state: c.state };
        }
        const c = newClient({ token: token('jse-' + env.N) });
        c.connect();
        await waitEvent(c, 'connected');
        const sub = c.newSubscription('px:e-' + env.N);
        const unsub = waitEvent(sub, 'unsubscribed');
        sub.subscribe();
        const u = await unsub;
        result.sub = { code: u.code, reason: u.reason };
        result.pub = await expectError(c.publish('px:p-' + env.N, { x: 1 }));
        result.rpc = await expectError(c.rpc('other', {}));
        result.rpcFail = await expectError(c.rpc('down:fail', {}));  // refused: 100
        const reconnect = waitEvent(c, 'connecting');
        c.newSubscription('px:d-' + env.N).subscribe();
        const r = await reconnect;
        result.subDisconnect = { code: r.code, reason: r.reason };
        await waitEvent(c, 'connected');
        return result;
        """,
        N=n,
    )
    assert out["err"] == {"code": 1001, "reason": "js connect error", "state": "disconnected"}
    assert out["bye"] == {"code": 4501, "reason": "js go away", "state": "disconnected"}
    assert out["sub"] == {"code": 1003, "reason": "no sub"}
    assert out["pub"] == {"code": 1004, "message": "no pub"}
    assert out["rpc"] == {"code": 1005, "message": "no rpc"}
    assert out["rpcFail"] == {"code": 100, "message": "internal server error"}
    assert out["subDisconnect"] == {"code": 4002, "reason": "resubscribe elsewhere"}


async def test_js_server_side_refresh(srv: ServerHandle, backend: ProxyBackend) -> None:
    """Refresh / sub_refresh proxies: the SDK is never asked for tokens (it has no getToken
    and would fail with 'unauthorized'); `expired` answers end with 3005 / 2501."""
    name, ch = "jsr-" + uid(), f"px:jsr-{uid()}"

    def connect(r: Request) -> dict[str, Any]:
        first = len(matching(backend, "connect", name=name)) == 1
        return {"result": {"user": "r", "expire_at": int(time.time()) + 1 if first else 0}}

    def subscribe(r: Request) -> dict[str, Any]:
        first = len(matching(backend, "subscribe", channel=ch)) == 1
        return {"result": {"expire_at": int(time.time()) + 1 if first else 0}}

    backend.handler("connect", connect)
    backend.handler("subscribe", subscribe)
    backend.reply("refresh", {"result": {"expired": True}})
    backend.reply("sub_refresh", {"result": {"expired": True}})
    out = await js(
        srv,
        """
        // Connection refresh on one client, subscription refresh on another: the expiries
        // are independent.
        // Events are collected from the start: the two flows interleave freely.
        const c = newClient({ name: env.NAME });
        const events = collect(c, 'connecting');
        const connected = collect(c, 'connected');
        const s = newClient({ token: token('jsr') });
        const sub = s.newSubscription(env.CH);
        const subEvents = collect(sub, 'subscribing');
        const subscribed = collect(sub, 'subscribed');
        sub.subscribe();
        c.connect();
        s.connect();
        const expired = (list, code) => list.some((e) => e.code === code);
        await waitUntil(sub, ['subscribing', 'subscribed'],
          () => expired(subEvents, 2501) && subscribed.length === 2, 6000, '2501, resubscribed');
        await waitUntil(c, ['connecting', 'connected'],
          () => expired(events, 3005) && connected.length === 2, 6000, '3005, reconnected');
        return {
          connecting: events.map((e) => [e.code, e.reason]),
          subscribing: subEvents.map((e) => [e.code, e.reason]),
          state: c.state, subState: sub.state, subClientState: s.state,
        };
        """,
        NAME=name,
        CH=ch,
    )
    assert [3005, "connection expired"] in out["connecting"]
    assert [2501, "subscription expired"] in out["subscribing"]
    assert (out["state"], out["subState"], out["subClientState"]) == (
        "connected",
        "subscribed",
        "connected",
    )
    conns = matching(backend, "connect", name=name)
    assert len(conns) == 2
    await received(backend, "refresh", 1, client=conns[0].body["client"])
    assert len(matching(backend, "sub_refresh", channel=ch)) >= 1
