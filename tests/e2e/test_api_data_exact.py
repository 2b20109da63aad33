"""Server API publication data passes through byte-exact (issue 14 point 3).

Centrifugo keeps `data` as the bytes received (json.RawMessage) from the API request to the
subscriber's frame and the history entry. Each value below changes under a parse-and-dump
round trip; each is published through /api/publish, /api/broadcast, /api/batch (one command,
and a batch long enough to be run and answered in chunks) and the legacy /api stream, then
read back from a raw WebSocket subscriber's frames and from /api/history as bytes.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from app.api.batch import BATCH_CHUNK
from tests.support.payloads import OPAQUE

from .helpers import RawWS, ServerHandle

CONFIG: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": False},
    "channel": {
        "without_namespace": {
            "history_size": 10,
            "history_ttl": "300s",
            "allow_subscribe_for_client": True,
        },
    },
}

VALUES = OPAQUE
CHANNELS = ("pub", "bc1", "bc2", "batch", "chunked", "legacy")


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    return server_factory(CONFIG)


def api_raw(server: ServerHandle, method: str, body: bytes) -> tuple[int, bytes]:
    """POST /api/<method>, or the legacy /api command stream when `method` is ""."""
    if method:
        return server.api_raw(method, body)
    headers = {"Content-Type": "application/json", "X-API-Key": server.api_key}
    req = urllib.request.Request(server.api_url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(server: ServerHandle, method: str, body: bytes) -> bytes:
    status, reply = api_raw(server, method, body)
    assert status == 200, (method, status, reply[:200])
    assert b'"error"' not in reply, (method, reply[:300])
    return reply


def publish_everywhere(server: ServerHandle, prefix: str, data: bytes) -> None:
    ch = {name: f"{prefix}-{name}".encode() for name in CHANNELS}
    _post(server, "publish", b'{"channel":"%s","data":%s}' % (ch["pub"], data))
    _post(server, "broadcast", b'{"channels":["%s","%s"],"data":%s}' % (ch["bc1"], ch["bc2"], data))
    one = b'{"publish":{"channel":"%s","data":%s}}' % (ch["batch"], data)
    _post(server, "batch", b'{"commands":[' + one + b"]}")
    # Longer than a chunk: the command after the first chunk is decoded and run on its own
    # and its reply streamed after the others.
    filler = b'{"publish":{"channel":"%s-filler","data":0}},' % prefix.encode()
    last = b'{"publish":{"channel":"%s","data":%s}}' % (ch["chunked"], data)
    reply = _post(server, "batch", b'{"commands":[' + filler * BATCH_CHUNK + last + b"]}")
    assert reply.count(b'"publish"') == BATCH_CHUNK + 1
    status, reply = api_raw(
        server,
        "",
        b'{"method":"publish","params":{"channel":"%s","data":%s}}' % (ch["legacy"], data),
    )
    assert status == 200 and b'"result"' in reply, reply


_PUSH = re.compile(rb'^\{"push":\{"channel":"([^"]+)","pub":\{"data":')


async def pushed_data(ws: RawWS, count: int) -> dict[str, bytes]:
    """Channel -> the bytes after `"data":` of the next `count` publication pushes."""
    out: dict[str, bytes] = {}
    while len(out) < count:
        frame = (await ws.recv_frame()).encode()
        for line in frame.split(b"\n"):
            m = _PUSH.match(line)
            if m is not None:
                out[m.group(1).decode()] = line[m.end() :]
    return out


def assert_spliced(where: str, after: bytes, data: bytes) -> None:
    """`after` (what follows `"data":`) starts with exactly `data`, then the next field."""
    assert after[: len(data)] == data and after[len(data) : len(data) + 1] in (b",", b"}"), (
        f"{where}: expected {data[:80]!r}, got {after[: len(data) + 20][:120]!r}"
    )


@pytest.mark.parametrize("name", VALUES)
async def test_publication_data_is_byte_exact(server: ServerHandle, name: str) -> None:
    data = VALUES[name]
    async with RawWS.connect(server.ws_url) as ws:
        await ws.connect_cmd(server.token("exact"))
        for ch in CHANNELS:
            reply = await ws.command({"subscribe": {"channel": f"{name}-{ch}"}})
            assert "subscribe" in reply, reply
        publish_everywhere(server, name, data)
        pushes = await pushed_data(ws, len(CHANNELS))
    for ch in CHANNELS:
        channel = f"{name}-{ch}"
        assert_spliced(f"push {channel}", pushes[channel], data)
        body = _post(server, "history", b'{"channel":"%s","limit":-1}' % channel.encode())
        i = body.index(b'"data":') + len(b'"data":')
        assert_spliced(f"history {channel}", body[i:], data)


@pytest.mark.parametrize(
    "method,body",
    [
        ("publish", b'{"channel":"d","data":%s}'),
        ("broadcast", b'{"channels":["d"],"data":%s}'),
        ("batch", b'{"commands":[{"publish":{"channel":"d","data":%s}}]}'),
        ("batch", b'{"commands":[' + b"{}," * BATCH_CHUNK + b'{"publish":{"data":%s}}]}'),
        ("", b'{"method":"publish","params":{"channel":"d","data":%s}}'),
        ("", b"%s"),
    ],
)
def test_body_nested_too_deeply_is_400_with_one_log_line(
    server: ServerHandle, method: str, body: bytes
) -> None:
    too_deep = b"[" * 2000 + b"]" * 2000
    before = server.log_text().count("api request rejected")
    status, text = api_raw(server, method, body % too_deep)
    assert (status, text.strip()) == (400, b"Bad Request")
    log = server.log_text()
    assert log.count("api request rejected") == before + 1
    assert "Traceback" not in log and "RecursionError" not in log
    # nothing of it was published
    status, reply = server.api_raw("history", b'{"channel":"d"}')
    assert b'"offset":0,' in reply, reply
