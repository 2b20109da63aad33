"""Bidirectional emulation over Server-Sent Events (research §1.13).

`GET sse.handler_prefix?cf_connect=<URL-encoded JSON connect command>` (what
EventSource can do) or `POST` with the command as the body. The response is
`text/event-stream`: a leading CRLF, then one `data: <Reply JSON>\\n\\n` event per
message. Later commands arrive by `POST /emulation`. SSE is JSON only.
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.config import Config
from app.node import NODE_KEY
from app.protocol.json import JSON
from app.transports.cors import cors_headers, empty_response, preflight_response
from app.transports.http_stream import (
    DEFAULT_BODY_LIMIT,
    NO_CACHE_HEADERS,
    STATUS_CLIENT_CLOSED,
    BodyTooLarge,
    StreamTransport,
    ensure_peer_watch,
    read_body,
    reject_request,
    serve_stream,
)

log = logging.getLogger("centrifugo.sse")

CONNECT_PARAM = "cf_connect"


class SSETransport(StreamTransport):
    name = "sse"

    __slots__ = ()

    def encode(self, frame: bytes) -> bytes:
        # One event per message, as Centrifugo writes them. JSON messages never
        # hold a raw newline (orjson output, compact payloads), so the separator
        # split is exact.
        return b"".join(b"data: " + m + b"\n\n" for m in frame.split(self.codec.separator))


async def sse_handler(request: web.Request) -> web.StreamResponse:
    cfg = request.app[NODE_KEY].config
    allowed = cfg.client.allowed_origins
    if request.method == "OPTIONS":
        return preflight_response(request, allowed, "GET, POST, OPTIONS")
    cors = cors_headers(request, allowed)
    rejected = reject_request(request, cfg)
    if rejected is not None:
        return rejected
    limit = cfg.sse.max_request_body_size
    if limit <= 0:
        limit = DEFAULT_BODY_LIMIT
    if request.method == "GET":
        connect = request.query.get(CONNECT_PARAM, "")
        if not connect:
            log.debug("sse: no connect command")
            return empty_response(400, cors)
        data = connect.encode()
    elif request.method == "POST":
        try:
            data = await read_body(request, limit)
        except BodyTooLarge:
            log.info("sse: request body over sse.max_request_body_size")
            return empty_response(413, cors)
        except ConnectionError as e:
            log.info("error reading sse request body: %s", e)
            return empty_response(STATUS_CLIENT_CLOSED, cors)
    else:
        return empty_response(405, cors)
    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        **NO_CACHE_HEADERS,
        **cors,
    }
    return await serve_stream(
        request,
        lambda resp: SSETransport(resp, JSON),
        data,
        headers,
        preamble=b"\r\n",
        size_limit=limit,
    )


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register `sse.handler_prefix` when `sse.enabled`."""
    if not cfg.sse.enabled:
        return
    ensure_peer_watch(app)
    prefix = cfg.sse.handler_prefix.rstrip("/") or "/"
    app.router.add_route("*", prefix, sse_handler)
