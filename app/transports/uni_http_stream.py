"""Unidirectional HTTP streaming at `uni_http_stream.handler_prefix` (research §1.12).

The client POSTs a JSON ConnectRequest and reads a chunked response of JSON Push objects,
one per line: `connect` first, then publications, join/leave, `{}` pings, and finally a
`disconnect` push before the server ends the response.

The stream is served by app/transports/streaming.py and the connect step is
app/transports/uni_connect.py's, both shared with uni_sse.
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.client import Client
from app.config import Config
from app.node import NODE_KEY
from app.protocol.json import JSON_UNI
from app.transports import admission
from app.transports.cors import cors_headers, empty_response, preflight_response, with_headers
from app.transports.streaming import (
    NO_CACHE_HEADERS,
    STATUS_CLIENT_CLOSED,
    BodyTooLarge,
    StreamTransport,
    delimited,
    ensure_peer_watch,
    read_body,
    serve_stream,
)
from app.transports.uni_connect import BadConnectRequest, connect_stream, decode_connect_request

log = logging.getLogger("centrifugo.uni")


async def uni_http_stream_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config.uni_http_stream
    # Centrifugo's middleware order: ConnLimit (no CORS headers on its 503, OPTIONS
    # included), then CORS (headers on every answer below), then the handler.
    refused = admission.check(node)  # no origin check here, as in Centrifugo
    if refused is not None:
        return refused.response()
    allowed = node.config.client.allowed_origins
    if request.method == "OPTIONS":
        return preflight_response(request, allowed, "POST, OPTIONS")
    cors = cors_headers(request, allowed)
    if request.method != "POST":
        return empty_response(405, cors)
    try:
        # 0 leaves the body unbounded here (README bounds the bidirectional endpoints).
        body = await read_body(request, cfg.max_request_body_size)
    except BodyTooLarge:
        return empty_response(413, cors)
    except ConnectionError as e:
        log.info("error reading uni_http_stream request body: %s", e)
        return empty_response(STATUS_CLIENT_CLOSED, cors)
    try:
        connect_request = decode_connect_request(body)
    except BadConnectRequest as e:
        # One info line per refused body, as uni_sse writes (Centrifugo logs this one at
        # debug level, which would leave a refused request without a trace at info).
        log.info("uni_http_stream: malformed connect request: %s", e)
        return empty_response(400, cors)

    async def connect(client: Client) -> bool | web.Response:
        return with_headers(
            await connect_stream(client, connect_request, cfg.connect_code_to_http_response),
            cors,
        )

    return await serve_stream(
        request,
        # A frame is newline-joined pushes; each line ends with a newline on the wire.
        StreamTransport("uni_http_stream", JSON_UNI, delimited(JSON_UNI), unidirectional=True),
        # Go's net/http sniffs this type from the first push Centrifugo writes.
        {**NO_CACHE_HEADERS, "Content-Type": "text/plain; charset=utf-8", **cors},
        connect,
    )


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register the uni_http_stream endpoint when `uni_http_stream.enabled`."""
    if not cfg.uni_http_stream.enabled:
        return
    ensure_peer_watch(app)
    app.router.add_route("*", cfg.uni_http_stream.handler_prefix, uni_http_stream_handler)
