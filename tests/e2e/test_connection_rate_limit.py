"""`client.connection_rate_limit`: new connection requests over N per second get HTTP 503,
on every connection endpoint, from one bucket per node (app/transports/admission.py).

Raw sockets against a real server. The limit is 2 per second: a token comes back every
0.5 s, so requests sent together (a few milliseconds apart) meet an empty bucket, and the
waits that test the refill are the bucket's own interval, not synchronisation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .helpers import ServerHandle, deep_merge, start_server
from .redis_e2e_helpers import RedisProcess, redis_config

LIMIT = 2
CONFIG: dict[str, Any] = {
    "client": {"insecure": True, "connection_rate_limit": LIMIT},
    "sse": {"enabled": True},
    "http_stream": {"enabled": True},
    "uni_websocket": {"enabled": True},
    "uni_sse": {"enabled": True},
    "uni_http_stream": {"enabled": True},
}
CONNECT = json.dumps({"id": 1, "connect": {}})


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(CONFIG)
    yield handle
    handle.stop()


@pytest.fixture
async def srv(server: ServerHandle) -> ServerHandle:
    """The module's server with a full bucket: an empty one refills in one second, and
    the bucket holds no more than LIMIT however long it waits."""
    await asyncio.sleep(1.0)
    return server


def upgrade(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def post(path: str, body: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


# One request per connection endpoint and path. A header name with an underscore sends
# a WebSocket upgrade through aiohttp's handler instead of the lean path.
LEAN_WS = upgrade("/connection/websocket")
REQUESTS = {
    "websocket (aiohttp path)": upgrade("/connection/websocket", "X_Via_Aiohttp: 1\r\n"),
    "sse": get("/connection/sse?cf_connect=" + urllib.parse.quote(CONNECT)),
    "http_stream": post("/connection/http_stream", CONNECT),
    "uni_websocket": upgrade("/connection/uni_websocket"),
    "uni_sse": get("/connection/uni_sse"),
    "uni_http_stream": post("/connection/uni_http_stream", "{}"),
}


class Conns:
    """Open sockets, closed at the end of the test."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def send_together(self, port: int, requests: list[bytes]) -> list[int]:
        """Connect all first, then send every request in one loop turn; the statuses."""
        pairs = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in requests)
        )
        for (_, w), req in zip(pairs, requests, strict=True):
            self.writers.append(w)
            w.write(req)
        lines = await asyncio.gather(*(asyncio.wait_for(r.readline(), 10) for r, _ in pairs))
        return [int(line.split()[1]) for line in lines]

    async def close(self) -> None:
        for w in self.writers:
            w.close()


@pytest.fixture
async def conns() -> AsyncIterator[Conns]:
    c = Conns()
    yield c
    await c.close()


async def test_websocket_upgrades_over_the_rate_get_503(srv: ServerHandle, conns: Conns) -> None:
    statuses = await conns.send_together(srv.port, [LEAN_WS] * (LIMIT + 5))
    assert sorted(statuses) == [101] * LIMIT + [503] * 5


async def test_every_connection_endpoint_shares_the_bucket_and_answers_503(
    srv: ServerHandle, conns: Conns
) -> None:
    assert await conns.send_together(srv.port, [LEAN_WS] * LIMIT) == [101] * LIMIT
    statuses = await conns.send_together(srv.port, list(REQUESTS.values()))
    assert dict(zip(REQUESTS, statuses, strict=True)) == dict.fromkeys(REQUESTS, 503)
    # Not counted: the HTTP API and the health check answer as usual.
    assert srv.api("info")["result"]["nodes"]


async def test_the_bucket_refills_at_the_limit_per_second(srv: ServerHandle, conns: Conns) -> None:
    statuses = await conns.send_together(srv.port, [LEAN_WS] * (LIMIT + 1))
    assert sorted(statuses) == [101] * LIMIT + [503]
    # A second gives back LIMIT tokens (Centrifugo before #1207 gave back one), and a
    # longer wait no more: the bucket holds LIMIT at most.
    await asyncio.sleep(1.0)
    statuses = await conns.send_together(srv.port, [LEAN_WS] * (LIMIT + 2))
    assert sorted(statuses) == [101] * LIMIT + [503] * 2


async def test_the_limit_is_per_node_across_workers(
    redis_server: RedisProcess, conns: Conns
) -> None:
    """Two workers (each with its own SO_REUSEPORT listener) draw from one bucket: the
    limit holds for the node, not per worker."""
    handle = start_server(deep_merge(redis_config(redis_server.port), CONFIG), workers=2)
    try:
        await asyncio.sleep(1.0)  # a full bucket (the refill interval, as in `srv`)
        statuses = await conns.send_together(handle.port, [LEAN_WS] * (LIMIT + 8))
        assert sorted(statuses) == [101] * LIMIT + [503] * 8
    finally:
        await conns.close()
        handle.stop()
