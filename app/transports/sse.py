"""Bidirectional emulation over Server-Sent Events (research §1.13).

`GET sse.handler_prefix?cf_connect=<URL-encoded JSON connect command>` (what
EventSource can do) or `POST` with the command as the body. The response is
`text/event-stream`: a leading CRLF, then one `data: <Reply JSON>\\n\\n` event per
message. Later commands arrive by `POST /emulation`. SSE is JSON only.

The stream is served by app/transports/streaming.py; the framing is `streaming.sse_events`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.client import Client
from app.config import Config
from app.errors import DISCONNECT_BAD_REQUEST, Disconnect
from app.node import NODE_KEY
from app.protocol.json import JSON
from app.transports import admission
from app.transports.cors import cors_headers, empty_response, preflight_response
from app.transports.streaming import (
    NO_CACHE_HEADERS,
    STATUS_CLIENT_CLOSED,
    BodyTooLarge,
    StreamTransport,
    body_limit,
    ensure_peer_watch,
    read_body,
    serve_stream,
    sse_events,
)

log = logging.getLogger("centrifugo.sse")

CONNECT_PARAM = "cf_connect"


async def sse_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config
    allowed = cfg.client.allowed_origins
    if request.method == "OPTIONS":
        return preflight_response(request, allowed, "GET, POST, OPTIONS")
    cors = cors_headers(request, allowed)
    refused = admission.check(node, request.headers.get("Origin"))
    if refused is not None:
        return refused.response()
    limit = body_limit(cfg.sse.max_request_body_size)
    if request.method == "GET":
        connect_param = request.query.get(CONNECT_PARAM, "")
        if not connect_param:
            log.debug("sse: no connect command")
            return empty_response(400, cors)
        data = connect_param.encode()
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

    async def connect(client: Client) -> bool:
        if len(data) > limit:
            # A connect command over the limit (a GET's query) is a bad request, as a
            # too long WebSocket message would be.
            await client.close(Disconnect(DISCONNECT_BAD_REQUEST))
            return False
        return await client.handle_frame(data)

    transport = StreamTransport("sse", JSON, sse_events(JSON), unidirectional=False)
    return await serve_stream(request, transport, headers, connect, preamble=b"\r\n")


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register `sse.handler_prefix` when `sse.enabled`."""
    if not cfg.sse.enabled:
        return
    ensure_peer_watch(app)
    prefix = cfg.sse.handler_prefix.rstrip("/") or "/"
    app.router.add_route("*", prefix, sse_handler)
