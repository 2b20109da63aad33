"""A peer that stops reading is dropped in bounded time, and holds nothing once dropped.

Raw socket clients against a real server process: each connects and subscribes over a
WebSocket, then never reads again while API publishes of big payloads pile up behind it.
The server's own view of the connection decides: its entry in the kernel's TCP table
(`/proc/<worker pid>/net/tcp`, which also lists sockets no process holds any more), with
the bytes still queued for sending. The client keeps its end open throughout, as a stalled
browser tab or a malicious peer would.

- Overflow of `client.queue_max_size`: 3008, and the server-side socket is gone (not
  ESTABLISHED, no send queue) within `websocket.write_timeout` of it: the close frame sits
  behind the backlog and can never reach the peer, so the socket is dropped (RST).
- A backlog below the queue bound that the peer takes nothing of: dropped with 3009
  (write error) once a write waited `websocket.write_timeout`, as Centrifugo does.

Both run on the lean WebSocket path and on aiohttp's (a request head the lean sniffer
leaves to aiohttp: a header name with an underscore). The HTTP streams (SSE and the
unidirectional HTTP stream) have no close frame but the same fault: aiohttp's end of a
response waits for the peer to read it, for ever.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest

from .helpers import ServerHandle
from .redis_e2e_helpers import worker_pids

CHANNEL = "slow"
PAYLOAD = 256 * 1024  # bytes of publication data per API publish
# The client's receive buffer: small, so that the server's send buffer fills quickly.
CLIENT_RCVBUF = 64 * 1024
# Slack on top of a configured timeout for the worker's 50 ms coarse timer ticks, the
# log write and a loaded CI machine.
SLACK = 1.5

TCP_ESTABLISHED = 0x01
PATHS = {"lean": "", "aiohttp": "X_Route: aiohttp\r\n"}


def base_config(**websocket: Any) -> dict[str, Any]:
    # Transports do not depend on the engine: memory only.
    return {
        "engine": {"type": "memory"},
        "client": {"insecure": True},
        "websocket": websocket,
    }


@dataclass
class TcpEntry:
    state: int
    tx_queue: int  # bytes queued for sending (unsent and unacknowledged)


def server_side(srv: ServerHandle, client_port: int) -> TcpEntry | None:
    """The server end of the connection from `client_port` in the kernel's TCP table, as
    the worker sees it (its network namespace); None when the kernel holds no such socket."""
    pid = worker_pids(srv)[0]
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.split(":")[1], 16) == srv.port
                and int(remote.split(":")[1], 16) == client_port
            ):
                tx = int(fields[4].split(":")[0], 16)
                return TcpEntry(int(fields[3], 16), tx)
    return None


def frame(payload: bytes) -> bytes:
    """A masked client text frame (payloads under 64 KB)."""
    key = b"\x01\x02\x03\x04"
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def small_window_socket(srv: ServerHandle) -> socket.socket:
    """A client socket to `srv` with a small receive buffer: a peer that stops reading
    fills it, and then the server's send queue, quickly."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    s.settimeout(5)
    s.connect(("127.0.0.1", srv.port))
    return s


class StalledPeer:
    """Connects and subscribes, reading only the replies it needs; then never reads."""

    def __init__(self, srv: ServerHandle, extra_header: str) -> None:
        s = self.sock = small_window_socket(srv)
        self.port = s.getsockname()[1]
        self._buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                "GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_header}\r\n"
            ).encode()
        )
        head = self._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        s.sendall(frame(b'{"id":1,"connect":{}}'))
        self._reply(1)
        s.sendall(frame(json.dumps({"id": 2, "subscribe": {"channel": CHANNEL}}).encode()))
        reply = self._reply(2)
        assert "subscribe" in reply, reply

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self._buf += chunk
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _frame(self) -> bytes:
        while True:
            if len(self._buf) >= 2:
                n = self._buf[1] & 0x7F
                start = 2 + {126: 2, 127: 8}.get(n, 0)
                if len(self._buf) >= start:
                    if n >= 126:
                        n = int.from_bytes(self._buf[2:start], "big")
                    if len(self._buf) >= start + n:
                        payload = self._buf[start : start + n]
                        self._buf = self._buf[start + n :]
                        return payload
            chunk = self.sock.recv(65536)
            assert chunk, "server closed the connection"
            self._buf += chunk

    def _reply(self, cmd_id: int) -> dict[str, Any]:
        while True:
            for line in self._frame().split(b"\n"):
                obj = json.loads(line)
                if obj.get("id") == cmd_id:
                    assert "error" not in obj, obj
                    return obj.get("result", obj)

    def close(self) -> None:
        self.sock.close()


class StalledStream:
    """Opens a streaming response subscribed to CHANNEL, reads its head, then never reads."""

    def __init__(self, srv: ServerHandle, kind: str) -> None:
        s = self.sock = small_window_socket(srv)
        self.port = s.getsockname()[1]
        if kind == "sse":
            connect = json.dumps({"id": 1, "connect": {"subs": {CHANNEL: {}}}})
            query = urllib.parse.quote(connect)
            head = f"GET /connection/sse?cf_connect={query} HTTP/1.1\r\nHost: x\r\n\r\n"
            s.sendall(head.encode())
        else:
            body = json.dumps({"subs": {CHANNEL: {}}}).encode()
            s.sendall(
                b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            assert chunk, "server closed the connection"
            got += chunk
        assert got.startswith(b"HTTP/1.1 200"), got
        # The connect reply or push follows the head: subscribed once it is in.
        while CHANNEL.encode() not in got:
            chunk = s.recv(4096)
            assert chunk, "server closed the connection"
            got += chunk

    def close(self) -> None:
        self.sock.close()


def publish(srv: ServerHandle, n: int, until: str = "", seen: int = 0) -> float | None:
    """`n` API publishes of PAYLOAD bytes each; with `until`, stops at the first after
    which the log holds more than `seen` lines with `until` and returns that time."""
    data = {"x": "a" * PAYLOAD}
    for _ in range(n):
        srv.api("publish", {"channel": CHANNEL, "data": data})
        if until and srv.log_text().count(until) > seen:
            return time.monotonic()
    return None


def wait_log(srv: ServerHandle, needle: str, count: int, timeout: float) -> float:
    """The time the server's log first held `count` lines with `needle` (polled: another
    process writes it)."""
    deadline = time.monotonic() + timeout
    while srv.log_text().count(needle) < count:
        assert time.monotonic() < deadline, f"no {needle!r} in the log\n{srv.log_tail()}"
        time.sleep(0.05)
    return time.monotonic()


def wait_released(srv: ServerHandle, peer: StalledPeer, within: float) -> TcpEntry | None:
    """Polls the kernel's table (no event to await in another process) until the server
    end no longer holds the connection open or unsent data; fails after `within` s."""
    deadline = time.monotonic() + within
    while True:
        entry = server_side(srv, peer.port)
        if entry is None or (entry.state != TCP_ESTABLISHED and entry.tx_queue == 0):
            return entry
        assert time.monotonic() < deadline, (
            f"server end still held after {within}s: state {entry.state:#x}, "
            f"{entry.tx_queue} bytes unsent"
        )
        time.sleep(0.05)


@pytest.fixture(scope="module")
def overflow_srv(server_factory: Any) -> ServerHandle:
    # The queue bound is hit long before a write waits 2 s: publishes come back to back.
    return server_factory(base_config(write_timeout="2s"))


@pytest.fixture(scope="module")
def stall_srv(server_factory: Any) -> ServerHandle:
    # A queue bound the test never reaches: only the write timeout can drop the peer.
    cfg = base_config(write_timeout="1s")
    cfg["client"]["queue_max_size"] = 256 * 1024 * 1024
    return server_factory(cfg)


@pytest.mark.parametrize("path", list(PATHS))
def test_overflowed_peer_is_released_within_write_timeout(
    overflow_srv: ServerHandle, path: str
) -> None:
    srv = overflow_srv
    peer = StalledPeer(srv, PATHS[path])
    try:
        before = srv.log_text().count("3008 slow")
        # Up to 10 MB: the kernel's buffers take a few, then the queue bound (1 MB) is hit.
        seen = publish(srv, 40, until="3008 slow", seen=before)
        assert seen is not None, f"no 3008\n{srv.log_tail()}"
        wait_released(srv, peer, within=2.0 + SLACK)
        assert time.monotonic() - seen <= 2.0 + SLACK
        assert srv.log_text().count("3008 slow") == before + 1
    finally:
        peer.close()


@pytest.mark.parametrize("path", list(PATHS))
def test_peer_that_takes_nothing_is_dropped_by_write_timeout(
    stall_srv: ServerHandle, path: str
) -> None:
    srv = stall_srv
    peer = StalledPeer(srv, PATHS[path])
    try:
        before = srv.log_text().count("3009 write error")
        publish(srv, 24)  # 6 MB: more than the kernel's buffers take, far below the queue bound
        done = time.monotonic()
        # A write waits up to write_timeout for the kernel to take it; checked on the next
        # tick after it: the drop comes within two timeouts of the last publish.
        wait_log(srv, "3009 write error", before + 1, 2 * 1.0 + SLACK)
        assert srv.log_text().count("3009 write error") == before + 1
        wait_released(srv, peer, within=1.0 + SLACK)
        assert time.monotonic() - done <= 3 * 1.0 + SLACK
    finally:
        peer.close()


@pytest.fixture(scope="module")
def stream_srv(server_factory: Any) -> ServerHandle:
    cfg = base_config()
    cfg.update({"sse": {"enabled": True}, "uni_http_stream": {"enabled": True}})
    return server_factory(cfg)


@pytest.mark.parametrize("kind", ["sse", "uni_http_stream"])
def test_stalled_stream_is_released(stream_srv: ServerHandle, kind: str) -> None:
    srv = stream_srv
    peer = StalledStream(srv, kind)
    try:
        before = srv.log_text().count("disconnect client")
        # A write waits up to 1 s (Centrifugo's stream write timeout) before 3009, unless
        # the queue bound gives 3008 first: either way a disconnect.
        seen = publish(srv, 40, until="disconnect client", seen=before)
        if seen is None:
            seen = wait_log(srv, "disconnect client", before + 1, 2 * 1.0 + SLACK)
        assert "3008 slow" in srv.log_tail(5) or "3009 write error" in srv.log_tail(5)
        # The disconnect push and the response's end each get a write timeout, then the
        # socket is dropped.
        wait_released(srv, peer, within=3 * 1.0 + SLACK)
        assert time.monotonic() - seen <= 3 * 1.0 + SLACK
    finally:
        peer.close()
