"""Map publish and map remove proxies end to end (Centrifugo 6.8+): a real server whose
`map.publish_proxy_enabled` / `map.remove_proxy_enabled` namespaces ask a real backend
(tests/integration/proxy_backend.py: aiohttp + grpcio on free ports), driven by raw
WebSocket frames for exact requests and codes, and by centrifuge-js for the SDK's view.

Every test runs per backend protocol (`via`: the default proxies are HTTP or gRPC, the
named ones the other protocol) on the memory engine, and over HTTP on Redis (the proxy
protocol does not depend on the engine). The backend runs in the module's event loop;
its request log wakes waiters on arrival (test_proxy_e2e.RequestLog), so nothing polls.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from .helpers import RawWS, ServerHandle, free_port, run_js_async
from .test_proxy_e2e import RequestLog, body_value, other

try:
    from integration.proxy_backend import KINDS, ProxyBackend, Request
except ImportError:  # tests/ itself imported as a package
    from tests.integration.proxy_backend import KINDS, ProxyBackend, Request

pytestmark = pytest.mark.asyncio(loop_scope="module")

META = {"tenant": "t1"}


def uid() -> str:
    return uuid.uuid4().hex[:10]


def server_config(backend: ProxyBackend, via: str, down_port: int) -> dict[str, Any]:
    def proxy(kind: str, over: str = via, **opts: Any) -> dict[str, Any]:
        return {"endpoint": backend.endpoint(over, kind), "timeout": "1s", **opts}

    base = {"allow_subscribe_for_client": True, "subscription_type": "map"}
    persistent = {"mode": "persistent"}
    down = "http://127.0.0.1:%d/down" if via == "http" else "grpc://127.0.0.1:%d"
    return {
        "client": {"allow_anonymous_connect_without_token": True},
        "channel": {
            "proxy": {
                "map_publish": proxy("map_publish", include_connection_meta=True),
                "map_remove": proxy("map_remove", include_connection_meta=True),
            },
            "namespaces": [
                # The default proxies (channel.proxy.map_publish / map_remove).
                {
                    "name": "mp",
                    **base,
                    "map": {
                        **persistent,
                        "publish_proxy_enabled": True,
                        "remove_proxy_enabled": True,
                    },
                },
                # Named proxies over the other protocol, binary encoding for publish.
                {
                    "name": "named",
                    **base,
                    "allow_subscribe_for_anonymous": True,
                    "map": {
                        **persistent,
                        "publish_proxy_enabled": True,
                        "publish_proxy_name": "bin_mpub",
                        "remove_proxy_enabled": True,
                        "remove_proxy_name": "alt_mrem",
                    },
                },
                # Only publish is proxied; remove follows the namespace's permissions.
                {
                    "name": "pubonly",
                    **base,
                    "map": {**persistent, "publish_proxy_enabled": True},
                },
                {
                    "name": "down",
                    **base,
                    "map": {
                        **persistent,
                        "publish_proxy_enabled": True,
                        "publish_proxy_name": "down",
                    },
                },
            ],
        },
        "proxies": [
            {
                **proxy("map_publish", other(via), binary_encoding=True),
                "name": "bin_mpub",
            },
            {**proxy("map_remove", other(via)), "name": "alt_mrem"},
            {"name": "down", "endpoint": down % down_port, "timeout": "1s"},
        ],
        "prometheus": {"enabled": True},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[ProxyBackend]:
    b = ProxyBackend()
    b.requests = RequestLog()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(scope="module", params=("http", "grpc"))
def via(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def srv(server_factory: Any, backend: ProxyBackend, via: str, engine: str) -> ServerHandle:
    if engine != "memory" and via != "http":
        pytest.skip("gRPC proxies: memory pass only")
    return server_factory(server_config(backend, via, free_port()))


@pytest.fixture(autouse=True)
def plain_backend(backend: ProxyBackend) -> None:
    for kind in KINDS:
        backend.reply(kind, {"result": {}})


def requests_for(backend: ProxyBackend, kind: str, channel: str) -> list[Request]:
    return [r for r in backend.of_kind(kind) if r.body.get("channel") == channel]


async def state_of(srv: ServerHandle, channel: str) -> dict[str, tuple[Any, dict | None]]:
    """key -> (data, tags) of the map's state, read through the server API."""
    reply = await srv.api_async("map_read_state", {"channel": channel, "limit": -1})
    return {e["key"]: (e.get("data"), e.get("tags")) for e in reply["result"].get("entries", [])}


async def go_live(ws: RawWS, channel: str, token: str = "") -> None:
    """Connect `ws` and take `channel`'s map subscription live (an empty map: one page)."""
    assert "connect" in await ws.connect_cmd(token)
    rep = await ws.command({"subscribe": {"channel": channel, "type": 1, "phase": 2}})
    assert rep["subscribe"]["phase"] == 0, rep


def publish_cmd(channel: str, key: str | None, data: Any = None, removed: bool = False) -> dict:
    cmd: dict[str, Any] = {"channel": channel, "type": 1}
    if key is not None:
        cmd["key"] = key
    if data is not None:
        cmd["data"] = data
    if removed:
        cmd["removed"] = True
    return {"publish": cmd}


async def test_publish_request_fields_and_rewritten_key_data_tags(
    srv: ServerHandle, backend: ProxyBackend, via: str
) -> None:
    ch = f"mp:{uid()}"
    backend.reply(
        "map_publish",
        {"result": {"key": "server-key", "data": {"by": "backend"}, "tags": {"t": "1"}}},
    )
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("alice", meta=META))
        rep = await ws.command(publish_cmd(ch, "k", {"by": "client"}))
        assert rep == {"id": rep["id"], "publish": {}}
        push = await ws.push()
        assert push["channel"] == ch
        pub = push["pub"]
        assert (pub["key"], pub["data"], pub["tags"]) == (
            "server-key",
            {"by": "backend"},
            {"t": "1"},
        )
        assert pub["info"]["user"] == "alice"
    [req] = requests_for(backend, "map_publish", ch)
    assert req.via == via
    body = {k: body_value(req, k) for k in req.body}
    assert body.pop("client")
    assert body == {
        "transport": "websocket",
        "protocol": "json",
        "encoding": "json",
        "user": "alice",
        "channel": ch,
        "key": "k",
        "data": {"by": "client"},
        "meta": META,
    }
    assert await state_of(srv, ch) == {"server-key": ({"by": "backend"}, {"t": "1"})}


async def test_no_result_keeps_the_clients_key_and_data_and_remove_is_proxied(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    ch = f"mp:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("bob"))
        assert "error" not in await ws.command(publish_cmd(ch, "k", {"v": 1}))
        assert (await ws.push())["pub"]["key"] == "k"
        assert await state_of(srv, ch) == {"k": ({"v": 1}, None)}
        # The remove proxy names another key and the removal publication's tags.
        await srv.api_async("map_publish", {"channel": ch, "key": "other", "data": {"v": 2}})
        assert (await ws.push())["pub"]["key"] == "other"
        backend.reply("map_remove", {"result": {"key": "other", "tags": {"why": "proxy"}}})
        rep = await ws.command(publish_cmd(ch, "k", removed=True))
        assert "error" not in rep, rep
        pub = (await ws.push())["pub"]
        assert (pub["key"], pub.get("removed"), pub.get("tags")) == (
            "other",
            True,
            {"why": "proxy"},
        )
    [req] = requests_for(backend, "map_remove", ch)
    assert (req.body["user"], req.body["key"]) == ("bob", "k")
    assert "data" not in req.body and "b64data" not in req.body
    assert await state_of(srv, ch) == {"k": ({"v": 1}, None)}


async def test_error_and_disconnect_replies_reach_the_client_and_write_nothing(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    ch = f"mp:{uid()}"
    backend.reply("map_publish", {"error": {"code": 1403, "message": "no", "temporary": True}})
    backend.reply("map_remove", {"error": {"code": 1404, "message": "not yours"}})
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("carol"))
        rep = await ws.command(publish_cmd(ch, "k", {"v": 1}))
        assert rep["error"] == {"code": 1403, "message": "no", "temporary": True}
        rep = await ws.command(publish_cmd(ch, "k", removed=True))
        assert rep["error"] == {"code": 1404, "message": "not yours"}
        assert await state_of(srv, ch) == {}
        backend.reply("map_publish", {"disconnect": {"code": 4403, "reason": "go away"}})
        await ws.send({"id": ws.next_id(), **publish_cmd(ch, "k", {"v": 1})})
        assert await ws.wait_closed() == (4403, "go away")
    assert await state_of(srv, ch) == {}


async def test_unusable_backend_is_100_and_a_keyless_write_is_107(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    ch = f"mp:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("dan"))
        rep = await ws.command(publish_cmd(f"down:{uid()}", "k", {}))
        assert rep["error"]["code"] == 100
        backend.status("map_publish", 503)
        assert (await ws.command(publish_cmd(ch, "k", {})))["error"]["code"] == 100
        # Neither the client nor the backend named a key: Node.MapPublish's 107.
        backend.reply("map_publish", {"result": {}})
        assert (await ws.command(publish_cmd(ch, None, {})))["error"]["code"] == 107
        # The backend may assign the key the client left out.
        backend.reply("map_publish", {"result": {"key": "assigned"}})
        rep = await ws.command(publish_cmd(ch, None, {"n": 1}))
        assert "error" not in rep, rep
    keys = [r.body.get("key") for r in requests_for(backend, "map_publish", ch)]
    assert keys == ["k", None, None]
    assert await state_of(srv, ch) == {"assigned": ({"n": 1}, None)}


async def test_key_mode_idempotency_and_version_come_from_the_result(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    ch = f"mp:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("erin"))

        async def publish(result: dict[str, Any], data: Any) -> None:
            backend.reply("map_publish", {"result": result})
            rep = await ws.command(publish_cmd(ch, "k", data))
            assert "error" not in rep, rep

        await publish({"key_mode": "if_new"}, {"v": 1})
        await publish({"key_mode": "if_new"}, {"v": 2})  # suppressed: the key exists
        await publish({"idempotency_key": "once"}, {"v": 3})
        await publish({"idempotency_key": "once"}, {"v": 4})  # suppressed: same key
        await publish({"version": 5, "version_epoch": "e"}, {"v": 5})
        await publish({"version": 4, "version_epoch": "e"}, {"v": 6})  # suppressed: older
        await publish({"key_mode": "something else"}, {"v": 7})  # any other mode writes
        pushed = [(await ws.push())["pub"]["data"] for _ in range(4)]
    assert pushed == [{"v": 1}, {"v": 3}, {"v": 5}, {"v": 7}]
    assert await state_of(srv, ch) == {"k": ({"v": 7}, None)}


async def test_named_proxies_binary_encoding_and_anonymous_user(
    srv: ServerHandle, backend: ProxyBackend, via: str
) -> None:
    ch = f"named:{uid()}"
    b64 = base64.b64encode(b'{"from":"b64"}').decode()
    backend.reply("map_publish", {"result": {"b64data": b64}})
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch)  # anonymous
        assert "error" not in await ws.command(publish_cmd(ch, "k", [1]))
        assert (await ws.push())["pub"]["data"] == {"from": "b64"}
        assert "error" not in await ws.command(publish_cmd(ch, "k", removed=True))
    [pub] = requests_for(backend, "map_publish", ch)
    [rem] = requests_for(backend, "map_remove", ch)
    assert pub.via == rem.via == other(via)
    # Binary encoding: the payload as base64. An anonymous client's requests carry no
    # user: every map request field is omitempty, user included.
    assert pub.body["encoding"] == "binary" and "data" not in pub.body
    assert base64.b64decode(pub.body["b64data"]) == b"[1]"
    assert "user" not in pub.body and "user" not in rem.body
    assert rem.body["encoding"] == "json"
    assert await state_of(srv, ch) == {}


async def test_an_unproxied_remove_keeps_the_namespace_permissions(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    ch = f"pubonly:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("fay"))
        assert "error" not in await ws.command(publish_cmd(ch, "k", {}))
        rep = await ws.command(publish_cmd(ch, "k", removed=True))
        assert rep["error"]["code"] == 103
    assert requests_for(backend, "map_remove", ch) == []


async def test_calls_are_measured_as_map_publish_and_map_remove(
    srv: ServerHandle, backend: ProxyBackend, via: str
) -> None:
    ch = f"mp:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await go_live(ws, ch, srv.token("gus"))
        assert "error" not in await ws.command(publish_cmd(ch, "k", {}))
        assert "error" not in await ws.command(publish_cmd(ch, "k", removed=True))
    async with aiohttp.ClientSession() as s, s.get(srv.url + "/metrics") as resp:
        text = await resp.text()
    for kind in ("map_publish", "map_remove"):
        pattern = (
            rf'^centrifugo_proxy_duration_seconds_count\{{(?=.*name="default")'
            rf'(?=.*protocol="{via}")(?=.*type="{kind}")[^}}]*\}} (\S+)$'
        )
        found = re.findall(pattern, text, re.M)
        assert found and float(found[0]) >= 1, kind


@pytest.mark.usefixtures("node_js")
async def test_centrifuge_js_publishes_and_removes_through_the_proxies(
    srv: ServerHandle, backend: ProxyBackend
) -> None:
    ch = f"mp:{uid()}"

    def on_publish(r: Request) -> dict[str, Any]:
        if r.body["key"] == "bad":
            return {"error": {"code": 1409, "message": "bad key"}}
        seen = body_value(r, "data")
        return {"result": {"key": f"{r.body['key']}-{r.body['user']}", "data": {"seen": seen}}}

    backend.handler("map_publish", on_publish)
    backend.reply("map_remove", {"result": {"key": "mine-js"}})
    # run_js_async: the backend lives in this event loop and must keep answering.
    out = await run_js_async(
        """
        const c = newClient({ token: token('js') });
        const sub = c.newMapSubscription(env.CH);
        const updates = collect(sub, 'update');
        sub.subscribe(); c.connect();
        await sub.ready(5000);
        await sub.publish('mine', { n: 1 });
        await sub.remove('mine');
        await waitUntil(sub, 'update', () => updates.length >= 2, 5000, 'updates');
        let refused = null;
        await sub.publish('bad', { n: 2 }).catch((e) => { refused = e.code; });
        return {
          refused,
          updates: updates.map((u) => [u.key, !!u.removed, u.removed ? null : u.data]),
        };
        """,
        srv.js_env(CH=ch),
    )
    assert out["updates"] == [["mine-js", False, {"seen": {"n": 1}}], ["mine-js", True, None]]
    assert out["refused"] == 1409
