"""Unidirectional Server-Sent Events at `uni_sse.handler_prefix` (research §1.12).

GET with an optional `cf_connect` query parameter (a JSON ConnectRequest; absent means
`{}`, so a plain EventSource works), or POST with the ConnectRequest as the JSON body.
Each Push travels as one event, `data: <json>\\n\\n`.

The stream is served by app/transports/streaming.py and the connect step is
app/transports/uni_connect.py's, both shared with uni_http_stream.
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.client import Client
from app.config import Config
from app.node import NODE_KEY
from app.protocol.json import JSON_UNI
from app.transports import admission
from app.transports.cors import cors_headers, empty_response, with_headers
from app.transports.streaming import (
    NO_CACHE_HEADERS,
    STATUS_CLIENT_CLOSED,
    BodyTooLarge,
    StreamTransport,
    ensure_peer_watch,
    read_body,
    serve_stream,
    sse_events,
)
from app.transports.uni_connect import BadConnectRequest, connect_stream, decode_connect_request

log = logging.getLogger("centrifugo.uni_sse")

CONNECT_PARAM = "cf_connect"


async def uni_sse_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config.uni_sse
    # Centrifugo's middleware order: ConnLimit (no CORS headers on its 503), then CORS
    # (headers on every answer below), then the handler, which has no preflight branch:
    # OPTIONS is 405 like any method but GET and POST.
    refused = admission.check(node)  # no origin check here, as in Centrifugo
    if refused is not None:
        return refused.response()
    cors = cors_headers(request, node.config.client.allowed_origins)
    if request.method not in ("GET", "POST"):
        return empty_response(405, cors)
    if request.method == "GET":
        raw: bytes | str = request.query.get(CONNECT_PARAM, "") or "{}"
    else:
        try:
            # 0 leaves the body unbounded here (README bounds the bidirectional endpoints).
            raw = await read_body(request, cfg.max_request_body_size)
        except BodyTooLarge:
            return empty_response(413, cors)
        except ConnectionError as e:
            log.info("error reading uni_sse request body: %s", e)
            return empty_response(STATUS_CLIENT_CLOSED, cors)
    try:
        connect_request = decode_connect_request(raw)
    except BadConnectRequest as e:
        log.info("uni_sse: malformed connect request: %s", e)
        return empty_response(400, cors)

    async def connect(client: Client) -> bool | web.Response:
        return with_headers(
            await connect_stream(client, connect_request, cfg.connect_code_to_http_response),
            cors,
        )

    return await serve_stream(
        request,
        # A frame is newline-joined pushes (compact JSON has no raw newlines): one event each.
        StreamTransport("uni_sse", JSON_UNI, sse_events(JSON_UNI), unidirectional=True),
        {**NO_CACHE_HEADERS, "Content-Type": "text/event-stream; charset=utf-8", **cors},
        connect,
        # Flushes the headers at once so EventSource reports the stream open.
        preamble=b"\r\n",
    )


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register the uni_sse endpoint (GET and POST) when `uni_sse.enabled`."""
    if not cfg.uni_sse.enabled:
        return
    ensure_peer_watch(app)
    app.router.add_route("*", cfg.uni_sse.handler_prefix, uni_sse_handler)
