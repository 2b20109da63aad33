"""Client protocol v2 over a real WebSocket, raw JSON frames (research §1, §3.4–3.6).

Framing and JSON omission rules, the connection state machine and its close codes,
ping/pong, stale and expiring connections, token refresh, node-wide client limits and
the Origin check. Channel features (subscribe, permissions, history, presence, recovery)
live in test_protocol_channels.py, which reuses the helpers defined here.

Servers are started once per module, in parallel, grouped by the global `client.*`
options a test needs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pytest

from .helpers import RawWS, ServerHandle, WSClosed

# --------------------------------------------------------------------------------------------
# helpers shared with the other protocol test modules

_seq = itertools.count(1)


def uniq(prefix: str = "u") -> str:
    """A name no other test (or earlier run against the same server) uses."""
    return f"{prefix}{next(_seq)}{secrets.token_hex(3)}"


class WS(RawWS):
    """RawWS plus shortcuts for `{method: params}` commands and close-code checks."""

    result: dict[str, Any]  # the connect result once `open_session` connected

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return the whole reply object (id included)."""
        return await self.command({method: dict(params or {})})

    async def ok(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The result of a command that must succeed."""
        rep = await self.call(method, params)
        assert set(rep) == {"id", method}, rep
        return rep[method]

    async def error(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The `error` object of a command that must fail with an error reply."""
        rep = await self.call(method, params)
        assert set(rep) == {"id", "error"}, rep
        return rep["error"]

    async def closed_by(self, frame: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
        """Optionally send a raw text frame, then wait for the server's close frame.

        Asserts that no reply arrives first (bidirectional WebSocket disconnects are
        close frames only, research §1.11).
        """
        if frame is not None:
            await self.send_text(frame)
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = await self.recv_frame(max(deadline - time.monotonic(), 0.01))
            except WSClosed as e:
                assert e.code is not None
                return e.code, e.reason
            # Server pings may interleave; anything else is a reply we did not expect.
            assert data.strip() == "{}", f"unexpected frame before close: {data!r}"


def err(code: int) -> dict[str, Any]:
    """The exact Error object Centrifugo sends for a standard client error code."""
    messages = {
        100: "internal server error",
        102: "unknown channel",
        103: "permission denied",
        104: "method not found",
        105: "already subscribed",
        106: "limit exceeded",
        107: "bad request",
        108: "not available",
        109: "token expired",
        110: "expired",
        112: "unrecoverable position",
    }
    out: dict[str, Any] = {"code": code, "message": messages[code]}
    if code == 100:
        out["temporary"] = True
    return out


CLOSE_REASONS = {
    3001: "shutdown",
    3005: "connection expired",
    3006: "subscription expired",
    3008: "slow",
    3010: "insufficient state",
    3012: "no pong",
    3500: "invalid token",
    3501: "bad request",
    3502: "stale",
    3504: "connection limit",
    3507: "permission denied",
    3508: "not available",
}


def assert_close(got: tuple[int, str], code: int) -> None:
    assert got == (code, CLOSE_REASONS[code]), got


@asynccontextmanager
async def open_ws(server: ServerHandle, **kwargs: Any) -> AsyncIterator[WS]:
    async with WS.connect(server.ws_url, **kwargs) as ws:
        assert isinstance(ws, WS)
        yield ws


@asynccontextmanager
async def open_session(
    server: ServerHandle,
    user: str | None = None,
    *,
    token: str | None = None,
    connect: Mapping[str, Any] | None = None,
    **claims: Any,
) -> AsyncIterator[WS]:
    """A connected WS: `token` as given, else a token for `user` (default: a fresh user)."""
    async with open_ws(server) as ws:
        if token is None:
            token = server.token(uniq() if user is None else user, **claims)
        req = dict(connect or {})
        if token:
            req["token"] = token
        rep = await ws.call("connect", req)
        assert "connect" in rep, rep
        ws.result = rep["connect"]
        yield ws


def start_parallel(
    server_factory: Callable[..., ServerHandle], *configs: Mapping[str, Any]
) -> list[ServerHandle]:
    """Start several servers at once (each start waits ~1.5 s for readiness)."""
    with ThreadPoolExecutor(len(configs)) as pool:
        return list(pool.map(server_factory, configs))


def stop_parallel(handles: list[ServerHandle]) -> None:
    """Stop servers concurrently; the factory's own later stop() is then a no-op."""
    with ThreadPoolExecutor(len(handles)) as pool:
        list(pool.map(lambda h: h.stop(), handles))


def is_epoch(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 0


# --------------------------------------------------------------------------------------------
# servers of this module

HISTORY = {"history_size": 10, "history_ttl": "60s"}

MAIN: dict[str, Any] = {
    "client": {
        "allow_anonymous_connect_without_token": False,
        "expired_close_delay": "200ms",
        "channel_limit": 4,
        "user_connection_limit": 2,
        "queue_max_size": 8192,
        "allowed_origins": ["https://good.example", "http://*.allowed.test"],
    },
    "websocket": {"message_size_limit": 8192},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_subscribe_for_anonymous": True,
            "allow_publish_for_client": True,
            "presence": True,
            "allow_presence_for_client": True,
            "allow_history_for_client": True,
            **HISTORY,
        },
        "namespaces": [{"name": "plain", "allow_subscribe_for_client": True}],
    },
}

# Fast heartbeats and stale detection; anonymous connect without a token (but no
# anonymous tokens); personal channels.
PING: dict[str, Any] = {
    "client": {
        "ping_interval": "1s",
        "pong_timeout": "500ms",
        "stale_close_delay": "1s",
        "allow_anonymous_connect_without_token": True,
        "disallow_anonymous_connection_tokens": True,
        "subscribe_to_user_personal_channel": {"enabled": True},
    },
    "channel": {"without_namespace": {"presence": True}},
}

INSECURE: dict[str, Any] = {
    "client": {"insecure": True, "connect_include_server_time": True},
    "channel": {"namespaces": [{"name": "ns", "presence": True, **HISTORY}]},
}


@pytest.fixture(scope="module")
def servers(server_factory: Any) -> Iterator[dict[str, ServerHandle]]:
    handles = start_parallel(server_factory, MAIN, PING, INSECURE)
    yield dict(zip(("main", "ping", "insecure"), handles, strict=True))
    stop_parallel(handles)


@pytest.fixture(scope="module")
def main(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["main"]


@pytest.fixture(scope="module")
def ping_srv(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["ping"]


@pytest.fixture(scope="module")
def insecure(servers: dict[str, ServerHandle]) -> ServerHandle:
    return servers["insecure"]


# --------------------------------------------------------------------------------------------
# framing and JSON shapes (§1.2, §1.3, §1.14)


async def test_connect_result_shape(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        await ws.send({"id": 1, "connect": {"token": main.token(uniq()), "name": "js"}})
        rep = await ws.recv()
    assert set(rep) == {"id", "connect"} and rep["id"] == 1
    res = rep["connect"]
    # Default heartbeat: ping every 25 s, pong expected; nothing else for a plain token.
    assert set(res) == {"client", "version", "ping", "pong"}, res
    assert (res["ping"], res["pong"]) == (25, True)
    assert res["version"].endswith(" OSS") and res["version"].startswith("6.")
    assert len(res["client"]) == 36 and res["client"].count("-") == 4


async def test_several_commands_in_one_frame(main: ServerHandle) -> None:
    ch = uniq("frame")
    user = uniq()
    async with open_ws(main) as ws:
        await ws.send(
            {"id": 1, "connect": {"token": main.token(user)}},
            {"id": 2, "subscribe": {"channel": ch}},
            {"id": 3, "publish": {"channel": ch, "data": {"n": 1}}},
            {"id": 4, "presence_stats": {"channel": ch}},
            {"id": 5, "unsubscribe": {"channel": ch}},
        )
        got: list[dict[str, Any]] = []
        while len([r for r in got if "id" in r]) < 5:
            frame = await ws.recv_frame()
            got += [json.loads(line) for line in frame.split("\n") if line]
    replies = [r for r in got if "id" in r]
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5]
    me = replies[0]["connect"]["client"]
    assert replies[1:] == [
        {"id": 2, "subscribe": {}},
        {"id": 3, "publish": {}},
        {"id": 4, "presence_stats": {"num_clients": 1, "num_users": 1}},
        {"id": 5, "unsubscribe": {}},
    ]
    pushes = [r["push"] for r in got if "push" in r]
    info = {"user": user, "client": me}
    assert pushes == [{"channel": ch, "pub": {"data": {"n": 1}, "info": info, "offset": 1}}]


async def test_replies_batched_in_one_frame(main: ServerHandle) -> None:
    # Commands answered without engine I/O are all replied within one event-loop turn, so the
    # replies leave newline-joined in one frame (with an engine round trip in between, the
    # split into frames depends on timing; clients must accept both).
    async with open_session(main) as ws:
        await ws.send(
            {"id": 10, "ping": {}},
            {"id": 11, "subscribe": {"channel": "nope:x"}},
            {"id": 12, "rpc": {"method": "m"}},
        )
        frame = await ws.recv_frame()
    assert frame.split("\n") == [
        '{"id":10,"error":{"code":108,"message":"not available"}}',
        '{"id":11,"error":{"code":102,"message":"unknown channel"}}',
        '{"id":12,"error":{"code":108,"message":"not available"}}',
    ]


async def test_flood_of_frames_is_answered_in_order(main: ServerHandle) -> None:
    # 100 frames of 2 KB sent at once outrun aiohttp's WebSocket queue (64 KiB), so it
    # pauses and resumes reading the socket: the upgraded connection's flow control must
    # work without the HTTP parser the handler releases after the upgrade. All replies
    # together (~6 KB) stay under this server's queue_max_size (8192), so however the
    # socket buffers fill, this client is never "slow" (3008).
    n = 100
    pad = "x" * 2000
    async with open_session(main) as ws:
        first = ws.next_id()
        ids = list(range(first, first + n))

        async def flood() -> None:
            for i in ids:
                await ws.send_text(json.dumps({"id": i, "ping": {}, "pad": pad}))

        async def collect() -> list[int]:
            got: list[int] = []
            while len(got) < n:
                frame = await ws.recv_frame()
                got += [json.loads(line)["id"] for line in frame.split("\n") if line]
            return got

        _, got = await asyncio.gather(flood(), collect())
    assert got == ids


async def test_api_batch_leaves_in_frames_of_at_most_16(main: ServerHandle) -> None:
    # centrifuge's writer puts at most defaultMaxMessagesInFrame (16) queued messages in a
    # frame: 40 publications queued at once leave as 16 + 16 + 8, in order, none lost
    # (one frame of 40 before the cap, which Centrifugo never sends).
    ch = uniq("plain:batch")
    async with open_session(main) as ws:
        assert await ws.ok("subscribe", {"channel": ch}) == {}
        commands = [{"publish": {"channel": ch, "data": {"n": i}}} for i in range(40)]
        await main.api_async("batch", {"commands": commands})
        sizes: list[int] = []
        got: list[int] = []
        while len(got) < 40:
            lines = (await ws.recv_frame()).split("\n")
            sizes.append(len(lines))
            got += [json.loads(line)["push"]["pub"]["data"]["n"] for line in lines]
    assert got == list(range(40))
    # The whole batch is queued in one loop turn on either engine (memory: publishes run
    # without a suspension; Redis: one publish_many round trip, whose 40 PUB/SUB messages
    # Redis writes to the node's connection in one write), so the cap is what splits it.
    assert max(sizes) == 16, sizes


async def test_json_omission_rules(main: ServerHandle) -> None:
    ch = uniq("shape")
    anon = main.token("")  # anonymous connection token: user ""
    ws_user = uniq()
    async with open_session(main, ws_user) as ws, open_session(main, token=anon) as anon_ws:
        rep = await ws.command({"id": 100, "publish": {"channel": ch, "data": {"a": 1}}})
        assert rep == {"id": 100, "publish": {}}
        # Empty results are `{}`, never omitted.
        assert await ws.ok("subscribe", {"channel": ch}) == {}
        assert await ws.ok("unsubscribe", {"channel": ch}) == {}
        # presence / presence_stats / history always carry their fields.
        empty = uniq("empty")
        assert await ws.ok("presence", {"channel": empty}) == {"presence": {}}
        assert await ws.ok("presence_stats", {"channel": empty}) == {
            "num_clients": 0,
            "num_users": 0,
        }
        hist = await ws.ok("history", {"channel": empty})
        assert set(hist) == {"publications", "epoch", "offset"}, hist
        assert hist["publications"] == [] and hist["offset"] == 0 and is_epoch(hist["epoch"])
        # ClientInfo always has user and client, even for an anonymous user.
        assert await anon_ws.ok("subscribe", {"channel": ch}) == {}
        pres = await ws.ok("presence", {"channel": ch})
        cid = anon_ws.result["client"]
        assert pres == {"presence": {cid: {"user": "", "client": cid}}}
        # A client publication carries info; offset because the channel keeps history.
        await ws.ok("publish", {"channel": ch, "data": {"b": 2}})
        push = await anon_ws.push()
        info = {"user": ws_user, "client": ws.result["client"]}
        assert push == {"channel": ch, "pub": {"data": {"b": 2}, "info": info, "offset": 2}}
        # A server API publication has no info.
        main.api("publish", {"channel": ch, "data": "text"})
        assert await anon_ws.push() == {"channel": ch, "pub": {"data": "text", "offset": 3}}


async def test_publish_reply_is_empty_object(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        await ws.send({"id": 7, "publish": {"channel": uniq(), "data": [1, "x", None]}})
        frame = await ws.recv_frame()
    assert frame == '{"id":7,"publish":{}}'


# --------------------------------------------------------------------------------------------
# connection state machine (§1.3, §1.7, §3.4)


async def test_command_before_connect_closes_3501(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        got = await ws.closed_by('{"id":1,"presence_stats":{"channel":"x"}}')
    assert_close(got, 3501)


async def test_send_before_connect_closes_3501(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        got = await ws.closed_by('{"send":{"data":{"x":1}}}')
    assert_close(got, 3501)


async def test_second_connect_closes_3501(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        got = await ws.closed_by(
            '{"id":2,"connect":{"token":"%s"}}' % main.token(uniq())  # noqa: UP031
        )
    assert_close(got, 3501)


async def test_connect_without_credentials_closes_3501(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        got = await ws.closed_by('{"id":1,"connect":{}}')
    assert_close(got, 3501)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        jwt.encode({"sub": "x"}, "some-other-secret-" + "k" * 32, algorithm="HS256"),
        jwt.encode({"sub": "x"}, key="", algorithm="none"),
    ],
    ids=["garbage", "three-parts", "wrong-key", "alg-none"],
)
async def test_invalid_token_closes_3500(main: ServerHandle, token: str) -> None:
    async with open_ws(main) as ws:
        await ws.send({"id": 1, "connect": {"token": token}})
        got = await ws.closed_by()
    assert_close(got, 3500)


async def test_connect_token_with_channel_claim_is_invalid(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        await ws.send({"id": 1, "connect": {"token": main.token(uniq(), channel="x")}})
        assert_close(await ws.closed_by(), 3500)


async def test_expired_token_error_then_unusable(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        rep = await ws.call("connect", {"token": main.token(uniq(), exp=int(time.time()) - 5)})
        assert rep == {"id": 1, "error": err(109)}
        # After a connect error the connection only waits to be closed.
        got = await ws.closed_by('{"id":2,"presence_stats":{"channel":"x"}}')
    assert_close(got, 3501)


async def test_connect_retry_after_error_closes_3501(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        rep = await ws.call("connect", {"token": main.token(uniq(), exp=int(time.time()) - 5)})
        assert rep["error"]["code"] == 109
        await ws.send({"id": 2, "connect": {"token": main.token(uniq())}})
        assert_close(await ws.closed_by(), 3501)


async def test_nbf_in_future_is_token_expired(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        rep = await ws.call("connect", {"token": main.token(uniq(), nbf=int(time.time()) + 60)})
    assert rep == {"id": 1, "error": err(109)}


async def test_long_client_name_and_version_accepted(main: ServerHandle) -> None:
    # Neither the protocol nor centrifuge limits these lengths; they only label metrics.
    async with open_ws(main) as ws:
        rep = await ws.call(
            "connect",
            {"token": main.token(uniq()), "name": "my-custom-sdk-name-x", "version": "1." * 40},
        )
    assert "connect" in rep, rep


async def test_connect_expire_at_in_past_is_error_110(main: ServerHandle) -> None:
    # The token itself is valid (exp in the future); only the connection expiry is past.
    now = int(time.time())
    token = main.token(uniq(), exp=now + 60, expire_at=now - 10)
    async with open_ws(main) as ws:
        rep = await ws.call("connect", {"token": token})
    assert rep == {"id": 1, "error": err(110)}


async def test_expire_at_zero_means_no_expiry(main: ServerHandle) -> None:
    now = int(time.time())
    async with open_session(main, exp=now + 60, expire_at=0) as ws:
        assert "expires" not in ws.result and "ttl" not in ws.result


@pytest.mark.parametrize(
    "frame",
    [
        '{"connect":{}}',
        '{"id":0,"connect":{}}',
    ],
    ids=["no-id", "id-0"],
)
async def test_connect_without_id_closes_3501(main: ServerHandle, frame: str) -> None:
    async with open_ws(main) as ws:
        assert_close(await ws.closed_by(frame), 3501)


async def test_command_with_id_0_after_connect_closes_3501(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        assert_close(await ws.closed_by('{"id":0,"presence_stats":{"channel":"x"}}'), 3501)


async def test_unsolicited_pong_closes_3501(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        # ping_interval is 25 s here: no ping is outstanding, so `{}` is a protocol error.
        assert_close(await ws.closed_by("{}"), 3501)


async def test_unknown_method_closes_3501(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        assert_close(await ws.closed_by('{"id":5,"frobnicate":{}}'), 3501)


async def test_send_closes_3508(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        assert_close(await ws.closed_by('{"send":{"data":{"x":1}}}'), 3508)


async def test_ping_command_is_error_108(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        assert await ws.error("ping") == err(108)
        # The connection stays usable after an error reply.
        assert await ws.ok("presence_stats", {"channel": uniq()}) == {
            "num_clients": 0,
            "num_users": 0,
        }


async def test_rpc_without_handler_is_error_108(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        assert await ws.error("rpc", {"method": "anything", "data": {"x": 1}}) == err(108)
        assert await ws.error("rpc", {}) == err(108)


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1,2,3]",
        '"just a string"',
        '{"id":"1","presence_stats":{"channel":"x"}}',
        '{"id":-3,"presence_stats":{"channel":"x"}}',
        '{"id":1,"presence_stats":"x"}',
        '{"id":1,"presence_stats":{"channel":5}}',
        '{"id":1,"history":{"channel":"x","limit":"ten"}}',
        '{"id":1,"subscribe":{"channel":"x","recover":"yes"}}',
        '{"id":1,"history":{"channel":"x","since":[1]}}',
    ],
    ids=[
        "invalid-json",
        "array",
        "string",
        "id-string",
        "id-negative",
        "params-not-object",
        "channel-number",
        "limit-string",
        "bool-string",
        "since-array",
    ],
)
async def test_malformed_frames_close_3501(main: ServerHandle, frame: str) -> None:
    async with open_session(main) as ws:
        assert_close(await ws.closed_by(frame), 3501)


async def test_malformed_connect_closes_3501(main: ServerHandle) -> None:
    async with open_ws(main) as ws:
        assert_close(await ws.closed_by('{"id":1,"connect":{"token":42}}'), 3501)


async def test_binary_garbage_closes_3501(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        await ws.ws.send_bytes(b"\x00\xff\xfe garbage \x01")
        assert_close(await ws.closed_by(), 3501)


async def test_empty_channel_is_3501(main: ServerHandle) -> None:
    for method in ("subscribe", "unsubscribe", "presence", "presence_stats", "history", "publish"):
        async with open_session(main) as ws:
            params: dict[str, Any] = {"channel": ""}
            if method == "publish":
                params["data"] = {"x": 1}
            await ws.send({"id": 9, method: params})
            assert_close(await ws.closed_by(), 3501)


async def test_oversize_frame_closes_only_that_connection(main: ServerHandle) -> None:
    ch = uniq("big")
    async with open_session(main) as other, open_session(main) as ws:
        assert await other.ok("subscribe", {"channel": ch}) == {}
        big = '{"id":2,"publish":{"channel":"%s","data":"%s"}}' % (ch, "x" * 9000)  # noqa: UP031
        code, _ = await ws.closed_by(big)
        # Observed and expected: 1009 "message too big", like gorilla/websocket's read limit.
        assert code == 1009
        # The other connection is untouched and nothing was published.
        assert await other.ok("presence_stats", {"channel": ch}) == {
            "num_clients": 1,
            "num_users": 1,
        }
        hist = await other.ok("history", {"channel": ch})
        assert hist["offset"] == 0
    # New connections are still accepted.
    async with open_session(main) as ws2:
        assert ws2.result["client"]


def sized_publish(channel: str, size: int) -> str:
    """A publish command frame of exactly `size` bytes."""
    body = '{"id":2,"publish":{"channel":"%s","data":""}}' % channel  # noqa: UP031
    text = body.replace('"data":""', '"data":"' + "y" * (size - len(body)) + '"')
    assert len(text) == size
    return text


async def test_frame_just_under_limit_is_accepted(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        await ws.send_text(sized_publish(uniq("edge"), 8191))
        assert await ws.reply(2) == {"id": 2, "publish": {}}


async def test_frame_of_exactly_the_limit_is_accepted(main: ServerHandle) -> None:
    # gorilla/websocket (Centrifugo) rejects only readLength > readLimit.
    async with open_session(main) as ws:
        await ws.send_text(sized_publish(uniq("edge"), 8192))
        assert await ws.reply(2) == {"id": 2, "publish": {}}


# --------------------------------------------------------------------------------------------
# ping / pong and stale connections (§1.8, §1.7) — the PING server


async def test_anonymous_connect_without_token(ping_srv: ServerHandle) -> None:
    async with open_ws(ping_srv) as ws:
        rep = await ws.call("connect", {})
    res = rep["connect"]
    assert set(res) == {"client", "version", "ping", "pong"}, res
    assert (res["ping"], res["pong"]) == (1, True)


async def test_anonymous_token_disallowed_closes_3507(ping_srv: ServerHandle) -> None:
    async with open_ws(ping_srv) as ws:
        await ws.send({"id": 1, "connect": {"token": ping_srv.token("")}})
        assert_close(await ws.closed_by(), 3507)


async def test_stale_connection_closes_3502(ping_srv: ServerHandle) -> None:
    async with open_ws(ping_srv) as ws:
        started = time.monotonic()
        got = await ws.closed_by(timeout=4)
    assert_close(got, 3502)
    assert time.monotonic() - started >= 0.8


async def test_no_pong_closes_3012(ping_srv: ServerHandle) -> None:
    async with open_ws(ping_srv) as ws:
        await ws.call("connect", {})
        # The first ping comes within ping_interval; then pong_timeout passes unanswered.
        assert (await ws.recv_frame(timeout=2)) == "{}"
        got = await ws.closed_by(timeout=2)
    assert_close(got, 3012)


async def test_answering_pings_keeps_connection(ping_srv: ServerHandle) -> None:
    async with open_ws(ping_srv) as ws:
        await ws.call("connect", {})
        pings = 0
        deadline = time.monotonic() + 2.6
        while time.monotonic() < deadline:
            try:
                frame = await ws.recv_frame(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            assert frame == "{}"
            pings += 1
            await ws.send_text("{}")
        assert pings >= 2
        # Still connected well past ping_interval + pong_timeout.
        assert await ws.error("ping") == err(108)


async def test_personal_channel_subscription(ping_srv: ServerHandle) -> None:
    user = uniq("p")
    async with open_session(ping_srv, user) as ws:
        personal = "#" + user
        assert ws.result["subs"] == {personal: {}}
        await ping_srv.api_async("publish", {"channel": personal, "data": {"hi": user}})
        assert await ws.push() == {"channel": personal, "pub": {"data": {"hi": user}}}


# --------------------------------------------------------------------------------------------
# insecure mode (§3.6)


async def test_insecure_allows_everything_but_private(insecure: ServerHandle) -> None:
    ch = "ns:" + uniq()
    async with open_ws(insecure) as ws:
        before = int(time.time() * 1000)
        res = (await ws.call("connect", {}))["connect"]
        # connect_include_server_time: unix milliseconds.
        assert set(res) == {"client", "version", "ping", "pong", "time"}, res
        assert before - 1000 <= res["time"] <= int(time.time() * 1000) + 1000
        assert await ws.ok("subscribe", {"channel": ch}) == {}
        assert await ws.ok("publish", {"channel": ch, "data": {"x": 1}}) == {}
        cid = res["client"]
        assert await ws.ok("presence", {"channel": ch}) == {
            "presence": {cid: {"user": "", "client": cid}}
        }
        hist = await ws.ok("history", {"channel": ch, "limit": 10})
        assert [p["data"] for p in hist["publications"]] == [{"x": 1}]
        assert await ws.error("subscribe", {"channel": "$ns:" + uniq()}) == err(103)


async def test_insecure_ignores_token_expiry(insecure: ServerHandle) -> None:
    async with open_session(insecure, uniq(), exp=int(time.time()) + 60) as ws:
        assert "expires" not in ws.result and "ttl" not in ws.result


# --------------------------------------------------------------------------------------------
# connection expiry and refresh (§3.5)


async def test_connection_expiry_and_refresh(main: ServerHandle) -> None:
    exp = int(time.time()) + 2
    user = uniq("r")
    async with (
        open_session(main, exp=exp) as lazy,
        open_session(main, user, exp=exp) as diligent,
    ):
        for ws in (lazy, diligent):
            assert ws.result["expires"] is True and 1 <= ws.result["ttl"] <= 2, ws.result
        res = await diligent.ok("refresh", {"token": main.token(user, ttl=60)})
        assert res["expires"] is True and 58 <= res["ttl"] <= 60, res
        got = await lazy.closed_by(timeout=exp - time.time() + 3)
        assert_close(got, 3005)
        assert time.time() >= exp - 0.05
        # The refreshed one outlives the old expiry plus expired_close_delay.
        await asyncio.sleep(max(exp + 0.5 - time.time(), 0))
        assert (await diligent.call("presence_stats", {"channel": uniq()}))["id"]


async def test_refresh_with_expired_token_closes_3005(main: ServerHandle) -> None:
    user = uniq()
    async with open_session(main, user, ttl=60) as ws:
        await ws.send({"id": 5, "refresh": {"token": main.token(user, exp=int(time.time()) - 5)}})
        assert_close(await ws.closed_by(), 3005)


@pytest.mark.parametrize("kind", ["garbage", "wrong-key", "other-user"])
async def test_refresh_with_invalid_token_closes_3500(main: ServerHandle, kind: str) -> None:
    user = uniq()
    token = {
        "garbage": "x.y.z",
        "wrong-key": jwt.encode({"sub": user}, "nope-" + secrets.token_hex(16), algorithm="HS256"),
        "other-user": main.token(uniq(), ttl=60),
    }[kind]
    async with open_session(main, user, ttl=60) as ws:
        await ws.send({"id": 5, "refresh": {"token": token}})
        assert_close(await ws.closed_by(), 3500)


async def test_refresh_without_token_closes_3501(main: ServerHandle) -> None:
    async with open_session(main, ttl=60) as ws:
        assert_close(await ws.closed_by('{"id":5,"refresh":{}}'), 3501)


async def test_refresh_on_non_expiring_connection(main: ServerHandle) -> None:
    user = uniq()
    async with open_session(main, user) as ws:
        res = await ws.ok("refresh", {"token": main.token(user, ttl=60)})
    assert res["expires"] is True and 58 <= res["ttl"] <= 60


async def test_refresh_expire_at_in_past_is_error_110(main: ServerHandle) -> None:
    user = uniq()
    now = int(time.time())
    async with open_session(main, user, ttl=60) as ws:
        token = main.token(user, exp=now + 60, expire_at=now - 10)
        assert await ws.error("refresh", {"token": token}) == err(110)


async def test_refresh_with_changed_token_channels_closes_3010(main: ServerHandle) -> None:
    user = uniq()
    a, b = uniq("tc"), uniq("tc")
    for new_channels in ([a, b, uniq("tc")], [a]):
        async with open_session(main, user, ttl=60, channels=[a, b]) as ws:
            assert set(ws.result["subs"]) == {a, b}
            token = main.token(user, ttl=60, channels=new_channels)
            await ws.send({"id": 5, "refresh": {"token": token}})
            assert_close(await ws.closed_by(), 3010)


async def test_refresh_with_same_token_channels(main: ServerHandle) -> None:
    user = uniq()
    a, b = uniq("tc"), uniq("tc")
    async with open_session(main, user, ttl=60, channels=[a, b]) as ws:
        res = await ws.ok("refresh", {"token": main.token(user, ttl=60, channels=[a, b])})
        assert res["expires"] is True


async def test_refresh_with_reordered_token_channels(main: ServerHandle) -> None:
    # Centrifugo compares the sets (tokenChannelsChanged), not the order in the claim.
    user = uniq()
    a, b = uniq("tc"), uniq("tc")
    async with open_session(main, user, ttl=60, channels=[a, b]) as ws:
        res = await ws.ok("refresh", {"token": main.token(user, ttl=60, channels=[b, a])})
        assert res["expires"] is True


# --------------------------------------------------------------------------------------------
# limits (§1.4, §1.7, §4.5)


async def test_channel_limit_is_error_106(main: ServerHandle) -> None:
    async with open_session(main) as ws:
        channels = [uniq(f"lim{i}") for i in range(4)]
        for ch in channels:
            assert await ws.ok("subscribe", {"channel": ch}) == {}
        assert await ws.error("subscribe", {"channel": uniq("lim")}) == err(106)
        # Unsubscribing frees a slot.
        assert await ws.ok("unsubscribe", {"channel": channels[0]}) == {}
        assert await ws.ok("subscribe", {"channel": uniq("lim")}) == {}


async def test_user_connection_limit_closes_3504(main: ServerHandle) -> None:
    user = uniq("multi")
    async with open_session(main, user) as a, open_session(main, user) as b:
        assert a.result["client"] != b.result["client"]
        async with open_ws(main) as c:
            await c.send({"id": 1, "connect": {"token": main.token(user)}})
            assert_close(await c.closed_by(), 3504)
        # Anonymous connections are not limited per user.
        async with (
            open_session(main, token=main.token("")),
            open_session(main, token=main.token("")),
            open_session(main, token=main.token("")) as third,
        ):
            assert third.result["client"]
    async with open_session(main, user) as again:  # slots free once the first two left
        assert again.result["client"]


async def test_slow_client_closes_3008(main: ServerHandle) -> None:
    ch = uniq("slow")
    async with open_session(main) as ws, open_session(main) as other:
        assert await ws.ok("subscribe", {"channel": ch}) == {}
        # One publication bigger than queue_max_size (8192) cannot fit in the queue.
        await main.api_async("publish", {"channel": ch, "data": "z" * 10000})
        assert_close(await ws.closed_by(), 3008)
        assert await other.ok("presence_stats", {"channel": ch}) == {
            "num_clients": 0,
            "num_users": 0,
        }


# --------------------------------------------------------------------------------------------
# Origin check (§1.1)


@pytest.mark.parametrize(
    "origin", ["https://good.example", "HTTPS://GOOD.EXAMPLE", "http://a.allowed.test"]
)
async def test_allowed_origin_passes(main: ServerHandle, origin: str) -> None:
    async with WS.connect(main.ws_url, headers={"Origin": origin}) as ws:
        rep = await ws.call("connect", {"token": main.token(uniq())})
    assert "connect" in rep


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://good.example", "https://good.example.evil"]
)
async def test_disallowed_origin_is_403(main: ServerHandle, origin: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        async with WS.connect(main.ws_url, headers={"Origin": origin}):
            pass
    assert exc.value.status == 403


async def test_any_origin_rejected_when_allowed_origins_empty(ping_srv: ServerHandle) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        async with WS.connect(ping_srv.ws_url, headers={"Origin": "http://localhost"}):
            pass
    assert exc.value.status == 403
    async with open_ws(ping_srv) as ws:  # no Origin header at all
        assert "connect" in await ws.call("connect", {})


# --------------------------------------------------------------------------------------------
# shutdown (§1.7)


async def test_node_shutdown_closes_3001(fresh_server_factory: Any) -> None:
    server = fresh_server_factory({"client": {"allow_anonymous_connect_without_token": True}})
    async with open_ws(server) as ws:
        assert "connect" in await ws.call("connect", {})
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))
        got = await ws.closed_by(timeout=10)
        await stopping
    assert_close(got, 3001)
