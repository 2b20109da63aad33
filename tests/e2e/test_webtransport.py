"""WebTransport over HTTP/3 against real server processes, with aioquic's own client
(tests/support/wt_client.py) speaking Centrifugo's framing as centrifuge-js does.

One server (1 worker, TLS from tests/support/tls_certs.py, HTTP/3 and WebTransport on) for
the protocol details: connect, subscribe, an API publication, a client publish, JSON and
Protobuf (`cf_protocol=protobuf`), disconnect codes (push, then the session closed with the
code), bad frames (3000, one log line), the inbox bound (commands queued behind a connect
waiting on a held proxy), refusals (path, origin, plain requests). A second
one pings every second for ping/pong. A third, 2 workers on Redis, loses a worker to SIGKILL:
its sessions reconnect and recover, the other worker's sessions are untouched.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import pytest

from app.protocol.gen import client_pb2 as pb
from tests.support.tls_certs import CA, make_ca
from tests.support.wt_client import WtClient, open_session

from .helpers import ServerHandle, deep_merge, start_server
from .redis_e2e_helpers import RedisProcess, redis_config, worker_pids

SIZE_LIMIT = 4096
GOOD_ORIGIN = "https://good.example"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("wt-tls"))


def _start(ca: CA, config: dict[str, Any], workers: int = 1) -> ServerHandle:
    leaf = ca.issue("server")
    base: dict[str, Any] = {
        "http_server": {
            "tls": {
                "enabled": True,
                "cert_pem": str(leaf.cert_path),
                "key_pem": str(leaf.key_path),
            },
            "http3": {"enabled": True},
        },
        "webtransport": {"enabled": True, "message_size_limit": SIZE_LIMIT},
        "client": {"allowed_origins": [GOOD_ORIGIN]},
    }
    context = ca.client_context()

    def ready(h: ServerHandle) -> bool:
        try:
            url = f"https://127.0.0.1:{h.port}/health"
            with urllib.request.urlopen(url, context=context, timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return start_server(deep_merge(base, config), workers=workers, ready=ready)


async def api(
    srv: ServerHandle, ca: CA, method: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The server API over HTTPS, trusting the module's CA."""
    context = ca.client_context()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"https://127.0.0.1:{srv.port}/api/{method}",
            json=params or {},
            headers={"X-API-Key": srv.api_key},
            ssl=context,
        ) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body


CHAT = {
    "name": "chat",
    "allow_subscribe_for_client": True,
    "allow_publish_for_client": True,
    "history_size": 10,
    "history_ttl": "300s",
    "force_recovery": True,
}


class HeldProxy:
    """A connect proxy that answers only when told to: a session whose connect waits on it
    runs no other command meanwhile (one reader per session). `asked` is set once a
    request arrived; `release` lets every request through."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.asked.set()
                proxy.release.wait(10)
                body = json.dumps({"result": {"user": "held"}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/connect"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture(scope="module")
def held_proxy() -> Iterator[HeldProxy]:
    proxy = HeldProxy()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def srv(ca: CA, held_proxy: HeldProxy) -> Iterator[ServerHandle]:
    # The connect proxy serves only connects without a token (test_inbox_bound).
    proxy = {"connect": {"enabled": True, "endpoint": held_proxy.url, "timeout": "10s"}}
    handle = _start(ca, {"channel": {"namespaces": [CHAT]}, "client": {"proxy": proxy}})
    yield handle
    handle.stop()


async def _connected(c: WtClient, srv: ServerHandle, user: str = "u") -> dict[str, Any]:
    c.send_json({"id": 1, "connect": {"token": srv.token(user)}})
    reply = await c.next_json()
    assert "connect" in reply, reply
    return reply


async def test_connect_subscribe_receive_publish_json(srv: ServerHandle, ca: CA) -> None:
    async with open_session(srv.port, ca=ca.cert_path) as c:
        assert c.status == 200
        # Chromium's GREASE capsule (a reserved type, 0x29 * N + 0x17) on the CONNECT
        # stream right after its request: skipped, the session lives on.
        c.send_capsule(0x29 * 7 + 0x17, b"grease")
        reply = await _connected(c, srv, "alice")
        assert reply["connect"]["client"] and reply["connect"]["ping"] == 25
        c.send_json({"id": 2, "subscribe": {"channel": "chat:room"}})
        sub = await c.next_json()
        assert sub["id"] == 2 and sub["subscribe"]["recoverable"] is True
        await api(srv, ca, "publish", {"channel": "chat:room", "data": {"from": "api"}})
        push = await c.next_json()
        assert push["push"]["channel"] == "chat:room"
        assert push["push"]["pub"]["data"] == {"from": "api"}
        assert push["push"]["pub"]["offset"] == 1
        # Two commands in one write, as centrifuge-js batches them: both answered in order.
        c.send_json(
            {"id": 3, "publish": {"channel": "chat:room", "data": {"from": "wt"}}},
            {"id": 4, "presence_stats": {"channel": "chat:room"}},
        )
        got = [await c.next_json() for _ in range(3)]
        assert {"id": 3, "publish": {}} in got
        assert any(m.get("push", {}).get("pub", {}).get("data") == {"from": "wt"} for m in got)
        assert any(m.get("id") == 4 and "error" in m for m in got)  # presence off: 108
        c.close()
        assert await c.closed() is None  # the peer closed it: nothing more from the server


def test_alt_svc_advertised_on_tcp_responses(srv: ServerHandle, ca: CA) -> None:
    url = f"https://127.0.0.1:{srv.port}/health"
    with urllib.request.urlopen(url, context=ca.client_context(), timeout=5) as r:
        assert r.headers["Alt-Svc"] == f'h3=":{srv.port}"; ma=2592000'


async def test_protobuf_with_cf_protocol(srv: ServerHandle, ca: CA) -> None:
    path = "/connection/webtransport?cf_protocol=protobuf"
    async with open_session(srv.port, path, ca=ca.cert_path) as c:
        c.send_commands(
            pb.Command(id=1, connect=pb.ConnectRequest(token=srv.token("bob"))),
            pb.Command(id=2, subscribe=pb.SubscribeRequest(channel="chat:pb")),
        )
        connect = await c.next_reply()
        assert connect.id == 1 and connect.connect.client
        sub = await c.next_reply()
        assert sub.id == 2 and sub.subscribe.recoverable
        await api(srv, ca, "publish", {"channel": "chat:pb", "b64data": _b64(b"\x00\xffraw")})
        push = await c.next_reply()
        assert push.push.channel == "chat:pb" and push.push.pub.data == b"\x00\xffraw"
        c.send_commands(pb.Command(id=3, publish=pb.PublishRequest(channel="chat:pb", data=b"x")))
        replies = [await c.next_reply(), await c.next_reply()]
        assert {r.id for r in replies} == {0, 3}


async def test_bad_token_disconnects_with_3500(srv: ServerHandle, ca: CA) -> None:
    async with open_session(srv.port, ca=ca.cert_path) as c:
        c.send_json({"id": 1, "connect": {"token": "not-a-token"}})
        push = await c.next_json()
        assert push == {"push": {"disconnect": {"code": 3500, "reason": "invalid token"}}}
        # Then the stream ends and the session closes with the code (after transport.go's
        # wait: this client, unlike centrifuge-js, does not close on the push).
        assert await c.closed() == (3500, "invalid token")


async def test_client_closing_on_the_push_ends_the_wait(srv: ServerHandle, ca: CA) -> None:
    """centrifuge-js closes its transport on a disconnect push: the server closes no further."""
    async with open_session(srv.port, ca=ca.cert_path) as c:
        c.send_json({"id": 1, "connect": {"token": "not-a-token"}})
        assert (await c.next_json())["push"]["disconnect"]["code"] == 3500
        c.close()
        assert await c.closed(timeout=0.9) is None


@pytest.mark.parametrize(
    "frame",
    [b"not json\n", b'{"id": "x", "connect": {}}\n', b"{" + b" " * SIZE_LIMIT + b"}\n"],
    ids=["not-json", "bad-id-type", "over-message-size-limit"],
)
async def test_bad_frame_closes_with_3000(srv: ServerHandle, ca: CA, frame: bytes) -> None:
    before = srv.log_text().count("error decoding command")
    async with open_session(srv.port, ca=ca.cert_path) as c:
        await _connected(c, srv)
        c.send_raw(frame)
        # No push for 3000 (centrifuge): the stream just ends, then the session closes.
        with pytest.raises(EOFError):
            await c.next_json()
        if frame == b"not json\n":  # the close after transport.go's one-second wait
            assert await c.closed() == (3000, "connection closed")
    assert srv.log_text().count("error decoding command") == before + 1


async def test_inbox_bound(srv: ServerHandle, ca: CA, held_proxy: HeldProxy) -> None:
    """Commands sent while the session's reader waits (here on the connect proxy) queue up
    to 4 x message_size_limit bytes; beyond that the session is closed at once with 3000,
    one log line, without waiting for the command that runs."""
    before = srv.log_text().count("bytes of commands waiting")
    async with open_session(srv.port, ca=ca.cert_path) as c:
        c.send_json({"id": 1, "connect": {}})  # no token: the held proxy decides
        assert await asyncio.to_thread(held_proxy.asked.wait, 5)
        command = b'{"id":2,"presence_stats":{"channel":"chat:room"}}\n'
        c.send_raw(command * (8 * SIZE_LIMIT // len(command)))  # 8 limits' worth
        assert await c.closed() == (3000, "connection closed")
    held_proxy.release.set()
    assert srv.log_text().count("bytes of commands waiting") == before + 1


async def test_unknown_command_is_a_bad_request(srv: ServerHandle, ca: CA) -> None:
    """JSON that decodes but asks for nothing reaches the Client: 3501, as on WebSocket."""
    async with open_session(srv.port, ca=ca.cert_path) as c:
        await _connected(c, srv)
        c.send_json({"id": 2})
        assert (await c.next_json())["push"]["disconnect"] == {
            "code": 3501,
            "reason": "bad request",
        }


async def test_refusals(srv: ServerHandle, ca: CA) -> None:
    async with open_session(srv.port, "/connection/other", ca=ca.cert_path) as c:
        assert c.status == 404
    async with open_session(srv.port, ca=ca.cert_path, origin="https://evil.example") as c:
        assert c.status == 400  # Centrifugo's answer to webtransport-go's origin refusal
    async with open_session(srv.port, ca=ca.cert_path, origin=GOOD_ORIGIN) as c:
        assert c.status == 200
    async with open_session(srv.port, ca=ca.cert_path, protocol="websocket") as c:
        assert c.status == 421  # not WebTransport: served over TCP only


@pytest.fixture(scope="module")
def ping_srv(ca: CA) -> Iterator[ServerHandle]:
    handle = _start(
        ca,
        {
            "client": {"ping_interval": "1s", "pong_timeout": "500ms"},
            "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        },
    )
    yield handle
    handle.stop()


async def test_ping_pong(ping_srv: ServerHandle, ca: CA) -> None:
    async with open_session(ping_srv.port, ca=ca.cert_path) as c:
        reply = await _connected(c, ping_srv)
        assert reply["connect"]["ping"] == 1 and reply["connect"]["pong"] is True
        c.send_json({"id": 2, "subscribe": {"channel": "p"}})
        await c.next_json()
        # Pongs answered by the client: still connected after two pings.
        while c.pings < 2:
            await api(ping_srv, ca, "publish", {"channel": "p", "data": {"n": c.pings}})
            assert "pub" in (await c.next_json())["push"]
    async with open_session(ping_srv.port, ca=ca.cert_path, pong=False) as c:
        await _connected(c, ping_srv)
        assert await c.next_json(timeout=3) == {}  # the ping
        push = await c.next_json(timeout=3)
        assert push == {"push": {"disconnect": {"code": 3012, "reason": "no pong"}}}
        assert await c.closed() == (3012, "no pong")


# ------------------------------------------------------------------------- 2 workers, SIGKILL

LIVENESS = 2.5  # seconds without a ping (every 1 s) after which a client reconnects


@pytest.fixture(scope="module")
def redis_srv(ca: CA, redis_server: RedisProcess) -> Iterator[ServerHandle]:
    cfg = redis_config(redis_server.port)
    cfg["client"] = {"ping_interval": "1s", "pong_timeout": "-1s"}
    handle = _start(ca, cfg, workers=2)
    yield handle
    handle.stop()


class Follower:
    """A session subscribed to `rec:<ch>` with recovery; reconnects when pings stop, as
    centrifuge-js does, and recovers from the last offset and epoch it saw."""

    def __init__(self, srv: ServerHandle, ca: CA, channel: str) -> None:
        self.srv, self.ca, self.channel = srv, ca, channel
        self.seen: list[int] = []
        self.offset = 0
        self.epoch = ""
        self.reconnects = 0
        self.other: list[dict[str, Any]] = []  # disconnect pushes (none expected)

    async def run(self, want: int, ready: asyncio.Event) -> None:
        while len(self.seen) < want:
            async with open_session(self.srv.port, ca=self.ca.cert_path) as c:
                await _connected(c, self.srv, "f")
                sub: dict[str, Any] = {"channel": self.channel}
                if self.epoch:
                    sub.update(recover=True, offset=self.offset, epoch=self.epoch)
                c.send_json({"id": 2, "subscribe": sub})
                reply = (await c.next_json())["subscribe"]
                if self.epoch:
                    assert reply["recovered"] is True, reply
                self.epoch = reply["epoch"]
                for pub in reply.get("publications", []):
                    self._take(pub)
                ready.set()
                try:
                    while len(self.seen) < want:
                        push = (await c.next_json(timeout=LIVENESS))["push"]
                        if "disconnect" in push:
                            self.other.append(push)
                            break
                        self._take(push["pub"])
                except (TimeoutError, EOFError):
                    pass
                if len(self.seen) < want:
                    self.reconnects += 1

    def _take(self, pub: dict[str, Any]) -> None:
        self.offset = pub["offset"]
        self.seen.append(pub["data"]["n"])


async def test_worker_sigkill_sessions_reconnect_and_recover(
    redis_srv: ServerHandle, ca: CA
) -> None:
    channel = "rec:wt-kill"
    followers: list[Follower] = []
    tasks: list[asyncio.Task[None]] = []
    total = 6

    async def placement() -> list[int]:
        """Sessions per worker, once both workers' heartbeats (every 3 s) count them all:
        a UDP socket shows no peers, so this is how a test learns where sessions are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            info = await api(redis_srv, ca, "info")
            counts = [n.get("num_clients", 0) for n in info["result"]["nodes"]]
            if len(counts) == 2 and sum(counts) == len(followers):
                return counts
            assert loop.time() < deadline, counts
            await asyncio.sleep(0.2)  # the next poll of the registry (no event to await)

    # Sessions until both workers hold some: the kernel hashes each new QUIC connection
    # (a new source port each) onto one of the two slots.
    counts: list[int] = []
    while not counts or min(counts) == 0:
        for _ in range(6):
            f = Follower(redis_srv, ca, channel)
            ready = asyncio.Event()
            followers.append(f)
            tasks.append(asyncio.create_task(f.run(total, ready)))
            await asyncio.wait_for(ready.wait(), 5)
        counts = await placement()
        assert len(followers) < 30, counts
    for n in range(1, 4):
        await api(redis_srv, ca, "publish", {"channel": channel, "data": {"n": n}})
    before = worker_pids(redis_srv)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    for n in range(4, total + 1):
        await api(redis_srv, ca, "publish", {"channel": channel, "data": {"n": n}})
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for f in followers:
        assert f.seen == list(range(1, total + 1)), (f.seen, f.reconnects, f.other)
    reconnected = sum(1 for f in followers if f.reconnects)
    # Exactly the victim's sessions reconnected; the survivor's were never moved to the
    # victim's replacement (the master keeps every slot's UDP socket: the reuseport group
    # never changes, so neither does the hash's mapping).
    assert reconnected in counts, (counts, [f.reconnects for f in followers])
    assert victim not in worker_pids(redis_srv)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
