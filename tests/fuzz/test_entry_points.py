"""Generated bad bodies at every JSON entry point of a real server process.

One server (`python -m app`, memory engine, tests/e2e/helpers.py) with every JSON entry
point enabled, its proxies pointed at a tiny aiohttp backend in this process, and the
long-lived bystander of test_e2e_fuzz.py (a centrifuge-python client subscribed to a
channel). Hypothesis feeds each entry point bodies built for it: objects shaped like the
entry point's protobuf message whose fields get hostile raw JSON (nesting up to 10^5
levels, invalid UTF-8, lone-surrogate escapes, integers past +-2^63 and +-2^64, numbers Go
cannot hold, wrong types, duplicated keys), other JSON values, and random bytes.

Entry points: `POST /api/<method>` (batch included), the legacy `POST /api` command
stream, `POST /emulation` (with an unknown and with a live session), `uni_http_stream`,
`uni_sse` (GET and POST), `uni_websocket` connect requests, `http_stream` / `sse` connect
commands, JWT claims (connection and subscription tokens, validly signed), and the replies
of the connect, subscribe, publish and rpc proxies (refresh and sub_refresh replies go
through the same decoder and parser checks but are not driven here yet).

After each example:
- the answer is a documented one: HTTP 400 (or the entry point's other documented
  statuses), a reply whose error is never 100 unless a proxy reply was unusable (then
  100 is Centrifugo's answer), a disconnect code of Centrifugo's or a WebSocket close code;
- a refused body left exactly one log line; nothing left a traceback;
- the bystander still receives an API publication.

Example counts are fixed (derandomized, tests/fuzz/profiles.py); FUZZ_EXAMPLES runs longer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor  # type: ignore[import-untyped]
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.api.gen import api_pb2 as api_pb
from app.api.request import REQUEST_MESSAGES
from app.protocol.gen import client_pb2 as client_pb
from app.proxy.gen import proxy_pb2 as proxy_pb

from . import strategies as S
from .outcome import WS_CLOSE_CODES
from .profiles import LONG, examples
from .test_e2e_fuzz import Rig

pytestmark = pytest.mark.timeout(0 if LONG else 300)

ANSWER_TIMEOUT = 10.0
BYSTANDER = "bystander-user-0f3a"
PROXY_NS = "px"

# ----------------------------------------------------------------------------- bodies

BIG_NUMBERS = [
    str(2**63),
    str(2**63 - 1),
    str(-(2**63) - 1),
    str(2**64),
    str(2**64 - 1),
    str(-(2**64)),
    str(2**32),
    "1" + "0" * 30,
    "-" + "9" * 400,
    "1e400",
    "-1e400",
    "1e19",
    "1.5",
    "-0",
    "1E2",
]
SURROGATES = [r'"\ud800"', r'"\udfff"', r'"a\ud83d"', r'"\ude00\ud83d"', r'"\uDBFFx"']
BAD_UTF8 = [b'"\xff"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"a\x80b"']


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    """A value nested far past every decoder's recursion guard (up to 10^5 levels)."""
    d = draw(st.one_of(st.sampled_from([1_000, 10_000, 100_000]), st.integers(500, 3_000)))
    if draw(st.booleans()):
        return b"[" * d + b"]" * d
    return b'{"a":' * d + b"1" + b"}" * d


def hostile_scalars() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(BIG_NUMBERS).map(str.encode),
        st.sampled_from(SURROGATES).map(str.encode),
        st.sampled_from(BAD_UTF8),
        S.json_values.map(_dumps),
    )


def hostile(field: FieldDescriptor | None, depth: int) -> st.SearchStrategy[bytes]:
    """Raw JSON (or not quite) for one field: hostile scalars, deep nesting, and for
    message fields an object of that message with hostile fields of its own."""
    options = [hostile_scalars(), deep()]
    mt = field.message_type if field is not None else None
    if mt is not None and depth < 3:
        inner = obj(mt, depth + 1)
        if mt.GetOptions().map_entry:
            inner = st.dictionaries(S.strings, st.just(0), max_size=1).map(_dumps)
            value = mt.fields_by_name["value"]
            if value.message_type is not None:
                inner = obj(value.message_type, depth + 1).map(lambda o: b'{"k":' + o + b"}")
        repeated = field is not None and field.is_repeated
        options.append(inner.map(lambda o: b"[" + o + b"]") if repeated else inner)
    return st.one_of(*options)


@st.composite
def obj(draw: st.DrawFn, desc: Descriptor, depth: int = 0) -> bytes:
    """A JSON object of `desc`: a well-typed base (S.shaped) with some members replaced
    or duplicated by hostile raw values, written after it (a duplicated key: last wins)."""
    base = draw(S.shaped(desc))
    members = [_dumps(k) + b":" + _dumps(v) for k, v in base.items()]
    names = [f.name for f in desc.fields]
    for _ in range(draw(st.integers(0 if depth else 1, 3))):
        name = draw(st.one_of(st.sampled_from(names), S.strings)) if names else draw(S.strings)
        field = desc.fields_by_name.get(name)
        members.append(_dumps(name) + b":" + draw(hostile(field, depth)))
    return b"{" + b",".join(members) + b"}"


def body(desc: Descriptor) -> st.SearchStrategy[bytes]:
    """What a stranger may send where a `desc` message is expected."""
    return st.one_of(
        obj(desc),
        obj(desc),
        obj(desc),
        deep(),
        S.json_values.map(_dumps),
        st.binary(max_size=200),
    )


# Bodies no proxy reply can be: each of these fails Go's json.Unmarshal into the reply.
def unusable_reply(desc: Descriptor) -> st.SearchStrategy[bytes]:
    result = desc.fields_by_name["result"].message_type
    ints = [
        f.name
        for f in result.fields
        if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64)
    ]
    strings = [f.name for f in result.fields if f.type == FieldDescriptor.TYPE_STRING]

    def in_result(name: str, raw: bytes) -> bytes:
        return b'{"result":{"' + name.encode() + b'":' + raw + b"}}"

    options = [
        deep().map(lambda d: b'{"result":{"data":' + d + b"}}"),
        deep(),
        st.sampled_from(BAD_UTF8).map(lambda b: b'{"result":{"info":' + b + b"}}"),
        st.binary(min_size=1, max_size=100).filter(lambda b: not _is_json(b)),
        st.sampled_from([b"[]", b"1", b'"x"', b"true", b'{"result":[]}', b'{"result":1}']),
        st.tuples(st.sampled_from(["code"]), st.sampled_from([str(2**32), "-1", '"1"'])).map(
            lambda nv: b'{"error":{"' + nv[0].encode() + b'":' + nv[1].encode() + b"}}"
        ),
    ]
    if ints:
        too_big = [str(2**64), str(-(2**63) - 1), "1e400", "1.5", '"1"', "[]"]
        options.append(
            st.tuples(st.sampled_from(ints), st.sampled_from(too_big)).map(
                lambda nv: in_result(nv[0], nv[1].encode())
            )
        )
    if strings:
        options.append(
            st.tuples(st.sampled_from(strings), st.sampled_from(SURROGATES + ["1", "{}"])).map(
                lambda nv: in_result(nv[0], nv[1].encode())
            )
        )
    return st.one_of(*options)


def _is_json(b: bytes) -> bool:
    try:
        orjson.loads(b)
    except orjson.JSONDecodeError:
        return False
    return True


# ------------------------------------------------------------------- proxy backend


class Backend:
    """The proxies' backend: each kind answers its next scripted body (raw bytes), else
    its default; every request's JSON body is queued for the test to await."""

    DEFAULTS = {
        "connect": b'{"result":{}}',
        "refresh": b'{"result":{"expired":true}}',
        "subscribe": b'{"result":{}}',
        "publish": b'{"result":{}}',
        "rpc": b'{"result":{}}',
        "sub_refresh": b'{"result":{"expired":true}}',
    }

    def __init__(self) -> None:
        self.script: dict[str, list[bytes]] = {k: [] for k in self.DEFAULTS}
        self.seen: dict[str, asyncio.Queue[dict[str, Any]]] = {
            k: asyncio.Queue() for k in self.DEFAULTS
        }
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{kind}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}"

    def reset(self) -> None:
        for kind in self.DEFAULTS:
            self.script[kind].clear()
            while not self.seen[kind].empty():
                self.seen[kind].get_nowait()

    async def _handle(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        self.seen[kind].put_nowait(orjson.loads(await request.read()))
        script = self.script[kind]
        reply = script.pop(0) if script else self.DEFAULTS[kind]
        return web.Response(body=reply, content_type="application/json")


def server_config(backend: Backend) -> dict[str, Any]:
    def proxy(kind: str) -> dict[str, Any]:
        return {"endpoint": backend.url(kind), "timeout": "2s"}

    return {
        "client": {
            "allowed_origins": ["*"],
            "proxy": {
                "connect": {"enabled": True, **proxy("connect")},
                "refresh": {"enabled": True, **proxy("refresh")},
            },
        },
        "channel": {
            "without_namespace": {
                "presence": True,
                "history_size": 10,
                "history_ttl": "60s",
                "allow_subscribe_for_client": True,
                "allow_publish_for_client": True,
            },
            "namespaces": [
                {
                    "name": PROXY_NS,
                    "subscribe_proxy_enabled": True,
                    "publish_proxy_enabled": True,
                    "sub_refresh_proxy_enabled": True,
                }
            ],
            "proxy": {
                "subscribe": proxy("subscribe"),
                "publish": proxy("publish"),
                "sub_refresh": proxy("sub_refresh"),
            },
        },
        "rpc": {"proxy": proxy("rpc"), "without_namespace": {"proxy_enabled": True}},
        "uni_http_stream": {"enabled": True},
        "uni_sse": {"enabled": True},
        "uni_websocket": {"enabled": True},
        "http_stream": {"enabled": True},
        "sse": {"enabled": True},
    }


class EntryRig(Rig):
    def __init__(self) -> None:
        loop = asyncio.new_event_loop()
        self.backend = Backend()
        loop.run_until_complete(self.backend.start())
        super().__init__(
            server_config(self.backend),
            loop=loop,
            bystander_user=BYSTANDER,
        )
        self.new_log_lines()  # start-up lines

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.stop())
        super().close()

    @property
    def base(self) -> str:
        return self.srv.url

    async def settle(self, *, refused: bool, expect: str = "") -> None:
        """After one example: the bystander is unharmed, the log gained no traceback, at
        most one line, and exactly one when the body was refused (`expect` in it)."""
        await self.bystander_gets_publication()
        lines = self.new_log_lines()
        assert not [ln for ln in lines if "Traceback" in ln], "\n".join(lines)
        if refused:
            assert len(lines) == 1, "a refused body must leave one line:\n" + "\n".join(lines)
            assert expect in lines[0], lines[0]
        else:
            assert len(lines) <= 1, "\n".join(lines)
            assert not [ln for ln in lines if '"level":"error"' in ln], "\n".join(lines)


@pytest.fixture(scope="module")
def rig() -> Iterator[EntryRig]:
    r = EntryRig()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(autouse=True)
def _fresh_backend(rig: EntryRig) -> None:
    rig.backend.reset()
    rig.new_log_lines()  # what a test before this one left (an xfail's lines)


# ---------------------------------------------------------------------- answers


def allowed_close_code(code: int) -> bool:
    """A WebSocket code, a Centrifugo disconnect code or an application's (4000-4999,
    which proxies may return)."""
    return code in WS_CLOSE_CODES or 3000 <= code <= 4999


def asked_disconnect_code(reply: bytes) -> int | None:
    """The disconnect code a proxy reply asks for, when it is a usable one (uint32)."""
    try:
        obj = orjson.loads(reply)
    except orjson.JSONDecodeError:
        return None
    disconnect = obj.get("disconnect") if isinstance(obj, dict) else None
    if not isinstance(disconnect, dict):
        return None
    code = disconnect.get("code", 0)
    if code is None:
        return 0
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code < 2**32:
        return None
    return code


def check_reply(reply: dict[str, Any], *, internal_ok: bool = False) -> None:
    """A client-protocol reply or push is in the documented set."""
    err = reply.get("error")
    if err is not None:
        assert isinstance(err.get("code"), int), reply
        assert internal_ok or err["code"] != 100, f"error 100 for bad input: {reply}"
    push = reply.get("push")
    if push is not None and "disconnect" in push:
        code = push["disconnect"].get("code")
        assert isinstance(code, int) and 3000 <= code <= 4999, reply


def check_api_body(status: int, data: bytes) -> None:
    assert status in (200, 400), (status, data[:300])
    if status == 400:
        return
    doc = orjson.loads(data)
    for item in doc.get("replies", [doc]):
        assert "error" not in item or item["error"]["code"] != 100, item


JSON_TYPE = {"Content-Type": "application/json"}


async def post(rig: EntryRig, path: str, data: bytes, **headers: str) -> tuple[int, bytes]:
    async with rig.http.post(rig.base + path, data=data, headers={**JSON_TYPE, **headers}) as resp:
        return resp.status, await resp.read()


# ----------------------------------------------------------------------- HTTP API

API_METHODS = sorted(REQUEST_MESSAGES)


@settings(max_examples=examples(120))
@given(
    st.sampled_from(API_METHODS).flatmap(lambda m: st.tuples(st.just(m), body(REQUEST_MESSAGES[m])))
)
@example(("publish", b'{"channel":"x","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
@example(("publish", rb'{"channel":"\ud800","data":1}'))
@example(("history", b'{"channel":"x","limit":' + str(2**64).encode() + b"}"))
def test_http_api_bodies(rig: EntryRig, case: tuple[str, bytes]) -> None:
    method, data = case

    async def run() -> None:
        status, answer = await post(rig, f"/api/{method}", data, **{"X-API-Key": rig.srv.api_key})
        check_api_body(status, answer)
        await rig.settle(refused=status == 400, expect="bad request")

    rig.run(run())


@st.composite
def legacy_streams(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from([m for m in API_METHODS if m != "batch"]))
        params = draw(body(REQUEST_MESSAGES[method]))
        name = draw(st.one_of(st.just(_dumps(method)), hostile_scalars()))
        lines.append(b'{"method":' + name + b',"params":' + params + b"}")
    return b"\n".join(lines)


@settings(max_examples=examples(50))
@given(st.one_of(legacy_streams(), body(api_pb.Command.DESCRIPTOR)))
def test_legacy_api_bodies(rig: EntryRig, data: bytes) -> None:
    async def run() -> None:
        status, answer = await post(rig, "/api", data, **{"X-API-Key": rig.srv.api_key})
        assert status in (200, 400), (status, answer[:300])
        if status == 200:
            for line in answer.splitlines():
                check_api_body(200, line)
        await rig.settle(refused=status == 400, expect="bad request")

    rig.run(run())


# ---------------------------------------------------------------------- emulation


@settings(max_examples=examples(40))
@given(body(client_pb.EmulationRequest.DESCRIPTOR))
def test_emulation_bodies(rig: EntryRig, data: bytes) -> None:
    async def run() -> None:
        status, _ = await post(rig, "/emulation", data)
        # 400 malformed, 404 unknown node or session, 413 over the body limit: a
        # client's mistake, one info line.
        assert status in (400, 404, 413), status
        await rig.settle(refused=True, expect="emulation")

    rig.run(run())


async def _stream_lines(resp: aiohttp.ClientResponse, sse: bool) -> Any:
    """The JSON messages of an http_stream / sse / uni stream, one at a time."""
    while True:
        line = await resp.content.readline()
        if not line:
            return
        line = line.strip()
        if sse:
            if not line.startswith(b"data: "):
                continue
            line = line[len(b"data: ") :]
        if line:
            yield orjson.loads(line)


def _valid_connect(rig: EntryRig) -> bytes:
    return _dumps({"id": 1, "connect": {"token": rig.srv.token("streamer")}})


@settings(max_examples=examples(40))
@given(st.lists(S.json_frames(), min_size=1, max_size=2), st.booleans())
def test_emulated_session_commands(rig: EntryRig, frames: list[bytes], sse: bool) -> None:
    """Commands for a live http_stream / sse session, sent through /emulation: answered
    on the stream (the probe's reply or a disconnect push), never with error 100."""

    async def run() -> None:
        path = "/connection/sse" if sse else "/connection/http_stream"
        connect = _valid_connect(rig)
        async with rig.http.post(rig.base + path, data=connect, headers=JSON_TYPE) as resp:
            assert resp.status == 200
            messages = _stream_lines(resp, sse)
            first = await asyncio.wait_for(anext(messages), ANSWER_TIMEOUT)
            session, node = first["connect"]["session"], first["connect"]["node"]
            text = "\n".join(f.decode(errors="replace") for f in frames)
            text += "\n" + json.dumps({"id": 999, "ping": {}})
            req = _dumps({"node": node, "session": session, "data": text})
            status, _ = await post(rig, "/emulation", req)
            assert status == 204, status
            async with asyncio.timeout(ANSWER_TIMEOUT):
                async for msg in messages:
                    check_reply(msg)
                    if msg.get("id") == 999 or "disconnect" in msg.get("push", {}):
                        break
        await rig.settle(refused=False)

    rig.run(run())


@settings(max_examples=examples(40))
@given(st.lists(S.json_frames(), min_size=1, max_size=2), st.booleans())
def test_stream_connect_commands(rig: EntryRig, frames: list[bytes], sse: bool) -> None:
    """A generated connect frame opening an http_stream / sse session."""

    async def run() -> None:
        data = b"\n".join(frames)
        if sse:
            url = rig.base + "/connection/sse?cf_connect=" + urllib.parse.quote(data)
            ctx = rig.http.get(url)
        else:
            ctx = rig.http.post(rig.base + "/connection/http_stream", data=data, headers=JSON_TYPE)
        async with ctx as resp:
            assert resp.status in (200, 400), resp.status
            if resp.status == 200:
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    async for msg in _stream_lines(resp, sse):
                        check_reply(msg)
                        if "connect" in msg or "disconnect" in msg.get("push", {}):
                            break
        await rig.settle(refused=False)

    rig.run(run())


# ------------------------------------------------------------- unidirectional connects

UNI = ("uni_http_stream", "uni_sse_post", "uni_sse_get", "uni_websocket")


async def uni_exchange(rig: EntryRig, kind: str, data: bytes) -> int:
    """Open a unidirectional connection with ConnectRequest `data`; the HTTP status (101
    for the WebSocket) after its first push or its close was checked."""
    if kind == "uni_websocket":
        async with rig.http.ws_connect(
            rig.base.replace("http", "ws") + "/connection/uni_websocket"
        ) as ws:
            try:
                await ws.send_str(data.decode())
            except UnicodeDecodeError:
                await ws.send_bytes(data)
            msg = await ws.receive(ANSWER_TIMEOUT)
            if msg.type == aiohttp.WSMsgType.TEXT:
                for line in msg.data.splitlines():
                    check_reply(orjson.loads(line))
            else:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                code = ws.close_code
                assert code is not None and allowed_close_code(code), msg
        return 101
    if kind == "uni_sse_get":
        query = urllib.parse.quote(data)
        ctx = rig.http.get(rig.base + "/connection/uni_sse?cf_connect=" + query)
    else:
        path = "/connection/uni_http_stream" if kind == "uni_http_stream" else "/connection/uni_sse"
        ctx = rig.http.post(rig.base + path, data=data, headers=JSON_TYPE)
    async with ctx as resp:
        # 413: a body past max_request_body_size (README's bounds), refused before decoding.
        assert resp.status in (200, 400, 413), resp.status
        if resp.status == 200:
            push: dict[str, Any] = await asyncio.wait_for(
                anext(_stream_lines(resp, kind != "uni_http_stream")), ANSWER_TIMEOUT
            )
            check_reply({"push": push} if "disconnect" in push else push)
        return resp.status


@settings(max_examples=examples(80))
@given(st.sampled_from(UNI), body(client_pb.ConnectRequest.DESCRIPTOR))
@example("uni_http_stream", rb'{"name":"\ud800"}')
@example("uni_sse_get", b'{"data":"\xff"}')
@example("uni_sse_get", b'{"a":' * 1000 + b"1" + b"}" * 1000)  # a request line past 8190 bytes
def test_uni_connect_requests(rig: EntryRig, kind: str, data: bytes) -> None:
    async def run() -> None:
        status = await uni_exchange(rig, kind, data)
        # A GET whose request line passes aiohttp's 8190 bytes is refused before any handler
        # (README's bounds: HTTP 400 and one info line of its own).
        too_long = kind == "uni_sse_get" and len(urllib.parse.quote(data)) > 8000
        expect = "bad HTTP request" if too_long else "malformed connect request"
        await rig.settle(refused=status == 400, expect=expect)

    rig.run(run())


# ------------------------------------------------------------------------ JWT claims

CLAIMS = (
    "sub",
    "exp",
    "nbf",
    "iat",
    "jti",
    "aud",
    "iss",
    "info",
    "b64info",
    "channels",
    "subs",
    "meta",
    "expire_at",
    "channel",
    "client",
    "data",
    "b64data",
    "override",
)


@st.composite
def claims(draw: st.DrawFn) -> bytes:
    members = []
    if draw(st.booleans()):
        members.append(b'"exp":' + str(int(time.time()) + 3600).encode())
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(CLAIMS))
        if name == "subs":
            value = b'{"ch":' + draw(obj(proxy_pb.SubscribeOptions.DESCRIPTOR)) + b"}"
        elif name == "override":
            value = draw(obj(proxy_pb.SubscribeOptionOverride.DESCRIPTOR))
        else:
            value = draw(hostile(None, 0))
        members.append(_dumps(name) + b":" + value)
    if draw(st.integers(0, 4)) == 0:
        return draw(st.one_of(deep(), st.binary(max_size=60)))
    return b"{" + b",".join(members) + b"}"


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def signed(secret: str, payload: bytes) -> str:
    head = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(payload)
    sig = hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + _b64url(sig)


@settings(max_examples=examples(80))
@given(claims(), st.booleans())
@example(b'{"exp":' + str(2**64).encode() + b"}", False)
@example(b'{"exp":1e300}', False)
@example(b'{"sub":"u","expire_at":' + str(2**70).encode() + b"}", False)
def test_jwt_claims(rig: EntryRig, payload: bytes, subscription: bool) -> None:
    """A validly signed token whose claims are generated: a connect token, or (once
    connected with a good one) a subscription token for a private channel."""

    async def run() -> None:
        token = signed(rig.srv.hmac_key, payload)
        async with rig.http.ws_connect(rig.srv.ws_url) as ws:
            if subscription:
                await ws.send_str(json.dumps({"id": 1, "connect": {"token": rig.srv.token("u")}}))
                msg = await ws.receive(ANSWER_TIMEOUT)
                assert "connect" in orjson.loads(msg.data), msg
                cmd = {"id": 2, "subscribe": {"channel": "$private", "token": token}}
            else:
                cmd = {"id": 2, "connect": {"token": token}}
            await ws.send_str(json.dumps(cmd))
            msg = await ws.receive(ANSWER_TIMEOUT)
            if msg.type == aiohttp.WSMsgType.TEXT:
                for line in msg.data.splitlines():
                    check_reply(orjson.loads(line))
            else:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                assert ws.close_code is not None and allowed_close_code(ws.close_code), msg
        await rig.settle(refused=False)

    rig.run(run())


# ----------------------------------------------------------------------- proxy replies

RESPONSES: dict[str, Descriptor] = {
    "connect": proxy_pb.ConnectResponse.DESCRIPTOR,
    "refresh": proxy_pb.RefreshResponse.DESCRIPTOR,
    "subscribe": proxy_pb.SubscribeResponse.DESCRIPTOR,
    "publish": proxy_pb.PublishResponse.DESCRIPTOR,
    "rpc": proxy_pb.RPCResponse.DESCRIPTOR,
    "sub_refresh": proxy_pb.SubRefreshResponse.DESCRIPTOR,
}
ONE_CALL = ("connect", "subscribe", "publish", "rpc")


class Answer:
    """What one connection saw after the proxied command: replies and a close code."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self.close_code: int | None = None


_INVALID_CLOSE = re.compile(r"Invalid close code: (\d+)")


async def _read_until(
    ws: aiohttp.ClientWebSocketResponse, answer: Answer, cmd_id: int | None
) -> None:
    """Replies until the one with `cmd_id` (None: any push) or a close."""
    while True:
        msg = await ws.receive(ANSWER_TIMEOUT)
        if msg.type == aiohttp.WSMsgType.ERROR and _INVALID_CLOSE.match(str(msg.data)):
            # A close code the RFC forbids (a proxy's disconnect code 0, say), written as
            # Centrifugo writes it: uint16(code). aiohttp refuses it as a protocol error.
            answer.close_code = int(_INVALID_CLOSE.match(str(msg.data)).group(1))  # type: ignore[union-attr]
            return
        if msg.type != aiohttp.WSMsgType.TEXT:
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            answer.close_code = ws.close_code
            return
        for line in msg.data.splitlines():
            reply = orjson.loads(line)
            answer.replies.append(reply)
            if reply.get("id") == cmd_id or (cmd_id is None and "push" in reply):
                return


async def proxied(rig: EntryRig, kind: str, reply: bytes) -> Answer:
    """Run the command that calls proxy `kind`, whose backend answers `reply`."""
    answer = Answer()
    backend = rig.backend
    async with rig.http.ws_connect(rig.srv.ws_url) as ws:
        if kind == "connect":
            backend.script["connect"].append(reply)
            await ws.send_str('{"id":1,"connect":{}}')
            await _read_until(ws, answer, 1)
            return answer
        await ws.send_str(json.dumps({"id": 1, "connect": {"token": rig.srv.token("p")}}))
        await _read_until(ws, answer, 1)
        ch = f"{PROXY_NS}:c"
        backend.script[kind].append(reply)
        if kind == "subscribe":
            cmd: dict[str, Any] = {"subscribe": {"channel": ch}}
        elif kind == "publish":
            cmd = {"publish": {"channel": ch, "data": {"x": 1}}}
        else:
            cmd = {"rpc": {"method": "m", "data": {}}}
        await ws.send_str(json.dumps({"id": 3, **cmd}))
        await _read_until(ws, answer, 3)
    return answer


def proxy_replies() -> st.SearchStrategy[tuple[str, bytes]]:
    return st.sampled_from(ONE_CALL).flatmap(lambda k: st.tuples(st.just(k), body(RESPONSES[k])))


@settings(max_examples=examples(80))
@given(proxy_replies())
@example(("rpc", b'{"disconnect":{"code":4000,"reason":"' + b"r" * 200 + b'"}}'))
@example(("connect", b'{"disconnect":{}}'))  # code 0: on the wire as Centrifugo writes it
@example(("connect", b'{"disconnect":{},"error":9223372036854775808}'))  # unusable: error 100
def test_proxy_replies(rig: EntryRig, case: tuple[str, bytes]) -> None:
    """Any reply: the connection gets a documented answer, the log at most one line."""
    kind, reply = case

    async def run() -> None:
        answer = await proxied(rig, kind, reply)
        for r in answer.replies:
            check_reply(r, internal_ok=True)
        if answer.close_code is not None:
            asked = asked_disconnect_code(reply)
            if asked is not None:  # the backend's choice, passed through as uint16
                assert answer.close_code == asked & 0xFFFF, (answer.close_code, asked)
            else:
                assert allowed_close_code(answer.close_code), answer.close_code
        await rig.bystander_gets_publication()
        lines = rig.new_log_lines()
        assert not [ln for ln in lines if "Traceback" in ln], "\n".join(lines)
        assert len(lines) <= 1, "\n".join(lines)

    rig.run(run())


def test_proxy_disconnect_code_past_uint16(rig: EntryRig) -> None:
    """A disconnect code is uint32; the close frame carries uint16(code), as Centrifugo's
    (gorilla's FormatCloseMessage) does."""

    async def run() -> None:
        answer = await proxied(rig, "rpc", b'{"disconnect":{"code":70000}}')
        assert answer.close_code == 70000 & 0xFFFF, answer.close_code
        await rig.settle(refused=False)

    rig.run(run())


@settings(max_examples=examples(60))
@given(
    st.sampled_from(ONE_CALL).flatmap(lambda k: st.tuples(st.just(k), unusable_reply(RESPONSES[k])))
)
@example(("connect", b'{"result":{"expire_at":' + str(2**64).encode() + b"}}"))
@example(("connect", rb'{"result":{"user":"\ud800"}}'))
@example(("rpc", b'{"disconnect":{"code":' + str(2**32).encode() + b"}}"))
@example(("publish", b'{"result":{"version":' + str(2**64).encode() + b"}}"))
def test_unusable_proxy_replies_are_internal_errors(rig: EntryRig, case: tuple[str, bytes]) -> None:
    """A reply Go's json.Unmarshal refuses: Centrifugo's proxy failure, error 100 for
    the command, and one error line naming the proxy call."""
    kind, reply = case

    async def run() -> None:
        answer = await proxied(rig, kind, reply)
        last = answer.replies[-1]
        assert last.get("error", {}).get("code") == 100, answer.replies
        await rig.settle(refused=True, expect=f"error proxying {kind}")

    rig.run(run())
