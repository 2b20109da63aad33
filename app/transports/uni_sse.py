"""Unidirectional Server-Sent Events at `uni_sse.handler_prefix` (research §1.12).

GET with an optional `cf_connect` query parameter (a JSON ConnectRequest; absent means
`{}`, so a plain EventSource works), or POST with the ConnectRequest as the JSON body.
Each Push travels as one event, `data: <json>\\n\\n`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.config import Config
from app.node import NODE_KEY
from app.transports.uni_http_stream import (
    BadConnectRequest,
    StreamTransport,
    decode_connect_request,
    peer_watcher,
    read_limited_body,
    serve_stream,
    service_unavailable,
)

log = logging.getLogger("centrifugo.uni_sse")

CONNECT_PARAM = "cf_connect"


def _events(frame: bytes) -> bytes:
    # A frame is newline-joined pushes (compact JSON has no raw newlines): one event each.
    return b"".join(b"data: " + msg + b"\n\n" for msg in frame.split(b"\n"))


async def uni_sse_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config.uni_sse
    if request.method not in ("GET", "POST"):
        return web.Response(status=405)
    unavailable = service_unavailable(node)
    if unavailable is not None:
        return unavailable
    if request.method == "GET":
        raw: bytes | str = request.query.get(CONNECT_PARAM, "") or "{}"
    else:
        body = await read_limited_body(request, cfg.max_request_body_size)
        if body is None:
            return web.Response(status=413)
        raw = body
    try:
        connect_request = decode_connect_request(raw)
    except BadConnectRequest as e:
        log.info("uni_sse: malformed connect request: %s", e)
        return web.Response(status=400)
    return await serve_stream(
        request,
        StreamTransport("uni_sse", _events),
        connect_request,
        cfg.connect_code_to_http_response,
        {"Content-Type": "text/event-stream; charset=utf-8"},
        # Flushes the headers at once so EventSource reports the stream open.
        preamble=b"\r\n",
    )


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register the uni_sse endpoint (GET and POST) when `uni_sse.enabled`."""
    if not cfg.uni_sse.enabled:
        return
    peer_watcher(app)
    app.router.add_route("*", cfg.uni_sse.handler_prefix, uni_sse_handler)
