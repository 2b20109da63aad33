"""Malformed HTTP requests: aiohttp's status, and exactly one info line each, no traceback.

A stranger's raw socket sends request heads that break HTTP/1.1 (a 100 KB request line, a
header line over the limit, garbage, bad chunked framing), some of them aimed at the
WebSocket path so that they pass the lean request-head sniffer first (which hands all it
does not serve to aiohttp). aiohttp answers each (400, or 413/431 as it decides) and logs
it in its request handler, before the answer goes out; so once the client has read the
answer and the close, the line is in the log. "Exactly one" is checked between snapshots
taken around each request, with a last bad request as a barrier so that late extra lines
of the one before would be noticed (as tests/e2e/test_logs.py does).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from .helpers import ServerHandle

BIG = 100_000

CASES: dict[str, bytes] = {
    "request line of 100 KB": b"GET /" + b"a" * BIG + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    # Starts like an upgrade: the lean sniffer buffers it up to its limit, then hands over.
    "request line of 100 KB to the WebSocket path": (
        b"GET /connection/websocket?" + b"a" * BIG + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "header line of 100 KB": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"b" * BIG
    + b"\r\n\r\n",
    "header line of 100 KB in an upgrade": (
        b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nX-Big: " + b"b" * BIG + b"\r\n\r\n"
    ),
    # A TLS ClientHello on the HTTP port: aiohttp logs a bad first method at debug level.
    "garbage head": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "bad method": b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage head to the WebSocket path": (
        b"GET /connection/websocket HTTP/1.1\r\nUpgrade: websocket\r\n\x00\x01\x02\r\n\r\n"
    ),
    "bad chunk size": (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
}


def send_raw(srv: ServerHandle, data: bytes) -> int:
    """Sends `data` on a fresh connection; returns the status of the answer, read until
    the server closes the connection."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the rest of a big request was sent
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # unread request bytes left behind make the close a reset
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def srv(server_factory: Any) -> ServerHandle:
    # HTTP parsing does not depend on the engine: memory only.
    return server_factory({"engine": {"type": "memory"}, "client": {"insecure": True}})


def test_each_bad_request_is_answered_and_logged_as_one_info_line(srv: ServerHandle) -> None:
    marks = [len(srv.log_text().splitlines())]
    for name, data in CASES.items():
        assert send_raw(srv, data) in (400, 413, 431), name
        marks.append(len(srv.log_text().splitlines()))
    # Barrier: a last bad request whose own line shows that everything before it was written.
    assert send_raw(srv, CASES["request line of 100 KB"]) == 400
    text = srv.log_text()
    lines = text.splitlines()
    assert len(lines) > marks[-1], "barrier request left no line"

    for i, name in enumerate(CASES):
        chunk = lines[marks[i] : marks[i + 1]]
        assert len(chunk) == 1, f"{name}: expected one line, got:\n" + "\n".join(chunk)
        obj = json.loads(chunk[0])
        assert obj["level"] == "info", (name, obj)  # a client's mistake, not a server fault
        assert "bad HTTP request from 127.0.0.1" in obj["message"], (name, obj)
        assert "error" not in obj, (name, obj)  # no traceback attached
        assert len(obj["message"]) < 400, (name, obj)  # not the whole 100 KB line
    assert "Traceback" not in text

    # The worker still serves.
    assert srv.api("info")["result"]["nodes"]
