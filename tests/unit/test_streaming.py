"""The streaming base (app/transports/streaming.py) and the admission check
(app/transports/admission.py): the body bound every streaming endpoint reads with, the two
framings, and the one check's order and forms. A real aiohttp server on loopback serves the
body reader; a real Node (memory engine) is what the check looks at."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.node import Node
from app.protocol.json import JSON, JSON_UNI
from app.protocol.protobuf import PROTOBUF
from app.transports import admission
from app.transports.streaming import (
    DEFAULT_BODY_LIMIT,
    BodyTooLarge,
    body_limit,
    delimited,
    read_body,
    sse_events,
)
from tests.support.node import memory_node

LIMIT = 16


async def _serve_body(limit: int) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            return web.Response(status=413)
        return web.Response(text=str(len(body)))

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/"


async def _post(url: str, body: bytes, *, chunked: bool) -> tuple[int, str]:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 4):
            yield body[i : i + 4]

    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=chunks() if chunked else body) as resp,
    ):
        return resp.status, await resp.text()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_of_exactly_the_limit_passes_one_byte_more_is_413(chunked: bool) -> None:
    runner, url = await _serve_body(LIMIT)
    try:
        assert await _post(url, b"x" * LIMIT, chunked=chunked) == (200, str(LIMIT))
        status, _ = await _post(url, b"x" * (LIMIT + 1), chunked=chunked)
        assert status == 413
    finally:
        await runner.cleanup()


async def test_a_limit_of_zero_reads_any_body() -> None:
    # The unidirectional endpoints' reading of max_request_body_size 0.
    runner, url = await _serve_body(0)
    try:
        size = DEFAULT_BODY_LIMIT * 2
        assert await _post(url, b"x" * size, chunked=True) == (200, str(size))
    finally:
        await runner.cleanup()


def test_bidirectional_endpoints_read_zero_as_centrifugos_64_kib() -> None:
    assert body_limit(0) == DEFAULT_BODY_LIMIT == 65536
    assert body_limit(10) == 10


def test_delimited_framing_ends_json_lines_and_leaves_protobuf_as_is() -> None:
    assert delimited(JSON)(b'{"a":1}\n{"b":2}') == b'{"a":1}\n{"b":2}\n'
    assert delimited(JSON_UNI)(b"{}") == b"{}\n"
    assert delimited(PROTOBUF)(b"\x02ab\x00") == b"\x02ab\x00"


def test_sse_framing_makes_one_event_per_message() -> None:
    assert sse_events(JSON)(b'{"a":1}\n{}') == b'data: {"a":1}\n\ndata: {}\n\n'


# ------------------------------------------------------------------------- admission


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cfg: dict[str, Any] = {"client": {"allowed_origins": ["https://*.example.com"]}}
    async with memory_node(tmp_path, cfg) as n:
        yield n


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # no Origin header passes, as in Centrifugo
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("https://example.org", False),
    ],
)
async def test_origin_is_part_of_the_check(node: Node, origin: str | None, allowed: bool) -> None:
    refused = admission.check(node, origin)
    if allowed:
        assert refused is None
    else:
        assert refused == admission.Refusal(403, "Invalid origin")
        assert refused.response().status == 403


async def test_a_draining_node_refuses_before_the_origin_is_looked_at(node: Node) -> None:
    node.closing = True
    refused = admission.check(node, "https://example.org")
    assert refused == admission.Refusal(503, admission.SHUTTING_DOWN)
    assert refused.head().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    # A request that opens no connection (emulation) is only checked for its origin.
    assert admission.check(node, "https://app.example.com", connection=False) is None
    assert admission.check(node, "https://example.org", connection=False) is not None
