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
    if request.method == "OPTIONS":
        return web.Response(
            status=204,
            headers={
                "Access-Control-Max-Age": "300",
                "Access-Control-Allow-Methods": "POST, OPTIONS",
            },
        )
    if request.method != "POST":
        return web.Response(status=405)
    refused = admission.check(node)  # no origin check here, as in Centrifugo
    if refused is not None:
        return refused.response()
    try:
        # 0 leaves the body unbounded here (README bounds the bidirectional endpoints).
        body = await read_body(request, cfg.max_request_body_size)
    except BodyTooLarge:
        return web.Response(status=413)
    except ConnectionError as e:
        log.info("error reading uni_http_stream request body: %s", e)
        return web.Response(status=STATUS_CLIENT_CLOSED)
    try:
        connect_request = decode_connect_request(body)
    except BadConnectRequest as e:
        # One info line per refused body, as uni_sse writes (Centrifugo logs this one at
        # debug level, which would leave a refused request without a trace at info).
        log.info("uni_http_stream: malformed connect request: %s", e)
        return web.Response(status=400)

    async def connect(client: Client) -> bool | web.Response:
        return await connect_stream(client, connect_request, cfg.connect_code_to_http_response)

    return await serve_stream(
        request,
        # A frame is newline-joined pushes; each line ends with a newline on the wire.
        StreamTransport("uni_http_stream", JSON_UNI, delimited(JSON_UNI), unidirectional=True),
        # Go's net/http sniffs this type from the first push Centrifugo writes.
        {**NO_CACHE_HEADERS, "Content-Type": "text/plain; charset=utf-8"},
        connect,
    )


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register the uni_http_stream endpoint when `uni_http_stream.enabled`."""
    if not cfg.uni_http_stream.enabled:
        return
    ensure_peer_watch(app)
    app.router.add_route("*", cfg.uni_http_stream.handler_prefix, uni_http_stream_handler)
