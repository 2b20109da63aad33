"""Unidirectional transports end to end: uni_websocket, uni_sse, uni_http_stream (research
§1.11, §1.12) with raw aiohttp clients against a real server, on both engines.

The server only writes bare Push objects: `connect` first, then publications and other
pushes, `{}` pings, and a `disconnect` push before it closes. Connect errors become
disconnect codes, or HTTP statuses with `connect_code_to_http_response`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from app import VERSION_STRING

from .helpers import ServerHandle

KINDS = ("ws", "sse", "http_stream")

HISTORY = {"history_size": 100, "history_ttl": "300s"}
NAMESPACES = [
    {"name": "hist", "force_recovery": True, **HISTORY},
    {"name": "pres", "presence": True},
    {"name": "pub", "allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True},
]
UNI_ON = {
    "uni_websocket": {"enabled": True},
    "uni_sse": {"enabled": True},
    "uni_http_stream": {"enabled": True},
}
MAIN_CFG: dict[str, Any] = {
    # A short ping interval so that `{}` pings show up within the test's patience.
    "client": {
        "ping_interval": "1s",
        "pong_timeout": "500ms",
        "allow_anonymous_connect_without_token": True,
    },
    "channel": {"namespaces": NAMESPACES},
    **UNI_ON,
}
HTTP_TRANSFORMS = {
    "enabled": True,
    "transforms": [
        {"code": 3500, "to": {"status_code": 401, "body": "bad token"}},
        {"code": 109, "to": {"status_code": 403}},
    ],
}
ALT_CFG: dict[str, Any] = {
    "client": {
        "connect_code_to_unidirectional_disconnect": {
            "enabled": True,
            "transforms": [{"code": 109, "to": {"code": 4109, "reason": "custom expired"}}],
        }
    },
    "channel": {"namespaces": NAMESPACES},
    "uni_websocket": {
        "enabled": True,
        "handler_prefix": "/uni/ws",
        "disable_disconnect_push": True,
    },
    "uni_sse": {
        "enabled": True,
        "handler_prefix": "/uni/sse",
        "max_request_body_size": 200,
        "connect_code_to_http_response": HTTP_TRANSFORMS,
    },
    "uni_http_stream": {
        "enabled": True,
        "handler_prefix": "/uni/stream",
        "max_request_body_size": 200,
        "connect_code_to_http_response": HTTP_TRANSFORMS,
    },
}
# Batches of pushes leave in one write only when they are queued within one event-loop
# turn, which the in-process memory engine guarantees for a sequential API batch.
JOIN_CFG: dict[str, Any] = {
    "engine": {"type": "memory"},
    "uni_websocket": {"enabled": True, "join_push_messages": True},
}

_seq = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_seq)}{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def main(server_factory: Any) -> ServerHandle:
    return server_factory(MAIN_CFG)


@pytest.fixture(scope="module")
def alt(server_factory: Any) -> ServerHandle:
    return server_factory(ALT_CFG)


def prefix(server: ServerHandle, kind: str) -> str:
    section = {"ws": "uni_websocket", "sse": "uni_sse", "http_stream": "uni_http_stream"}[kind]
    default = "/connection/" + section
    return server.config.get(section, {}).get("handler_prefix", default)


# --------------------------------------------------------------------------------------------
# clients


class Ended(Exception):
    """The server ended the connection (close frame / end of the response body)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"ended: {code} {reason!r}")
        self.code = code
        self.reason = reason


class Uni:
    """One unidirectional connection; `messages` are the raw transport messages received."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.messages: list[str] = []
        self.pings = 0
        self._pending: list[dict[str, Any]] = []
        self.status = 200
        self.headers: Any = {}

    async def _read(self, timeout: float) -> str:
        raise NotImplementedError

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next Push object, pings included. Raises Ended."""
        while not self._pending:
            msg = await self._read(timeout)
            self.messages.append(msg)
            self._pending.extend(json.loads(line) for line in msg.split("\n") if line)
        return self._pending.pop(0)

    async def push(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next Push that is not a ping."""
        deadline = time.monotonic() + timeout
        while True:
            obj = await self.next(max(deadline - time.monotonic(), 0.01))
            if obj:
                return obj
            self.pings += 1

    async def ended(self, timeout: float = 5.0) -> Ended:
        """Read (skipping pings) until the server ends; returns how it ended."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                obj = await self.next(max(deadline - time.monotonic(), 0.01))
                assert obj == {}, f"unexpected push before the end: {obj!r}"
                self.pings += 1
        except Ended as e:
            return e

    async def close(self) -> None:
        raise NotImplementedError


class UniWS(Uni):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__("ws")
        self.ws = ws

    async def _read(self, timeout: float) -> str:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.data
        if msg.type == aiohttp.WSMsgType.CLOSE:
            raise Ended(msg.data, msg.extra or "")
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            raise Ended(self.ws.close_code, "")
        raise AssertionError(f"unexpected websocket message {msg!r}")

    async def close(self) -> None:
        await self.ws.close()


class UniHTTP(Uni):
    """uni_http_stream (one push per line) or uni_sse (`data: <push>` events)."""

    def __init__(self, kind: str, resp: aiohttp.ClientResponse) -> None:
        super().__init__(kind)
        self.resp = resp
        self.status = resp.status
        self.headers = resp.headers
        self.raw = b""  # everything read, as is

    async def _line(self, timeout: float) -> bytes:
        line = await asyncio.wait_for(self.resp.content.readline(), timeout)
        self.raw += line
        if not line:
            raise Ended()
        return line

    async def _read(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        if self.kind == "http_stream":
            line = await self._line(timeout)
            assert line.endswith(b"\n"), line
            return line[:-1].decode()
        data: list[bytes] = []
        while True:
            line = await self._line(max(deadline - time.monotonic(), 0.01))
            if line.strip() == b"":
                if data:
                    return b"\n".join(data).decode()
                continue  # the stream's opening "\r\n"
            assert line.startswith(b"data: "), line
            data.append(line[len(b"data: ") : -1])

    async def close(self) -> None:
        self.resp.close()


@asynccontextmanager
async def open_uni(
    server: ServerHandle,
    kind: str,
    request: dict[str, Any] | None = None,
    *,
    via: str = "",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Uni]:
    """Open a unidirectional connection sending the ConnectRequest `request`.

    `via`: ws "query" (default) or "message"; sse "get" (default) or "post".
    """
    req = {} if request is None else request
    url = server.url + prefix(server, kind)
    async with aiohttp.ClientSession() as session:
        if kind == "ws":
            if via != "message":
                url += "?cf_connect=" + quote(json.dumps(req))
            ws = await session.ws_connect(url, headers=headers, autoping=True)
            if via == "message":
                await ws.send_str(json.dumps(req))
            conn: Uni = UniWS(ws)
        else:
            if kind == "sse" and via != "post":
                url += "?cf_connect=" + quote(json.dumps(req))
                resp = await session.get(url, headers=headers)
            else:
                resp = await session.post(url, data=json.dumps(req), headers=headers)
            conn = UniHTTP(kind, resp)
        try:
            yield conn
        finally:
            await conn.close()


def api(server: ServerHandle, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reply = server.api(method, params)
    assert "error" not in reply, reply
    return reply.get("result", reply)


def expect_connect(push: dict[str, Any], ping: int | None) -> dict[str, Any]:
    """Check the common part of a connect push and return its body."""
    assert set(push) == {"connect"}, push
    body = push["connect"]
    assert body["version"] == VERSION_STRING
    uuid.UUID(body["client"])
    uuid.UUID(body["session"])
    assert body["session"] != body["client"]
    if ping is None:
        assert "ping" not in body
    else:
        assert body["ping"] == ping
    # Unidirectional clients never answer pings.
    assert "pong" not in body
    return body


# --------------------------------------------------------------------------------------------
# connect and pushes


@pytest.mark.parametrize("kind", KINDS)
async def test_connect_push_and_publications(main: ServerHandle, kind: str) -> None:
    user, ch = uniq("u"), uniq("hist:c")
    token = main.token(user, channels=[ch])
    async with open_uni(main, kind, {"token": token}) as uni:
        body = expect_connect(await uni.push(), ping=1)
        assert set(body) >= {"client", "version", "session", "subs"}
        assert body["subs"][ch]["recoverable"] is True
        assert body["subs"][ch]["positioned"] is True
        epoch = body["subs"][ch]["epoch"]
        assert "offset" not in body["subs"][ch]  # empty stream
        for n in (1, 2, 3):
            res = api(main, "publish", {"channel": ch, "data": {"n": n, "s": "é\n"}})
            assert res == {"offset": n, "epoch": epoch}
        for n in (1, 2, 3):
            assert await uni.push() == {
                "channel": ch,
                "pub": {"data": {"n": n, "s": "é\n"}, "offset": n},
            }


@pytest.mark.parametrize(("kind", "via"), [("ws", "message"), ("sse", "post")])
async def test_connect_request_in_body(main: ServerHandle, kind: str, via: str) -> None:
    user, ch = uniq("u"), uniq("c")
    async with open_uni(main, kind, {"token": main.token(user, channels=[ch])}, via=via) as uni:
        body = expect_connect(await uni.push(), ping=1)
        assert body["subs"] == {ch: {}}
        api(main, "publish", {"channel": ch, "data": [1]})
        assert await uni.push() == {"channel": ch, "pub": {"data": [1]}}


@pytest.mark.parametrize("kind", ["ws", "sse"])
async def test_empty_connect_request_is_anonymous(main: ServerHandle, kind: str) -> None:
    # An empty ConnectRequest (`{}`, or no cf_connect at all) connects anonymously when allowed;
    # public channels named in `subs` are subscribed because anonymous clients may.
    ch = uniq("pub:a")
    async with open_uni(main, kind, {"subs": {ch: {}, uniq("hist:x"): {}}}) as uni:
        body = expect_connect(await uni.push(), ping=1)
        assert body["subs"] == {ch: {}}  # the other channel does not admit anonymous clients
        api(main, "publish", {"channel": ch, "data": {"k": "v"}})
        assert await uni.push() == {"channel": ch, "pub": {"data": {"k": "v"}}}
    async with aiohttp.ClientSession() as s:
        async with s.get(main.url + prefix(main, "sse")) as resp:
            assert resp.status == 200
            uni2 = UniHTTP("sse", resp)
            body = expect_connect(await uni2.push(), ping=1)
            assert "subs" not in body


@pytest.mark.parametrize("kind", KINDS)
async def test_pings_are_empty_pushes(main: ServerHandle, kind: str) -> None:
    async with open_uni(main, kind, {"token": main.token(uniq("u"))}) as uni:
        expect_connect(await uni.push(), ping=1)
        # ping_interval is 1s: two pings arrive within a few seconds, nothing else.
        assert await uni.next(3) == {}
        assert await uni.next(3) == {}


@pytest.mark.parametrize("kind", ["sse", "http_stream"])
async def test_stream_headers(main: ServerHandle, kind: str) -> None:
    async with open_uni(main, kind, {}) as uni:
        expect_connect(await uni.push(), ping=1)
        h = uni.headers
        assert h["X-Accel-Buffering"] == "no"
        assert h["Cache-Control"] == "private, no-cache, no-store, must-revalidate, max-age=0"
        assert h["Pragma"] == "no-cache"
        if kind == "sse":
            assert h["Content-Type"] == "text/event-stream; charset=utf-8"
            assert isinstance(uni, UniHTTP) and uni.raw.startswith(b"\r\ndata: {")
        else:
            assert h["Content-Type"].startswith("text/plain")
            assert isinstance(uni, UniHTTP) and uni.raw.startswith(b'{"connect":')


@pytest.mark.parametrize("kind", KINDS)
async def test_server_side_subscribe_unsubscribe(main: ServerHandle, kind: str) -> None:
    user, ch = uniq("u"), uniq("hist:s")
    async with open_uni(main, kind, {"token": main.token(user)}) as uni:
        expect_connect(await uni.push(), ping=1)
        api(main, "subscribe", {"user": user, "channel": ch})
        sub = await uni.push()
        assert sub["channel"] == ch
        assert sub["subscribe"]["recoverable"] is True
        assert sub["subscribe"]["positioned"] is True
        api(main, "publish", {"channel": ch, "data": {"x": 1}})
        assert await uni.push() == {"channel": ch, "pub": {"data": {"x": 1}, "offset": 1}}
        api(main, "unsubscribe", {"user": user, "channel": ch})
        assert await uni.push() == {
            "channel": ch,
            "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
        }


@pytest.mark.parametrize("kind", KINDS)
async def test_recovery_through_connect_subs(main: ServerHandle, kind: str) -> None:
    user, ch = uniq("u"), uniq("hist:r")
    epoch = ""
    for n in range(1, 6):
        epoch = api(main, "publish", {"channel": ch, "data": {"n": n}})["epoch"]
    token = main.token(user, channels=[ch])
    req = {"token": token, "subs": {ch: {"recover": True, "offset": 3, "epoch": epoch}}}
    async with open_uni(main, kind, req) as uni:
        body = expect_connect(await uni.push(), ping=1)
        assert body["subs"][ch] == {
            "recoverable": True,
            "positioned": True,
            "was_recovering": True,
            "recovered": True,
            "epoch": epoch,
            "offset": 3,
            "publications": [{"data": {"n": 4}, "offset": 4}, {"data": {"n": 5}, "offset": 5}],
        }
        api(main, "publish", {"channel": ch, "data": {"n": 6}})
        assert await uni.push() == {"channel": ch, "pub": {"data": {"n": 6}, "offset": 6}}
    # A wrong epoch cannot be recovered: the client learns the current position instead.
    req["subs"] = {ch: {"recover": True, "offset": 3, "epoch": "wrong"}}
    async with open_uni(main, kind, req) as uni:
        sub = expect_connect(await uni.push(), ping=1)["subs"][ch]
        assert sub.get("recovered") is not True
        assert "publications" not in sub
        assert sub["epoch"] == epoch
        assert sub["offset"] == 6


@pytest.mark.parametrize("kind", KINDS)
async def test_api_disconnect_push_then_close(main: ServerHandle, kind: str) -> None:
    user = uniq("u")
    async with open_uni(main, kind, {"token": main.token(user)}) as uni:
        expect_connect(await uni.push(), ping=1)
        api(main, "disconnect", {"user": user, "disconnect": {"code": 4001, "reason": "bye"}})
        assert await uni.push() == {"disconnect": {"code": 4001, "reason": "bye"}}
        end = await uni.ended()
        if kind == "ws":
            assert (end.code, end.reason) == (4001, "bye")


async def test_ws_messages_are_one_push_each(main: ServerHandle) -> None:
    user, ch = uniq("u"), uniq("c")
    async with open_uni(main, "ws", {"token": main.token(user, channels=[ch])}) as uni:
        expect_connect(await uni.push(), ping=1)
        api(
            main, "batch", {"commands": [{"publish": {"channel": ch, "data": n}} for n in range(5)]}
        )
        got = [await uni.push() for _ in range(5)]
        assert got == [{"channel": ch, "pub": {"data": n}} for n in range(5)]
        assert all("\n" not in m for m in uni.messages)


async def test_ws_join_push_messages(server_factory: Any) -> None:
    server = server_factory(JOIN_CFG)
    user, ch = uniq("u"), uniq("c")
    async with open_uni(server, "ws", {"token": server.token(user, channels=[ch])}) as uni:
        expect_connect(await uni.push(), ping=25)
        api(
            server,
            "batch",
            {"commands": [{"publish": {"channel": ch, "data": n}} for n in range(5)]},
        )
        got = [await uni.push() for _ in range(5)]
        assert got == [{"channel": ch, "pub": {"data": n}} for n in range(5)]
        # The five pushes were queued in one event-loop turn: one newline-joined message.
        assert uni.messages[-1].split("\n") == [
            json.dumps({"channel": ch, "pub": {"data": n}}, separators=(",", ":")) for n in range(5)
        ]


# --------------------------------------------------------------------------------------------
# connect errors


@pytest.mark.parametrize("kind", KINDS)
async def test_connect_errors_become_disconnects(main: ServerHandle, kind: str) -> None:
    cases = [
        ({"token": "not-a-jwt"}, 3500, "invalid token"),
        ({"token": main.token(uniq("u"), exp=int(time.time()) - 10)}, 3005, "connection expired"),
        # A token channel in an unknown namespace is an internal error for the connect.
        ({"token": main.token(uniq("u"), channels=["nope:x"])}, 3004, "internal server error"),
        ({"token": 5}, 3501, "bad request"),
    ]
    for req, code, reason in cases:
        async with open_uni(main, kind, req) as uni:
            assert uni.status == 200
            assert await uni.push() == {"disconnect": {"code": code, "reason": reason}}
            end = await uni.ended()
            if kind == "ws":
                assert (end.code, end.reason) == (code, reason)


async def test_unidirectional_disconnect_transforms(alt: ServerHandle) -> None:
    # client.connect_code_to_unidirectional_disconnect maps 109 (token expired) to 4109; with
    # uni_websocket.disable_disconnect_push only the close frame tells it.
    token = alt.token(uniq("u"), exp=int(time.time()) - 10)
    async with open_uni(alt, "ws", {"token": token}) as uni:
        end = await uni.ended()
        assert (end.code, end.reason) == (4109, "custom expired")
        assert uni.messages == []


async def test_disable_disconnect_push(alt: ServerHandle) -> None:
    user = uniq("u")
    async with open_uni(alt, "ws", {"token": alt.token(user)}) as uni:
        expect_connect(await uni.push(), ping=25)
        alt.api("disconnect", {"user": user})
        end = await uni.ended()
        assert (end.code, end.reason) == (3503, "force disconnect")
        assert len(uni.messages) == 1  # the connect push only


@pytest.mark.parametrize("kind", ["sse", "http_stream"])
async def test_connect_code_to_http_response(alt: ServerHandle, kind: str) -> None:
    cases = [
        ({"token": "not-a-jwt"}, 401, "bad token"),
        # No body in the transform: the error's own message.
        ({"token": alt.token(uniq("u"), exp=int(time.time()) - 10)}, 403, "token expired"),
        # No transform for the code: 500.
        ({"token": alt.token(uniq("u"), channels=["nope:x"])}, 500, "Internal Server Error"),
    ]
    for req, status, text in cases:
        async with open_uni(alt, kind, req, via="post") as uni:
            assert isinstance(uni, UniHTTP)
            assert uni.status == status
            assert await uni.resp.text() == text
    # A successful connect streams as usual.
    user, ch = uniq("u"), uniq("c")
    async with open_uni(alt, kind, {"token": alt.token(user, channels=[ch])}, via="post") as uni:
        assert uni.status == 200
        expect_connect(await uni.push(), ping=25)
        alt.api("publish", {"channel": ch, "data": {"a": 1}})
        assert await uni.push() == {"channel": ch, "pub": {"data": {"a": 1}}}


# --------------------------------------------------------------------------------------------
# HTTP-level rules


async def test_http_level_answers(main: ServerHandle, alt: ServerHandle) -> None:
    async with aiohttp.ClientSession() as s:

        async def status(method: str, url: str, **kw: Any) -> int:
            async with s.request(method, url, **kw) as resp:
                await resp.read()
                return resp.status

        ws_url = main.url + prefix(main, "ws")
        sse_url = main.url + prefix(main, "sse")
        stream_url = main.url + prefix(main, "http_stream")
        # Malformed ConnectRequests: 400 before any upgrade or stream.
        assert await status("GET", ws_url + "?cf_connect=%7Bnope") == 400
        assert await status("GET", ws_url + "?cf_connect=%5B1%5D") == 400
        assert await status("GET", sse_url + "?cf_connect=%7Bnope") == 400
        assert await status("POST", sse_url, data=b"{nope") == 400
        assert await status("POST", stream_url, data=b"") == 400
        assert await status("POST", stream_url, data=b'"str"') == 400
        # Methods.
        assert await status("GET", stream_url) == 405
        assert await status("PUT", sse_url) == 405
        async with s.options(stream_url) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
        # Body size limits (alt: 200 bytes) answer 413.
        big = json.dumps({"token": "x" * 300})
        assert await status("POST", alt.url + "/uni/stream", data=big) == 413
        assert await status("POST", alt.url + "/uni/sse", data=big) == 413
        # Handler prefixes are configurable; the defaults are then not routed.
        assert await status("POST", alt.url + "/connection/uni_http_stream", data=b"{}") == 404
        assert await status("GET", alt.url + "/connection/uni_sse") == 404


async def test_ws_malformed_first_message(main: ServerHandle) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(main.url + prefix(main, "ws")) as ws:
            await ws.send_str("{nope")
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (3501, "bad request")


async def test_ws_messages_after_connect_are_ignored(main: ServerHandle) -> None:
    user, ch = uniq("u"), uniq("c")
    async with open_uni(main, "ws", {"token": main.token(user, channels=[ch])}) as uni:
        expect_connect(await uni.push(), ping=1)
        assert isinstance(uni, UniWS)
        await uni.ws.send_str('{"id":1,"publish":{"channel":"x","data":{}}}')
        await uni.ws.send_str("garbage")
        api(main, "publish", {"channel": ch, "data": 7})
        assert await uni.push() == {"channel": ch, "pub": {"data": 7}}


@pytest.mark.parametrize("kind", KINDS)
async def test_peer_close_releases_presence(main: ServerHandle, kind: str) -> None:
    user, ch = uniq("u"), uniq("pres:p")
    async with open_uni(main, kind, {"token": main.token(user, channels=[ch])}) as uni:
        client = expect_connect(await uni.push(), ping=1)["client"]
        presence = api(main, "presence", {"channel": ch})["presence"]
        assert presence == {client: {"user": user, "client": client}}
    # The client went away without a word; the server notices and drops its presence.
    deadline = time.monotonic() + 5
    while api(main, "presence", {"channel": ch})["presence"]:
        assert time.monotonic() < deadline, "presence of a closed connection remains"
        await asyncio.sleep(0.05)


async def test_user_id_header_and_origin(server_factory: Any) -> None:
    server = server_factory(
        {
            "client": {"user_id_http_header": "X-User", "allowed_origins": ["http://ok.example"]},
            **UNI_ON,
        }
    )
    # The request's headers reach the connection: a gateway-authenticated user.
    async with open_uni(server, "sse", {}, headers={"X-User": "alice"}) as uni:
        expect_connect(await uni.push(), ping=25)
        server.api("disconnect", {"user": "alice"})
        assert await uni.push() == {"disconnect": {"code": 3503, "reason": "force disconnect"}}
    # uni_websocket checks Origin against client.allowed_origins.
    async with aiohttp.ClientSession() as s:
        url = server.url + prefix(server, "ws")
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(url, headers={"Origin": "http://evil.example"})
        assert e.value.status == 403
    async with open_uni(
        server, "ws", {}, headers={"Origin": "http://ok.example", "X-User": "bob"}
    ) as uni:
        expect_connect(await uni.push(), ping=25)
        server.api("disconnect", {"user": "bob", "disconnect": {"code": 4000, "reason": "b"}})
        assert await uni.push() == {"disconnect": {"code": 4000, "reason": "b"}}
