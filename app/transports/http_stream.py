"""Bidirectional emulation over one streaming HTTP response (research §1.13).

`POST http_stream.handler_prefix` carries the encoded connect command in its
body; the response stays open and streams Replies (JSON: one per line;
Protobuf: varint-length-prefixed). Later commands arrive by `POST /emulation`
with the `session` and `node` from the connect result (app/transports/emulation.py).

The stream itself is served by app/transports/streaming.py, as SSE's is: only the
framing (`streaming.delimited`) and the codec choice are this endpoint's.
"""

from __future__ import annotations

import logging

from aiohttp import web

from app.client import Client
from app.config import Config
from app.node import NODE_KEY
from app.protocol import Codec
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF
from app.transports import admission
from app.transports.cors import cors_headers, empty_response, preflight_response
from app.transports.streaming import (
    NO_CACHE_HEADERS,
    STATUS_CLIENT_CLOSED,
    BodyTooLarge,
    StreamTransport,
    body_limit,
    delimited,
    ensure_peer_watch,
    read_body,
    serve_stream,
)

log = logging.getLogger("centrifugo.http_stream")


def codec_for_content_type(content_type: str) -> Codec:
    """JSON unless the request says application/octet-stream (then Protobuf)."""
    return PROTOBUF if content_type == "application/octet-stream" else JSON


async def http_stream_handler(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    cfg = node.config
    allowed = cfg.client.allowed_origins
    if request.method == "OPTIONS":
        return preflight_response(request, allowed, "POST, OPTIONS")
    cors = cors_headers(request, allowed)
    refused = admission.check(node, request.headers.get("Origin"))
    if refused is not None:
        return refused.response()
    if request.method != "POST":
        return empty_response(405, cors)
    codec = codec_for_content_type(request.content_type)
    try:
        data = await read_body(request, body_limit(cfg.http_stream.max_request_body_size))
    except BodyTooLarge:
        log.info("http_stream: request body over http_stream.max_request_body_size")
        return empty_response(413, cors)
    except ConnectionError as e:
        log.info("error reading http stream request body: %s", e)
        return empty_response(STATUS_CLIENT_CLOSED, cors)
    headers: dict[str, str] = {
        "Content-Type": (
            "text/plain; charset=utf-8" if codec is JSON else "application/octet-stream"
        ),
        **NO_CACHE_HEADERS,
        **cors,
    }

    async def connect(client: Client) -> bool:
        return await client.handle_frame(data)

    transport = StreamTransport("http_stream", codec, delimited(codec), unidirectional=False)
    return await serve_stream(request, transport, headers, connect)


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register `http_stream.handler_prefix` when `http_stream.enabled`."""
    if not cfg.http_stream.enabled:
        return
    ensure_peer_watch(app)
    prefix = cfg.http_stream.handler_prefix.rstrip("/") or "/"
    app.router.add_route("*", prefix, http_stream_handler)
