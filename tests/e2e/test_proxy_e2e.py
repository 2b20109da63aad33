"""Event proxies end to end (research §6, §3.5): a real server process whose connect, refresh,
subscribe, publish, rpc and sub_refresh proxies point at a real backend application
(tests/integration/proxy_backend.py: aiohttp + grpcio on free ports), driven by
centrifuge-python.

Every test runs once per backend protocol (`via`: the server's default proxies are HTTP or
gRPC) and per engine. The backend runs in the module's event loop, so tests only await: SDK
events land in per-event queues, backend requests in a log whose waiters wake on arrival.
Channels, users and SDK client names are unique per test, so tests sharing the module's
servers and backend never read each other's requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from centrifuge import (
    Client,
    ClientState,
    ReplyError,
    SubscriptionState,
)

from tests.support.sdk import ClientEvents, SubEvents

from .helpers import RawWS, ServerHandle, free_port

try:
    from integration.proxy_backend import KINDS, ProxyBackend, Request
except ImportError:  # tests/ itself imported as a package
    from tests.integration.proxy_backend import KINDS, ProxyBackend, Request

pytestmark = pytest.mark.asyncio(loop_scope="module")

VIAS = ("http", "grpc")
EVENT_TIMEOUT = 5.0
# Seconds before a failed refresh / sub_refresh proxy call is retried (60 in production).
RETRY_DELAY = 0.3
SERVER_ENV = {"CFPY_PROXY_REFRESH_RETRY_DELAY": str(RETRY_DELAY)}
# Timeout of the "slow_*" named proxies, which the timeout tests make hang.
SLOW_TIMEOUT = 0.3
STATIC = {"x-static": "static", "x-both": "static"}


def other(via: str) -> str:
    return "grpc" if via == "http" else "http"


def uid() -> str:
    return uuid.uuid4().hex[:10]


# --------------------------------------------------------------------------------------------
# backend request log


class RequestLog(list):
    """`ProxyBackend.requests`, with waiters woken as requests arrive (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def append(self, item: Request) -> None:  # type: ignore[override]
        super().append(item)
        for pred, fut in self._waiters:
            if not fut.done() and pred():
                fut.set_result(None)

    async def wait(self, pred: Callable[[], bool], what: str, timeout: float) -> None:
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(f"backend did not receive {what} within {timeout}s") from None
        finally:
            self._waiters.remove(entry)


def matching(backend: ProxyBackend, kind: str, **fields: Any) -> list[Request]:
    """Requests of `kind` whose body has all `fields` (values as the JSON shape)."""
    return [
        r for r in backend.of_kind(kind) if all(body_value(r, k) == v for k, v in fields.items())
    ]


def body_value(r: Request, key: str) -> Any:
    """A request field in JSON shape whatever the transport (gRPC raw fields are bytes)."""
    v = r.body.get(key)
    if r.via == "grpc" and key in ("data", "meta") and isinstance(v, bytes):
        return orjson.loads(v)
    return v


async def received(
    backend: ProxyBackend, kind: str, n: int = 1, timeout: float = EVENT_TIMEOUT, **fields: Any
) -> list[Request]:
    """Wait until the backend got `n` requests of `kind` matching `fields`; returns them."""
    log: RequestLog = backend.requests  # type: ignore[assignment]
    await log.wait(
        lambda: len(matching(backend, kind, **fields)) >= n, f"{n} {kind} {fields}", timeout
    )
    return matching(backend, kind, **fields)


# --------------------------------------------------------------------------------------------
# server configuration


def server_config(backend: ProxyBackend, via: str, down_port: int) -> dict[str, Any]:
    """Default proxies over `via`; named ones over the other protocol, slow, refused,
    binary and with status transforms, each reached through its own namespace."""

    def proxy(kind: str, over: str = via, **opts: Any) -> dict[str, Any]:
        return {
            "endpoint": backend.endpoint(over, kind),
            "timeout": "1s",
            "http_headers": ["x-forward-me", "x-both"],
            "http": {"static_headers": STATIC},
            "grpc": {"static_metadata": STATIC},
            **opts,
        }

    def named(name: str, kind: str, over: str = via, **opts: Any) -> dict[str, Any]:
        http = opts.pop("http", {})
        marks = {**STATIC, "x-proxy": name}
        return {
            **proxy(kind, over, **opts),
            "name": name,
            "http": {**http, "static_headers": marks},
            "grpc": {"static_metadata": marks},
        }

    meta = {"include_connection_meta": True}
    down = "http://127.0.0.1:%d/down" if via == "http" else "grpc://127.0.0.1:%d"
    channel_ns = [
        # Every channel proxy with the default (section) proxies.
        {
            "name": "px",
            "subscribe_proxy_enabled": True,
            "publish_proxy_enabled": True,
            "sub_refresh_proxy_enabled": True,
            "presence": True,
            "history_size": 10,
            "history_ttl": "300s",
        },
        # Server-side subscriptions granted by the connect proxy.
        {"name": "srv", "presence": True, "join_leave": True},
    ]
    for ns in ("alt", "slow", "down"):
        channel_ns.append(
            {
                "name": ns,
                "subscribe_proxy_enabled": True,
                "subscribe_proxy_name": f"{ns}_sub" if ns != "down" else "down",
                "publish_proxy_enabled": True,
                "publish_proxy_name": f"{ns}_pub" if ns != "down" else "down",
            }
        )
    channel_ns.append(
        {
            "name": "bin",
            "allow_subscribe_for_client": True,
            "publish_proxy_enabled": True,
            "publish_proxy_name": "bin_pub",
        }
    )
    transforms = [
        {"status_code": 418, "to_error": {"code": 1418, "message": "teapot", "temporary": False}},
        {"status_code": 409, "to_disconnect": {"code": 4409, "reason": "conflict"}},
    ]
    return {
        "client": {
            "proxy": {
                "connect": {"enabled": True, **proxy("connect")},
                "refresh": {"enabled": True, **proxy("refresh", **meta)},
            },
        },
        "channel": {
            "proxy": {
                "subscribe": proxy("subscribe"),
                "publish": proxy("publish", **meta),
                "sub_refresh": proxy("sub_refresh", **meta),
            },
            "namespaces": channel_ns,
        },
        "rpc": {
            "proxy": proxy("rpc", **meta),
            "without_namespace": {"proxy_enabled": True},
            "namespaces": [
                {"name": "alt", "proxy_enabled": True, "proxy_name": "alt_rpc"},
                {"name": "slow", "proxy_enabled": True, "proxy_name": "slow_rpc"},
                {"name": "down", "proxy_enabled": True, "proxy_name": "down"},
                {"name": "bin", "proxy_enabled": True, "proxy_name": "bin_rpc"},
                {"name": "tr", "proxy_enabled": True, "proxy_name": "tr_rpc"},
                {"name": "off", "proxy_enabled": False},
            ],
            "ping": {"enabled": True},
        },
        "proxies": [
            named("alt_sub", "subscribe", other(via)),
            named("alt_pub", "publish", other(via)),
            named("alt_rpc", "rpc", other(via), **meta),
            named("slow_sub", "subscribe", timeout=f"{int(SLOW_TIMEOUT * 1000)}ms"),
            named("slow_pub", "publish", timeout=f"{int(SLOW_TIMEOUT * 1000)}ms"),
            named("slow_rpc", "rpc", timeout=f"{int(SLOW_TIMEOUT * 1000)}ms"),
            {**named("down", "rpc"), "endpoint": down % down_port},
            named("bin_pub", "publish", binary_encoding=True),
            named("bin_rpc", "rpc", binary_encoding=True),
            named("tr_rpc", "rpc", "http", http={"status_to_code_transforms": transforms}),
        ],
        "prometheus": {"enabled": True},
    }


# --------------------------------------------------------------------------------------------
# fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[ProxyBackend]:
    b = ProxyBackend()
    b.requests = RequestLog()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(scope="module")
def down_port() -> int:
    """A port nothing listens on: calls to it are refused."""
    return free_port()


@pytest.fixture(scope="module", params=VIAS)
def via(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def srv(
    server_factory: Any, backend: ProxyBackend, via: str, down_port: int, engine: str
) -> ServerHandle:
    if engine != "memory" and via != "http":
        # The proxy protocol is independent of the engine: the redis pass runs over HTTP.
        pytest.skip("gRPC proxies: memory pass only")
    return server_factory(server_config(backend, via, down_port), env=SERVER_ENV)


@pytest.fixture(autouse=True)
def plain_backend(backend: ProxyBackend) -> None:
    """Each test starts from a backend answering every kind with an empty result."""
    for kind in KINDS:
        backend.reply(kind, {"result": {}})


SdkFactory = Callable[..., tuple[Client, ClientEvents]]


@pytest_asyncio.fixture(loop_scope="module")
async def sdk(srv: ServerHandle) -> AsyncIterator[SdkFactory]:
    """`make(token="", **client_kwargs) -> (Client, ClientEvents)`; all disconnected after."""
    created: list[Client] = []

    def make(token: str = "", **kw: Any) -> tuple[Client, ClientEvents]:
        events = ClientEvents()
        kw.setdefault("min_reconnect_delay", 0.05)
        kw.setdefault("max_reconnect_delay", 0.3)
        client = Client(srv.ws_url, events=events, token=token, proxy=None, **kw)
        created.append(client)
        return client, events

    yield make
    for client in created:
        await client.disconnect()


async def connected(client: Client, events: ClientEvents) -> Any:
    await client.connect()
    return await events.next("connected")


async def subscribed(client: Client, channel: str, **kw: Any) -> tuple[Any, SubEvents, Any]:
    """(Subscription, its events, the SubscribedContext)."""
    events = SubEvents()
    sub = client.new_subscription(channel, events=events, **kw)
    await sub.subscribe()
    return sub, events, await events.next("subscribed")


async def token_client(srv: ServerHandle, sdk: SdkFactory, user: str, **claims: Any) -> Any:
    client, ev = sdk(srv.token(user, **claims))
    ctx = await connected(client, ev)
    return client, ev, ctx


async def api(srv: ServerHandle, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reply = await srv.api_async(method, params)
    assert "error" not in reply, reply
    return reply["result"]


def raw(r: Request, key: str) -> Any:
    """A raw JSON request field, decoded."""
    b = r.raw_field(key)
    return None if b is None else orjson.loads(b)


# --------------------------------------------------------------------------------------------
# connect proxy


async def test_connect_result_takes_effect(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, via: str
) -> None:
    name, user = "cn-" + uid(), "u-" + uid()
    ch_plain, ch_opts = f"srv:a-{uid()}", f"srv:b-{uid()}"
    backend.reply(
        "connect",
        {
            "result": {
                "user": user,
                "info": {"name": "Alice"},
                "data": {"welcome": user},
                "channels": [ch_plain],
                "subs": {ch_opts: {"info": {"chan": "b"}, "data": {"sd": 1}}},
                "meta": {"tenant": "t1"},
            }
        },
    )
    client, ev = sdk(
        name=name,
        data={"hello": "x"},
        headers={"X-Forward-Me": "fwd", "X-Both": "transport", "X-Secret": "hidden"},
    )
    ctx = await connected(client, ev)
    assert ctx.data == {"welcome": user}

    # channels and subs became server-side subscriptions, subs with their data and info.
    server_subs = {}
    for _ in range(2):
        s = await ev.next("subscribed")
        server_subs[s.channel] = s
    assert set(server_subs) == {ch_plain, ch_opts}
    assert server_subs[ch_opts].data == {"sd": 1}
    assert server_subs[ch_plain].data is None
    entry = (await api(srv, "presence", {"channel": ch_plain}))["presence"][ctx.client]
    assert (entry["user"], entry["conn_info"]) == (user, {"name": "Alice"})
    assert "chan_info" not in entry
    entry = (await api(srv, "presence", {"channel": ch_opts}))["presence"][ctx.client]
    assert (entry["user"], entry["chan_info"]) == (user, {"chan": "b"})

    # The request: connection fields, the SDK's connect data, the forwarded headers.
    [req] = matching(backend, "connect", name=name)
    assert req.via == via
    assert req.body["client"] == ctx.client
    assert (req.body["transport"], req.body["protocol"], req.body["encoding"]) == (
        "websocket",
        "json",
        "json",
    )
    assert raw(req, "data") == {"hello": "x"}
    assert "user" not in req.body and "meta" not in req.body
    assert req.header("x-forward-me") == "fwd"
    assert req.header("x-both") == "transport"  # transport header over static header
    assert req.header("x-static") == "static"
    assert req.header("x-secret") is None  # not in http_headers

    # Later proxies see the user, and meta where include_connection_meta is on.
    await client.rpc("echo", {"q": 1})
    [rpc] = await received(backend, "rpc", client=ctx.client)
    assert rpc.body["user"] == user
    assert raw(rpc, "meta") == {"tenant": "t1"}
    assert rpc.header("x-forward-me") == "fwd"
    sub, sev, _ = await subscribed(client, f"px:m-{uid()}")
    [sreq] = matching(backend, "subscribe", client=ctx.client)
    assert sreq.body["user"] == user
    assert "meta" not in sreq.body  # subscribe proxy without include_connection_meta
    await sub.publish({"n": 1})
    [preq] = await received(backend, "publish", client=ctx.client)
    assert raw(preq, "meta") == {"tenant": "t1"}


async def test_connect_no_result_and_past_expiry(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    """A reply without `result` gives no credentials: without anonymous access that is 3501.
    An `expire_at` in the past is error 110."""
    names = {"none": "n-" + uid(), "past": "p-" + uid()}
    replies = {
        names["none"]: {},
        names["past"]: {"result": {"user": "x", "expire_at": int(time.time()) - 10}},
    }
    backend.handler("connect", lambda r: replies[r.body["name"]])
    out = {}
    for key, name in names.items():
        client, ev = sdk(name=name)
        await client.connect()
        out[key] = await ev.next("disconnected")
        assert client.state == ClientState.DISCONNECTED
    assert out["none"].code == 3501
    assert out["past"].code == 110


async def test_connect_custom_errors_and_disconnects(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    cases = {
        "err": {"error": {"code": 1001, "message": "custom connect error"}},
        "tmp": {"error": {"code": 1002, "message": "try later", "temporary": True}},
        "term": {"disconnect": {"code": 4501, "reason": "go away"}},
        "again": {"disconnect": {"code": 4001, "reason": "come back"}},
    }
    names = {k: f"{k}-{uid()}" for k in cases}
    replies = {names[k]: v for k, v in cases.items()}
    backend.handler("connect", lambda r: replies[r.body["name"]])
    clients = {k: sdk(name=names[k]) for k in cases}
    await asyncio.gather(*(c.connect() for c, _ in clients.values()))

    # 400-1999 reach the SDK with code and message; non-temporary ones are terminal.
    d = await clients["err"][1].next("disconnected")
    assert (d.code, d.reason) == (1001, "custom connect error")
    e = await clients["tmp"][1].next("error")
    assert isinstance(e.error, ReplyError)
    assert (e.error.code, e.error.message, e.error.temporary) == (1002, "try later", True)
    # Temporary: the SDK tries again, and the backend is asked again.
    await received(backend, "connect", 2, name=names["tmp"])
    # 4500-4999 terminal, 4000-4499 reconnect.
    d = await clients["term"][1].next("disconnected")
    assert (d.code, d.reason) == (4501, "go away")
    # (A reconnect advice while connecting shows as another attempt, not as an event.)
    await received(backend, "connect", 2, name=names["again"])
    assert clients["again"][0].state == ClientState.CONNECTING
    assert "disconnected" not in clients["again"][1].names()
    assert clients["err"][0].state == ClientState.DISCONNECTED
    assert clients["term"][0].state == ClientState.DISCONNECTED


async def test_connect_request_channels_are_the_backends_decision(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    """The channels a client names in connect `subs` go to the connect proxy; only the
    ones it grants become subscriptions."""
    granted, asked = f"srv:g-{uid()}", f"srv:x-{uid()}"
    backend.reply("connect", {"result": {"user": "ch", "channels": [granted]}})
    async with RawWS.connect(srv.ws_url) as ws:
        res = await ws.connect_cmd(subs={asked: {}, granted: {}}, name="raw-" + uid())
        assert set(res["connect"]["subs"]) == {granted}
        [req] = matching(backend, "connect", client=res["connect"]["client"])
        assert sorted(req.body["channels"]) == sorted([asked, granted])


async def test_protobuf_client_payloads(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    """A Protobuf connection: `protocol` says so; JSON payloads pass as JSON, other bytes
    only through a binary_encoding proxy (else error 100)."""

    def reply(r: Request) -> dict[str, Any]:
        if r.body["encoding"] == "binary":
            return {"result": {"b64data": base64.b64encode(b"\x00raw-reply").decode()}}
        return {"result": {"data": {"echo": body_value(r, "data")}}}

    backend.handler("rpc", reply)
    c, ev = sdk(srv.token("pb-" + uid()), use_protobuf=True)
    ctx = await connected(c, ev)
    res = await c.rpc("json", b'{"a":1}')
    assert orjson.loads(res.data) == {"echo": {"a": 1}}
    res = await c.rpc("bin:raw", b"\xff\x00binary")
    assert res.data == b"\x00raw-reply"
    with pytest.raises(ReplyError) as exc:
        await c.rpc("json", b"\xff not json")
    assert exc.value.code == 100
    reqs = matching(backend, "rpc", client=ctx.client)
    assert [r.body["method"] for r in reqs] == ["json", "bin:raw"]
    assert {r.body["protocol"] for r in reqs} == {"protobuf"}
    assert base64.b64decode(reqs[1].body["b64data"]) == b"\xff\x00binary"
    assert c.state == ClientState.CONNECTED


async def test_connect_proxy_not_used_with_token(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    backend.reply("connect", {"disconnect": {"code": 4500, "reason": "never asked"}})
    user = "tok-" + uid()
    _, _, ctx = await token_client(srv, sdk, user)
    assert not matching(backend, "connect", client=ctx.client)


# --------------------------------------------------------------------------------------------
# subscribe proxy


async def test_subscribe_result_takes_effect(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, via: str
) -> None:
    ch = f"px:s-{uid()}"

    def reply(r: Request) -> dict[str, Any]:
        return {
            "result": {
                "info": {"ci": r.body["user"]},
                "data": {"sd": r.body["user"]},
                # Namespace px: presence on, join_leave off, recovery off.
                "override": {
                    "presence": {"value": False},
                    "join_leave": {"value": True},
                    "force_push_join_leave": {"value": True},
                    "force_recovery": {"value": True},
                },
            }
        }

    backend.handler("subscribe", reply)
    alice = "alice-" + uid()
    a, _, actx = await token_client(srv, sdk, alice, meta={"tm": 1})
    _, aev, sctx = await subscribed(a, ch, data={"want": "all"})
    assert sctx.data == {"sd": alice}
    assert sctx.recoverable is True and sctx.positioned is True  # force_recovery override
    [req] = matching(backend, "subscribe", client=actx.client)
    assert req.body["channel"] == ch
    assert raw(req, "data") == {"want": "all"}
    assert "token" not in req.body
    assert "meta" not in req.body  # token meta exists, but this proxy does not include it

    bob = "bob-" + uid()
    b, _, bctx = await token_client(srv, sdk, bob)
    await subscribed(b, ch)
    # join_leave + force_push_join_leave overrides: alice sees bob join with his channel info.
    join = await aev.next("join", lambda j: j.info.user == bob)  # after her own join
    assert (join.info.user, join.info.client, join.info.chan_info) == (
        bob,
        bctx.client,
        {"ci": bob},
    )
    # presence override off: nobody is in the channel's presence.
    assert (await api(srv, "presence", {"channel": ch}))["presence"] == {}


async def test_subscribe_custom_error_and_disconnect(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    err_ch, disc_ch, again_ch = (f"px:{k}-{uid()}" for k in ("e", "d", "a"))
    replies = {
        err_ch: {"error": {"code": 1003, "message": "not your channel"}},
        disc_ch: {"disconnect": {"code": 4503, "reason": "banned"}},
        again_ch: {"disconnect": {"code": 4003, "reason": "reconnect please"}},
    }

    def reply(r: Request) -> dict[str, Any]:
        # Once per channel: the resubscription after reconnecting succeeds.
        return replies.pop(r.body["channel"], {"result": {}})

    backend.handler("subscribe", reply)
    c1, _, _ = await token_client(srv, sdk, "se-" + uid())
    sev = SubEvents()
    sub = c1.new_subscription(err_ch, events=sev)
    await sub.subscribe()
    u = await sev.next("unsubscribed")
    assert (u.code, u.reason) == (1003, "not your channel")
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert c1.state == ClientState.CONNECTED

    c2, ev2, _ = await token_client(srv, sdk, "sd-" + uid())
    await c2.new_subscription(disc_ch).subscribe()
    d = await ev2.next("disconnected")
    assert (d.code, d.reason) == (4503, "banned")
    assert c2.state == ClientState.DISCONNECTED

    c3, ev3, _ = await token_client(srv, sdk, "sa-" + uid())
    sev3 = SubEvents()
    await c3.new_subscription(again_ch, events=sev3).subscribe()
    c = await ev3.next("connecting", lambda x: x.code == 4003)
    assert c.reason == "reconnect please"
    await ev3.next("connected")
    await sev3.next("subscribed")


async def test_subscribe_token_bypasses_proxy(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    ch = f"px:t-{uid()}"
    backend.reply("subscribe", {"error": {"code": 1999, "message": "proxy asked"}})
    user = "tk-" + uid()
    c, _, ctx = await token_client(srv, sdk, user)
    _, _, sctx = await subscribed(c, ch, token=srv.sub_token(user, ch, data={"from": "token"}))
    assert sctx.data == {"from": "token"}
    assert not matching(backend, "subscribe", client=ctx.client)


# --------------------------------------------------------------------------------------------
# publish proxy


async def test_publish_result_takes_effect(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    ch = f"px:p-{uid()}"

    def reply(r: Request) -> dict[str, Any]:
        if body_value(r, "data") == {"text": "rewrite me"}:
            return {
                "result": {"data": {"text": "rewritten"}, "skip_history": True, "tags": {"t": "v"}}
            }
        return {"result": {}}

    backend.handler("publish", reply)
    user = "pub-" + uid()
    pc, _, pctx = await token_client(srv, sdk, user, meta={"role": "writer"})
    sc, _, _ = await token_client(srv, sdk, "sub-" + uid())
    _, sev, _ = await subscribed(sc, ch)

    await pc.publish(ch, {"text": "rewrite me"})
    pub = (await sev.next("publication")).pub
    assert pub.data == {"text": "rewritten"}
    assert pub.tags == {"t": "v"}
    assert pub.info.user == user
    [req] = matching(backend, "publish", client=pctx.client)
    assert (req.body["channel"], req.body["user"]) == (ch, user)
    assert raw(req, "data") == {"text": "rewrite me"}  # the backend saw the original
    assert raw(req, "meta") == {"role": "writer"}  # meta from the connection token
    # skip_history: nothing in the channel's history.
    assert (await api(srv, "history", {"channel": ch, "limit": 10})).get("publications", []) == []

    # An empty result publishes the client's data, into history.
    await pc.publish(ch, {"text": "keep"})
    pub = (await sev.next("publication")).pub
    assert (pub.data, pub.tags) == ({"text": "keep"}, {})
    hist = await api(srv, "history", {"channel": ch, "limit": 10})
    assert [p["data"] for p in hist["publications"]] == [{"text": "keep"}]


async def test_publish_result_version_drops_stale_publications(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    """The publish proxy's `version` and `version_epoch` reach the broker as Centrifugo's
    publish handler passes them (WithVersion): a version not newer is dropped, and the
    client's publish still succeeds."""
    ch = f"px:v-{uid()}"
    backend.handler(
        "publish",
        lambda r: {"result": {"version": body_value(r, "data")["v"], "version_epoch": "e"}},
    )
    pc, _, _ = await token_client(srv, sdk, "pub-" + uid(), meta={"role": "writer"})
    sc, _, _ = await token_client(srv, sdk, "sub-" + uid())
    _, sev, _ = await subscribed(sc, ch)
    for v in (1, 2, 2, 1, 3):
        await pc.publish(ch, {"v": v})
    got = [(await sev.next("publication")).pub.data["v"] for _ in range(3)]
    assert got == [1, 2, 3]
    hist = await api(srv, "history", {"channel": ch, "limit": 10})
    assert [(p["offset"], p["data"]) for p in hist["publications"]] == [
        (1, {"v": 1}),
        (2, {"v": 2}),
        (3, {"v": 3}),
    ]


async def test_publish_custom_error_and_disconnect(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    ch = f"px:pe-{uid()}"
    replies = {
        "err": {"error": {"code": 1004, "message": "too loud"}},
        "stop": {"disconnect": {"code": 4504, "reason": "spam"}},
        "again": {"disconnect": {"code": 4004, "reason": "slow down"}},
    }
    backend.handler("publish", lambda r: replies[body_value(r, "data")["k"]])
    c1, _, _ = await token_client(srv, sdk, "pe-" + uid())
    with pytest.raises(ReplyError) as exc:
        await c1.publish(ch, {"k": "err"})
    assert (exc.value.code, exc.value.message, exc.value.temporary) == (1004, "too loud", False)
    assert c1.state == ClientState.CONNECTED

    c2, ev2, _ = await token_client(srv, sdk, "ps-" + uid())
    c3, ev3, _ = await token_client(srv, sdk, "pa-" + uid())
    for c, k in ((c2, "stop"), (c3, "again")):
        # The connection closes before any reply comes back.
        task = asyncio.ensure_future(c.publish(ch, {"k": k}, timeout=3))
        if k == "stop":
            d = await ev2.next("disconnected")
            assert (d.code, d.reason) == (4504, "spam")
        else:
            r = await ev3.next("connecting", lambda x: x.code == 4004)
            assert r.reason == "slow down"
        with pytest.raises(Exception):  # noqa: B017 - the SDK fails the pending call
            await task


# --------------------------------------------------------------------------------------------
# rpc proxy


async def test_rpc_results_and_namespaces(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, via: str
) -> None:
    def reply(r: Request) -> dict[str, Any]:
        if r.body.get("encoding") == "binary":
            data = base64.b64decode(r.body["b64data"])
            return {"result": {"b64data": base64.b64encode(b'{"bin":' + data + b"}").decode()}}
        return {"result": {"data": {"method": r.body["method"], "got": body_value(r, "data")}}}

    backend.handler("rpc", reply)
    user = "rpc-" + uid()
    c, _, ctx = await token_client(srv, sdk, user, meta={"plan": "pro"})

    res = await c.rpc("sum", {"a": 1})
    assert res.data == {"method": "sum", "got": {"a": 1}}
    [req] = matching(backend, "rpc", client=ctx.client, method="sum")
    assert req.via == via and req.header("x-proxy") is None
    assert (req.body["user"], raw(req, "meta")) == (user, {"plan": "pro"})

    # A namespace's named proxy, over the other protocol.
    res = await c.rpc("alt:sum", {"a": 2})
    assert res.data == {"method": "alt:sum", "got": {"a": 2}}
    [req] = matching(backend, "rpc", client=ctx.client, method="alt:sum")
    assert (req.via, req.header("x-proxy")) == (other(via), "alt_rpc")
    assert raw(req, "meta") == {"plan": "pro"}

    # binary_encoding: b64data both ways.
    res = await c.rpc("bin:x", [1, 2])
    assert res.data == {"bin": [1, 2]}
    [req] = matching(backend, "rpc", client=ctx.client, method="bin:x")
    assert "data" not in req.body
    # The SDK's own JSON text for [1, 2], passed on byte for byte.
    assert base64.b64decode(req.body["b64data"]) == json.dumps([1, 2]).encode()

    # Built-in ping answers without the backend; unknown / proxy-less namespaces fail.
    res = await c.rpc("ping", {})
    assert res.data is None
    with pytest.raises(ReplyError) as exc:
        await c.rpc("off:x", {})
    assert exc.value.code == 108
    with pytest.raises(ReplyError) as exc:
        await c.rpc("nosuchns:x", {})
    assert exc.value.code == 104
    methods = [r.body["method"] for r in matching(backend, "rpc", client=ctx.client)]
    assert methods == ["sum", "alt:sum", "bin:x"]


async def test_rpc_custom_error_disconnect_and_status_transforms(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    replies = {
        "e": {"error": {"code": 1005, "message": "bad args"}},
        "t": {"error": {"code": 1006, "message": "busy", "temporary": True}},
        "d": {"disconnect": {"code": 4505, "reason": "rpc says bye"}},
    }
    backend.handler("rpc", lambda r: replies[r.body["method"]])
    c, ev, _ = await token_client(srv, sdk, "re-" + uid())
    with pytest.raises(ReplyError) as exc:
        await c.rpc("e", {})
    assert (exc.value.code, exc.value.message, exc.value.temporary) == (1005, "bad args", False)
    with pytest.raises(ReplyError) as exc:
        await c.rpc("t", {})
    assert (exc.value.code, exc.value.message, exc.value.temporary) == (1006, "busy", True)

    # status_to_code_transforms (HTTP proxy tr_rpc): a status becomes an error or disconnect.
    backend.status("rpc", 418)
    with pytest.raises(ReplyError) as exc:
        await c.rpc("tr:x", {})
    assert (exc.value.code, exc.value.message) == (1418, "teapot")
    backend.status("rpc", 409)
    task = asyncio.ensure_future(c.rpc("tr:y", {}, timeout=3))
    r = await ev.next("connecting", lambda x: x.code == 4409)
    assert r.reason == "conflict"
    with pytest.raises(Exception):  # noqa: B017
        await task
    await ev.next("connected")

    backend.handler("rpc", lambda r: replies[r.body["method"]])
    task = asyncio.ensure_future(c.rpc("d", {}, timeout=3))
    d = await ev.next("disconnected")
    assert (d.code, d.reason) == (4505, "rpc says bye")
    with pytest.raises(Exception):  # noqa: B017
        await task


# --------------------------------------------------------------------------------------------
# server-side refresh: refresh and sub_refresh proxies
#
# Expiry times are whole unix seconds, so each flow takes seconds: the connection flow and the
# subscription flow run concurrently, and only in the memory pass (nothing here involves the
# engine beyond what every other test covers on both).


def memory_only(engine: str) -> None:
    if engine != "memory":
        pytest.skip("engine-independent and slow: memory pass only")


async def test_server_side_refresh_hides_expiry(srv: ServerHandle, backend: ProxyBackend) -> None:
    """With refresh / sub_refresh proxies the server refreshes: results carry no expires/ttl
    (the SDK must not refresh), and client refresh / sub_refresh commands are rejected."""
    ch = f"px:h-{uid()}"
    backend.reply("connect", {"result": {"user": "h", "expire_at": int(time.time()) + 300}})
    backend.reply("subscribe", {"result": {"expire_at": int(time.time()) + 300}})
    async with RawWS.connect(srv.ws_url) as ws:
        res = await ws.connect_cmd()
        assert "error" not in res, res
        assert "expires" not in res["connect"] and "ttl" not in res["connect"]
        res = await ws.command({"subscribe": {"channel": ch}})
        assert "error" not in res, res
        assert "expires" not in res["subscribe"] and "ttl" not in res["subscribe"]
        await ws.send({"id": ws.next_id(), "sub_refresh": {"channel": ch, "token": "t"}})
        assert (await ws.wait_closed())[0] == 3501
    async with RawWS.connect(srv.ws_url) as ws:
        assert "error" not in await ws.connect_cmd()
        await ws.send({"id": ws.next_id(), "refresh": {"token": "t"}})
        assert (await ws.wait_closed())[0] == 3501


async def connection_refresh_flow(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    """Refresh extends (new expire_at, info, meta), then `expired` ends it with 3005."""
    name, user = "rf-" + uid(), "u-" + uid()
    connects: list[Request] = []

    def connect(r: Request) -> dict[str, Any]:
        connects.append(r)
        # Only the first connection expires; the one after 3005 lives on.
        expire_at = int(time.time()) + 1 if len(connects) == 1 else 0
        return {"result": {"user": user, "expire_at": expire_at, "meta": {"m": 1}}}

    def refresh(r: Request) -> dict[str, Any]:
        n = len(matching(backend, "refresh", client=r.body["client"]))
        if n == 1:
            info = {"v": 2}
            return {"result": {"expire_at": int(time.time()) + 1, "info": info, "meta": {"m": 2}}}
        if n == 2:
            # At least a second away, so the check below runs before the next refresh.
            return {"result": {"expire_at": int(time.time()) + 2}}
        return {"result": {"expired": True}}

    backend.handler("connect", connect)
    backend.handler("refresh", refresh)
    client, ev = sdk(name=name)
    ctx = await connected(client, ev)

    reqs = await received(backend, "refresh", 2, client=ctx.client, timeout=6)
    assert reqs[0].body["user"] == user
    assert raw(reqs[0], "meta") == {"m": 1}
    assert raw(reqs[1], "meta") == {"m": 2}  # meta replaced by the first refresh
    assert client.state == ClientState.CONNECTED
    # The refreshed info is the connection's: it rides on its publications.
    watcher, _, _ = await token_client(srv, sdk, "watcher-" + uid())
    watch = f"px:w-{uid()}"
    _, wev, _ = await subscribed(watcher, watch)
    await client.publish(watch, {"hi": 1})
    pub = (await wev.next("publication")).pub
    assert (pub.info.user, pub.info.conn_info) == (user, {"v": 2})

    # The third answer expires the connection: 3005, and the SDK reconnects.
    c = await ev.next("connecting", lambda x: x.code == 3005, timeout=6)
    assert c.reason == "connection expired"
    await ev.next("connected")
    assert len(matching(backend, "refresh", client=ctx.client)) == 3
    assert len(connects) == 2
    assert "disconnected" not in ev.names()


async def subscription_refresh_flow(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    """sub_refresh extends (new expire_at, info), then `expired` ends it with 2501."""
    ch = f"px:sr-{uid()}"

    def subscribe(r: Request) -> dict[str, Any]:
        if r.body["channel"] == ch and len(matching(backend, "subscribe", channel=ch)) == 1:
            return {"result": {"expire_at": int(time.time()) + 1, "info": {"gen": 1}}}
        return {"result": {}}  # the resubscription does not expire

    def sub_refresh(r: Request) -> dict[str, Any]:
        n = len(matching(backend, "sub_refresh", channel=ch))
        if n == 1:
            return {"result": {"expire_at": int(time.time()) + 1, "info": {"gen": 2}}}
        if n == 2:
            # At least a second away, so the check below runs before the next refresh.
            return {"result": {"expire_at": int(time.time()) + 2}}
        return {"result": {"expired": True}}

    backend.handler("subscribe", subscribe)
    backend.handler("sub_refresh", sub_refresh)
    user = "sr-" + uid()
    c, _, ctx = await token_client(srv, sdk, user, meta={"sr": 1})
    sub, sev, _ = await subscribed(c, ch)

    reqs = await received(backend, "sub_refresh", 2, channel=ch, timeout=6)
    assert (reqs[0].body["client"], reqs[0].body["user"]) == (ctx.client, user)
    assert raw(reqs[0], "meta") == {"sr": 1}
    # The refreshed channel info is the subscription's: it rides on its publications.
    await sub.publish({"m": 1})
    pub = (await sev.next("publication")).pub
    assert pub.info.chan_info == {"gen": 2}

    # Expired: unsubscribe push 2501, the SDK resubscribes through the subscribe proxy.
    s = await sev.next("subscribing", lambda x: x.code == 2501, timeout=6)
    assert s.reason == "subscription expired"
    await sev.next("subscribed")
    assert len(matching(backend, "sub_refresh", channel=ch)) == 3
    assert len(matching(backend, "subscribe", channel=ch)) == 2
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert c.state == ClientState.CONNECTED


async def test_server_side_refresh_extends_then_expires(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, engine: str
) -> None:
    memory_only(engine)
    await asyncio.gather(
        connection_refresh_flow(srv, backend, sdk), subscription_refresh_flow(srv, backend, sdk)
    )


async def test_server_side_refresh_into_the_past_expires(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, engine: str
) -> None:
    """An expire_at that is not in the future ends the connection (3005) / subscription
    (2501; 3006 for a server-side one) at once, with a single proxy call (no refresh loop)."""
    memory_only(engine)
    name, ch = "past-" + uid(), f"px:past-{uid()}"

    def connect(r: Request) -> dict[str, Any]:
        first = len(matching(backend, "connect", name=name)) == 1
        return {"result": {"user": "p", "expire_at": int(time.time()) + 1 if first else 0}}

    def subscribe(r: Request) -> dict[str, Any]:
        first = len(matching(backend, "subscribe", channel=ch)) == 1
        return {"result": {"expire_at": int(time.time()) + 1 if first else 0}}

    backend.handler("connect", connect)
    backend.handler("subscribe", subscribe)
    backend.handler("refresh", lambda r: {"result": {"expire_at": int(time.time()) - 5}})
    backend.handler("sub_refresh", lambda r: {"result": {"expire_at": int(time.time()) - 5}})

    async def connection() -> None:
        client, ev = sdk(name=name)
        ctx = await connected(client, ev)
        await ev.next("connecting", lambda x: x.code == 3005, timeout=6)
        await ev.next("connected")
        assert len(matching(backend, "refresh", client=ctx.client)) == 1

    async def subscription() -> None:
        c, _, _ = await token_client(srv, sdk, "past-" + uid())
        _, sev, _ = await subscribed(c, ch)
        await sev.next("subscribing", lambda x: x.code == 2501, timeout=6)
        await sev.next("subscribed")
        assert len(matching(backend, "sub_refresh", channel=ch)) == 1

    async def server_side_subscription() -> None:
        # A server-side subscription that expires ends the connection: 3006.
        user, ch2 = "ss-" + uid(), f"px:ss-{uid()}"
        c, ev, _ = await token_client(srv, sdk, user)
        expire_at = int(time.time()) + 1
        await api(srv, "subscribe", {"user": user, "channel": ch2, "expire_at": expire_at})
        await ev.next("subscribed", lambda x: x.channel == ch2)
        d = await ev.next("connecting", lambda x: x.code == 3006, timeout=6)
        assert d.reason == "subscription expired"
        assert len(matching(backend, "sub_refresh", channel=ch2)) == 1

    await asyncio.gather(connection(), subscription(), server_side_subscription())


async def connection_refresh_failures(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    backend.reply("connect", {"result": {"user": "rf", "expire_at": int(time.time()) + 1}})
    backend.status("refresh", 503)
    client, ev = sdk(name="rfail-" + uid())
    ctx = await connected(client, ev)
    await received(backend, "refresh", 1, client=ctx.client, timeout=6)
    # A broken answer is a failure too; each is retried after the retry delay.
    backend.raw("refresh", b"{not json")
    await received(backend, "refresh", 2, client=ctx.client)
    backend.reply("refresh", {"result": {"expire_at": int(time.time()) + 60}})
    await received(backend, "refresh", 3, client=ctx.client)
    # Still the same connection: nothing happened to it.
    await client.rpc("still-there", {})
    await received(backend, "rpc", client=ctx.client, method="still-there")
    assert ev.names() == ["connecting", "connected"]
    assert client.state == ClientState.CONNECTED


async def subscription_refresh_failures(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory
) -> None:
    ch = f"px:sf-{uid()}"
    backend.reply("subscribe", {"result": {"expire_at": int(time.time()) + 1}})
    backend.status("sub_refresh", 500)
    c, _, _ = await token_client(srv, sdk, "sf-" + uid())
    sub, sev, _ = await subscribed(c, ch)
    await received(backend, "sub_refresh", 1, channel=ch, timeout=6)
    backend.raw("sub_refresh", b"<html>")
    await received(backend, "sub_refresh", 2, channel=ch)
    backend.reply("sub_refresh", {"result": {"expire_at": int(time.time()) + 60}})
    await received(backend, "sub_refresh", 3, channel=ch)
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert sev.names() == ["subscribing", "subscribed"]
    await sub.publish({"still": "there"})
    assert (await sev.next("publication")).pub.data == {"still": "there"}


async def test_server_side_refresh_failures_are_retried(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, engine: str
) -> None:
    """A failing refresh / sub_refresh proxy neither disconnects nor unsubscribes: it is
    asked again after the retry delay."""
    memory_only(engine)
    await asyncio.gather(
        connection_refresh_failures(srv, backend, sdk),
        subscription_refresh_failures(srv, backend, sdk),
    )


# --------------------------------------------------------------------------------------------
# failures: timeout, connection refused, non-200, invalid JSON => error 100


FAILURES = ("timeout", "refused", "status", "invalid_json")


@pytest.mark.parametrize("failure", FAILURES)
async def test_failures_are_internal_errors(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, failure: str
) -> None:
    """subscribe, publish and rpc fail with temporary error 100; the connection stays.
    (The connect proxy's own failures: test_connect_failures.)"""
    ns = {"timeout": "slow", "refused": "down"}.get(failure, "px")
    rpc_method = {"timeout": "slow:m", "refused": "down:m"}.get(failure, "m")
    for kind in ("subscribe", "publish", "rpc"):
        if failure == "timeout":
            backend.hang(kind)
        elif failure == "status":
            backend.status(kind, 503)
        elif failure == "invalid_json":
            backend.raw(kind, b'{"result": ')
    c, ev, _ = await token_client(srv, sdk, "f-" + uid())
    sev = SubEvents()
    sub = c.new_subscription(f"{ns}:f-{uid()}", events=sev)

    async def check_call(coro: Any) -> None:
        with pytest.raises(ReplyError) as exc:
            await coro
        assert (exc.value.code, exc.value.message, exc.value.temporary) == (
            100,
            "internal server error",
            True,
        )

    async def check_subscribe() -> None:
        await sub.subscribe()
        e = await sev.next("error")
        assert (e.error.code, e.error.temporary) == (100, True)
        assert sub.state == SubscriptionState.SUBSCRIBING  # the SDK will try again
        await sub.unsubscribe()

    started = time.monotonic()
    await asyncio.gather(
        check_subscribe(),
        check_call(c.publish(f"{ns}:f-{uid()}", {"x": 1})),
        check_call(c.rpc(rpc_method, {})),
    )
    if failure == "timeout":
        assert time.monotonic() - started >= SLOW_TIMEOUT * 0.9
    assert c.state == ClientState.CONNECTED
    assert "disconnected" not in ev.names() and ev.names().count("connecting") == 1


@pytest.mark.parametrize("failure", ("timeout", "status", "invalid_json"))
async def test_connect_failures(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, failure: str, engine: str
) -> None:
    """The connect proxy failing: temporary error 100, the SDK keeps trying.
    (Connection refused: test_connect_refused.)"""
    if failure == "timeout":
        if engine != "memory":
            pytest.skip("engine-independent and slow (the 1s proxy timeout): memory pass only")
        backend.hang("connect")
    elif failure == "status":
        backend.status("connect", 500)
    else:
        backend.raw("connect", b"[1, 2")
    name = "cf-" + uid()
    client, ev = sdk(name=name)
    await client.connect()
    e = await ev.next("error")
    assert isinstance(e.error, ReplyError)
    assert (e.error.code, e.error.temporary) == (100, True)
    # The SDK tries again and the backend, recovered, lets it in.
    backend.reply("connect", {"result": {"user": "back"}})
    await ev.next("connected", timeout=6)
    assert "disconnected" not in ev.names()


# --------------------------------------------------------------------------------------------
# named channel proxies and metrics


async def test_named_channel_proxies(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, via: str
) -> None:
    backend.handler(
        "subscribe", lambda r: {"result": {"data": {"by": r.header("x-proxy") or "default"}}}
    )
    backend.reply("publish", {"result": {"data": {"replaced": True}}})
    c, _, ctx = await token_client(srv, sdk, "nm-" + uid())
    ch = f"alt:n-{uid()}"
    _, sev, sctx = await subscribed(c, ch)
    assert sctx.data == {"by": "alt_sub"}
    await c.publish(ch, {"orig": 1})
    assert (await sev.next("publication")).pub.data == {"replaced": True}
    [sreq] = matching(backend, "subscribe", client=ctx.client)
    [preq] = matching(backend, "publish", client=ctx.client)
    assert (sreq.via, preq.via) == (other(via), other(via))
    assert preq.header("x-proxy") == "alt_pub"

    # binary_encoding on a publish proxy: b64data in, b64data out.
    backend.handler(
        "publish",
        lambda r: {
            "result": {
                "b64data": base64.b64encode(
                    b'{"was":' + base64.b64decode(r.body["b64data"]) + b"}"
                ).decode()
            }
        },
    )
    bch = f"bin:b-{uid()}"
    _, bev, _ = await subscribed(c, bch)
    await c.publish(bch, "text")
    assert (await bev.next("publication")).pub.data == {"was": "text"}


async def test_proxy_metrics(
    srv: ServerHandle, backend: ProxyBackend, sdk: SdkFactory, via: str
) -> None:
    name = "mt-" + uid()
    c, ev = sdk(name=name)
    await connected(c, ev)
    await c.rpc("ok", {})
    backend.status("rpc", 502)
    with pytest.raises(ReplyError):
        await c.rpc("bad", {})
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()

    def value(metric: str, kind: str, name: str = "default") -> float:
        pattern = (
            rf'^centrifugo_{metric}\{{(?=.*name="{name}")(?=.*protocol="{via}")'
            rf'(?=.*type="{kind}")[^}}]*\}} (\S+)$'
        )
        found = re.findall(pattern, text, re.M)
        assert found, f"{metric} {kind} {name} not in metrics"
        return float(found[0])

    assert value("proxy_duration_seconds_count", "rpc") >= 2
    assert value("proxy_duration_seconds_histogram_count", "rpc") >= 2
    assert value("proxy_errors", "rpc") >= 1
    assert value("proxy_inflight_requests", "rpc") == 0
    assert value("proxy_duration_seconds_count", "connect") >= 1
    assert value("proxy_duration_seconds_histogram_bucket", "connect") >= 0


# --------------------------------------------------------------------------------------------
# connection refused on connect; unidirectional clients get 3004


@pytest.fixture(scope="module")
def refused_srv(server_factory: Any, down_port: int) -> ServerHandle:
    """A connect proxy nobody answers (gRPC; refused HTTP calls: the "down" proxy).
    Engine-independent: memory pass only."""
    endpoint = f"grpc://127.0.0.1:{down_port}"
    cfg = {
        "engine": {"type": "memory"},
        "client": {"proxy": {"connect": {"enabled": True, "endpoint": endpoint}}},
        "uni_websocket": {"enabled": True},
    }
    return server_factory(cfg, env=SERVER_ENV)


async def test_connect_refused(refused_srv: ServerHandle) -> None:
    events = ClientEvents()
    client = Client(refused_srv.ws_url, events=events, proxy=None, min_reconnect_delay=0.05)
    try:
        await client.connect()
        e = await events.next("error")
        assert isinstance(e.error, ReplyError)
        assert (e.error.code, e.error.temporary) == (100, True)
        assert client.state == ClientState.CONNECTING  # retrying
    finally:
        await client.disconnect()

    # A unidirectional connect that fails this way ends with disconnect 3004.
    url = refused_srv.url + "/connection/uni_websocket"
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        await ws.send_str("{}")
        msg = await ws.receive(timeout=EVENT_TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert orjson.loads(msg.data) == {
            "disconnect": {"code": 3004, "reason": "internal server error"}
        }
        msg = await ws.receive(timeout=EVENT_TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 3004
