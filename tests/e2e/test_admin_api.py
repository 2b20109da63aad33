"""The admin API (Centrifugo's internal/admin/handlers.go) and our two UI endpoints, against a
real server: sign-in, tokens, the legacy command stream, the live samples, the live tail's
connection token used on the real WebSocket endpoint, the port split and the UI's files."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.helpers import RawWS, ServerHandle, start_server
from tests.e2e.redis_e2e_helpers import redis_config
from tests.support.ports import free_port
from tests.support.redis_server import RedisProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "admin-password"
SECRET = "admin-secret"


def _admin(**extra: Any) -> dict[str, Any]:
    return {"admin": {"enabled": True, "password": PASSWORD, "secret": SECRET, **extra}}


@pytest.fixture(scope="module")
def token(server: ServerHandle) -> str:
    """One sign-in for the module: sign-ins are rate limited per address."""
    form = urllib.parse.urlencode({"password": PASSWORD}).encode()
    with urllib.request.urlopen(f"{server.url}/admin/auth", data=form, timeout=5) as r:
        return str(json.loads(r.read())["token"])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    cfg = {**_admin(), "client": {"allowed_origins": ["http://admin.example"]}}
    handle = start_server(cfg)
    yield handle
    handle.stop()


async def _post(
    url: str,
    *,
    data: Any = None,
    json: Any = None,
    token: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, Any]:
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"token {token}"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=data, json=json, headers=hdrs) as r:
            return r.status, await r.read(), r.headers


async def _sign_in(server: ServerHandle) -> str:
    status, body, _ = await _post(f"{server.url}/admin/auth", data={"password": PASSWORD})
    assert status == 200, body
    token = json.loads(body)["token"]
    assert isinstance(token, str) and token
    return token


async def _json_get(url: str, token: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers) as r:
            return r.status, await r.json(content_type=None)


async def test_init_tells_whether_the_request_is_signed_in(
    server: ServerHandle, token: str
) -> None:
    status, body = await _json_get(f"{server.url}/admin/init")
    assert (status, body) == (200, {"insecure": False, "edition": "oss", "authenticated": False})
    status, body = await _json_get(f"{server.url}/admin/init", token)
    assert body["authenticated"] is True
    status, body = await _json_get(f"{server.url}/admin/init", token[:-4] + "AAAA")
    assert body["authenticated"] is False


async def test_wrong_password_is_400_and_get_is_405(server: ServerHandle) -> None:
    status, _, _ = await _post(f"{server.url}/admin/auth", data={"password": "nope"})
    assert status == 400
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/admin/auth") as r:
        assert r.status == 405
    assert "admin sign-in from 127.0.0.1: wrong password" in server.log_text()


async def test_api_needs_the_token(server: ServerHandle, token: str) -> None:
    cmd = {"method": "info", "params": {}}
    status, _, _ = await _post(f"{server.url}/admin/api", json=cmd)
    assert status == 401
    status, _, _ = await _post(f"{server.url}/admin/api", json=cmd, token="bogus")
    assert status == 401
    # The HTTP API's key is not an admin token.
    status, _, _ = await _post(f"{server.url}/admin/api", json=cmd, token=server.api_key)
    assert status == 401
    status, body, _ = await _post(f"{server.url}/admin/api", json=cmd, token=token)
    assert status == 200
    nodes = json.loads(body)["result"]["nodes"]
    assert nodes and nodes[0]["version"]
    # The legacy stream: several commands, one reply per line, errors per command.
    stream = b'{"method":"publish","params":{"channel":"news","data":{"x":1}}}\n{"method":"history","params":{"channel":"news"}}'
    status, body, _ = await _post(
        f"{server.url}/admin/api",
        data=stream,
        token=token,
        headers={"Content-Type": "application/json"},
    )
    assert status == 200
    first, second = (json.loads(line) for line in body.split(b"\n"))
    assert first == {"result": {}}
    assert second == {"error": {"code": 108, "message": "not available"}}  # no history here


async def test_live_counts_publications_and_deliveries(server: ServerHandle, token: str) -> None:

    async def sample() -> dict[str, Any]:
        status, body, _ = await _post(f"{server.url}/admin/live", token=token)
        assert status == 200
        data = json.loads(body)
        (node,) = data["nodes"]
        return node

    async with RawWS.connect(server.ws_url) as ws:
        await ws.connect_cmd(server.token("u1"))
        token_ = server.sub_token("u1", "live")
        reply = await ws.command({"subscribe": {"channel": "live", "token": token_}})
        assert "error" not in reply
        before = await sample()
        assert before["num_clients"] >= 1 and before["num_subs"] >= 1
        await server.api_async("publish", {"channel": "live", "data": {"n": 1}})
        await ws.push()
        after = await sample()
    assert after["publications"] == before["publications"] + 1
    assert after["deliveries"] == before["deliveries"] + 1
    assert set(after) >= {"uid", "name", "version", "uptime", "num_users", "num_channels"}


async def test_tail_token_subscribes_a_real_connection(server: ServerHandle, token: str) -> None:
    origin = {"Origin": "http://admin.example"}
    status, body, _ = await _post(
        f"{server.url}/admin/tail", json={"channel": "tail1"}, token=token, headers=origin
    )
    assert status == 200, body
    tail = json.loads(body)
    assert tail["url"] == server.ws_url
    async with RawWS.connect(tail["url"], headers=origin) as ws:
        reply = await ws.connect_cmd(tail["token"])
        assert "tail1" in reply["connect"].get("subs", {})
        await server.api_async("publish", {"channel": "tail1", "data": {"hello": "tail"}})
        push = await ws.push()
    assert push["channel"] == "tail1" and push["pub"]["data"] == {"hello": "tail"}


async def test_tail_refusals_say_why(server: ServerHandle, token: str) -> None:
    url = f"{server.url}/admin/tail"
    status, _, _ = await _post(url, json={"channel": "x"})
    assert status == 401
    status, body, _ = await _post(url, json={}, token=token)
    assert status == 400 and b"channel required" in body
    status, body, _ = await _post(
        url, json={"channel": "x"}, token=token, headers={"Origin": "http://elsewhere.example"}
    )
    assert status == 400 and b"client.allowed_origins" in body


async def test_tail_token_is_not_an_application_token(server: ServerHandle) -> None:
    """Signed with a key derived from admin.secret: the client HMAC key's tokens are other,
    and a tail-kid token signed with the client key is refused."""
    import jwt

    forged = jwt.encode(
        {"sub": "", "subs": {"secret:1": {}}},
        server.hmac_key,
        algorithm="HS256",
        headers={"kid": "centrifugo-py-admin-tail"},
    )
    async with RawWS.connect(server.ws_url) as ws:
        await ws.send({"id": 1, "connect": {"token": forged}})
        code, _ = await ws.wait_closed()
    assert code == 3500  # invalid token


async def test_ui_files_are_served_with_their_headers(server: ServerHandle) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        async with s.get(f"{server.url}/..%2f..%2fpyproject.toml") as r:
            assert r.status == 404
        async with s.get(f"{server.url}/no-such-file.js") as r:
            assert r.status == 404
        # Client endpoints and the API keep their routes beside the catch-all.
        async with s.post(
            f"{server.api_url}/info", headers={"X-API-Key": server.api_key}, json={}
        ) as r:
            assert r.status == 200


async def test_sign_in_attempts_are_rate_limited() -> None:
    handle = start_server(_admin())
    try:
        statuses = []
        for _ in range(7):
            status, _, headers = await _post(f"{handle.url}/admin/auth", data={"password": "x"})
            statuses.append(status)
        assert statuses[:5] == [400] * 5 and statuses[5:] == [429, 429]
        assert int(headers["Retry-After"]) >= 1
        assert "admin sign-in from 127.0.0.1: rate limited" in handle.log_text()
    finally:
        handle.stop()


async def test_insecure_needs_no_token_and_no_secret_signs_nobody_in() -> None:
    handle = start_server({"admin": {"enabled": True, "insecure": True}})
    try:
        status, body = await _json_get(f"{handle.url}/admin/init")
        assert body == {"insecure": True, "edition": "oss", "authenticated": True}
        status, raw, _ = await _post(f"{handle.url}/admin/api", json={"method": "info"})
        assert status == 200 and b'"nodes"' in raw
        status, _, _ = await _post(f"{handle.url}/admin/auth", data={"password": ""})
        assert status == 400  # no password and secret configured
    finally:
        handle.stop()


async def test_admin_answers_only_on_the_internal_port_unless_external() -> None:
    internal = free_port()
    cfg = {**_admin(), "http_server": {"internal_port": internal}}

    def ready(h: ServerHandle) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{internal}/health", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    handle = start_server(cfg, ready=ready)
    try:
        base = f"http://127.0.0.1:{internal}"
        status, body = await _json_get(f"{base}/admin/init")
        assert status == 200 and body["edition"] == "oss"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/") as r:
                assert r.status == 200  # the UI at the root of the internal port
            async with s.get(f"{handle.url}/") as r:
                assert r.status == 404
            async with s.get(f"{handle.url}/admin/init") as r:
                assert r.status == 404
        token_status, raw, _ = await _post(f"{base}/admin/auth", data={"password": PASSWORD})
        token = json.loads(raw)["token"]
        status, raw, _ = await _post(
            f"{base}/admin/tail",
            json={"channel": "c"},
            token=token,
            headers={"Origin": f"http://127.0.0.1:{internal}"},
        )
        # No allowed_origins: the tail's page origin must be listed first.
        assert status == 400 and b"client.allowed_origins" in raw
    finally:
        handle.stop()


async def test_handler_prefix_moves_api_and_ui() -> None:
    handle = start_server(_admin(handler_prefix="/ops/"))
    try:
        status, body = await _json_get(f"{handle.url}/ops/admin/init")
        assert status == 200 and body["authenticated"] is False
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{handle.url}/ops/") as r:
                assert r.status == 200 and r.content_type == "text/html"
            async with s.get(f"{handle.url}/admin/init") as r:
                assert r.status == 404
    finally:
        handle.stop()


async def test_sessions_survive_across_workers(redis_server: RedisProcess) -> None:
    """A token signed by one worker is valid on every worker (same secret), and the tail's
    connection token too: the requests may land on any of them."""
    cfg = {**_admin(), **redis_config(redis_server.port), "client": {"allowed_origins": ["*"]}}
    handle = start_server(cfg, workers=2)
    try:
        token = await _sign_in(handle)
        for _ in range(6):
            status, _, _ = await _post(
                f"{handle.url}/admin/api", json={"method": "info"}, token=token
            )
            assert status == 200
        status, raw, _ = await _post(f"{handle.url}/admin/live", token=token)
        assert len(json.loads(raw)["nodes"]) == 2
        tails = []
        for i in range(4):
            _, raw, _ = await _post(
                f"{handle.url}/admin/tail", json={"channel": f"t{i}"}, token=token
            )
            tails.append(json.loads(raw))
        for t in tails:
            async with RawWS.connect(t["url"]) as ws:
                reply = await ws.connect_cmd(t["token"])
                assert reply["connect"]["subs"]
    finally:
        handle.stop()


async def test_web_path_serves_another_build(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>other build</title>")
    handle = start_server(_admin(web_path=str(tmp_path)))
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{handle.url}/") as r:
            assert r.status == 200 and "other build" in await r.text()
    finally:
        handle.stop()


async def test_web_proxy_address_forwards_to_a_running_build() -> None:
    """A real development server on another port; the admin UI path is passed through."""
    seen: list[str] = []

    async def dev(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.Response(text="dev build", content_type="text/html")

    dev_app = web.Application()
    dev_app.router.add_get("/{tail:.*}", dev)
    runner = web.AppRunner(dev_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    handle = start_server(
        _admin(handler_prefix="/ui", web_proxy_address=f"http://127.0.0.1:{port}")
    )
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{handle.url}/ui/app.js?v=1") as r:
            assert r.status == 200 and await r.text() == "dev build"
        assert seen == ["/app.js?v=1"]
        status, body = await _json_get(f"{handle.url}/ui/admin/init")
        assert status == 200 and body["edition"] == "oss"  # the API is not proxied
    finally:
        handle.stop()
        await runner.cleanup()
