"""Bidirectional emulation over one streaming HTTP response (research §1.13).

`POST http_stream.handler_prefix` carries the encoded connect command in its
body; the response stays open and streams Replies (JSON: one per line;
Protobuf: varint-length-prefixed). Later commands arrive by `POST /emulation`
with the `session` and `node` from the connect result (app/transports/emulation.py).

The streaming machinery here (`StreamTransport`, `serve_stream`) is shared with
the SSE transport, which differs only in framing.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from app.client import Client
from app.config import Config
from app.errors import DISCONNECT_BAD_REQUEST, Disconnect
from app.node import NODE_KEY
from app.protocol import Codec
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF
from app.transports import admission, closing
from app.transports.cors import cors_headers, empty_response, origin_allowed, preflight_response

log = logging.getLogger("centrifugo.http_stream")

# Used when a max_request_body_size is configured as 0 (Centrifugo's default limit).
DEFAULT_BODY_LIMIT = 64 * 1024
# Status Centrifugo answers when the peer vanished while sending its body (nginx's 499).
STATUS_CLIENT_CLOSED = 499
# How often streams are checked for a peer that went away without us writing.
PEER_CHECK_INTERVAL = 1.0

NO_CACHE_HEADERS = {
    "X-Accel-Buffering": "no",
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expire": "0",
}


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (exactly `limit` is fine).

    Raises BodyTooLarge, or ConnectionError when the body does not arrive whole."""
    if limit <= 0:
        limit = DEFAULT_BODY_LIMIT
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge
    buf = bytearray()
    try:
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                raise BodyTooLarge
    except HttpProcessingError as e:  # truncated or malformed body framing
        raise ConnectionError(str(e)) from e
    return bytes(buf)


def codec_for_content_type(content_type: str) -> Codec:
    """JSON unless the request says application/octet-stream (then Protobuf)."""
    return PROTOBUF if content_type == "application/octet-stream" else JSON


class _PeerWatch:
    """Notices streams whose peer closed the socket while we had nothing to write.

    aiohttp does not cancel a handler when its connection drops, and a streaming
    handler never reads, so one task per worker looks at the sockets of all open
    streams (cheap: an attribute check each) instead of a timer per stream."""

    def __init__(self) -> None:
        self._streams: dict[StreamTransport, web.Request] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, transport: StreamTransport, request: web.Request) -> None:
        self._streams[transport] = request
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, transport: StreamTransport) -> None:
        self._streams.pop(transport, None)

    async def _run(self) -> None:
        while self._streams:
            await asyncio.sleep(PEER_CHECK_INTERVAL)
            for transport, request in list(self._streams.items()):
                sock = request.transport
                if sock is None or sock.is_closing():
                    self._streams.pop(transport, None)
                    transport.peer_gone()

    async def stop(self, _app: web.Application | None = None) -> None:
        self._streams.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


PEER_WATCH = web.AppKey("emulation_peer_watch", _PeerWatch)


def ensure_peer_watch(app: web.Application) -> None:
    if PEER_WATCH not in app:
        watch = _PeerWatch()
        app[PEER_WATCH] = watch
        app.on_cleanup.append(watch.stop)


class StreamTransport(abc.ABC):
    """A Client's side of a streaming response. `write` frames each message for
    the wire; `close` ends the response (the handler returns)."""

    name = "http_stream"
    unidirectional = False
    disconnect_push = True  # no close frame here: the disconnect travels as a push

    __slots__ = ("_resp", "codec", "_done")

    def __init__(self, resp: web.StreamResponse, codec: Codec) -> None:
        self._resp = resp
        self.codec = codec
        self._done = asyncio.Event()

    @abc.abstractmethod
    def encode(self, frame: bytes) -> bytes:
        """How a frame of messages looks on this stream (lines, SSE events...)."""

    async def write(self, frame: bytes) -> None:
        try:
            await closing.write_stream(self._resp, self.encode(frame))
        except TimeoutError:
            raise ConnectionError("stream write timed out") from None

    async def close(self, disconnect: Disconnect) -> None:
        self._done.set()

    def peer_gone(self) -> None:
        self._done.set()

    async def wait_done(self) -> None:
        await self._done.wait()


class HttpStreamTransport(StreamTransport):
    name = "http_stream"

    __slots__ = ()

    def encode(self, frame: bytes) -> bytes:
        # JSON: every message ends with "\n" (the separator inside the frame
        # already splits them); Protobuf: length-prefixed, no separator.
        return frame + self.codec.separator


def reject_request(request: web.Request, cfg: Config) -> web.Response | None:
    """The checks every connection endpoint makes before reading anything."""
    refused = admission.refuse(request.app[NODE_KEY])
    if refused is not None:
        return refused
    if not origin_allowed(request.headers.get("Origin"), cfg.client.allowed_origins):
        log.info("request Origin %r is not allowed", request.headers.get("Origin"))
        return web.Response(status=403, text="Invalid origin")
    return None


async def serve_stream(
    request: web.Request,
    make_transport: Callable[[web.StreamResponse], StreamTransport],
    data: bytes,
    headers: dict[str, str],
    *,
    preamble: bytes = b"",
    size_limit: int = 0,
) -> web.StreamResponse:
    """Open the streaming response, run the connect command in `data`, then keep
    the stream (and the session) alive until the client closes or the peer leaves."""
    node = request.app[NODE_KEY]
    resp = web.StreamResponse(headers=headers)
    # The stream is the connection's last response: once it ends the socket is released
    # (bounded, app/transports/closing.py), not kept for a next request.
    resp.force_close()
    sock = request.transport
    transport = make_transport(resp)
    await resp.prepare(request)
    if preamble:
        await resp.write(preamble)
    session = str(uuid.uuid4())
    client = Client(node, transport, session=session, headers=request.headers)
    node.sessions[session] = client
    watch = request.app.get(PEER_WATCH)
    if watch is not None:
        watch.add(transport, request)
    try:
        if size_limit and len(data) > size_limit:
            # A connect command over the limit (SSE GET) is a bad request, as a
            # too long WebSocket message would be.
            await client.close(Disconnect(DISCONNECT_BAD_REQUEST))
        elif await client.handle_frame(data):
            await transport.wait_done()
        await closing.end_stream(resp)
    finally:
        if watch is not None:
            watch.discard(transport)
        if node.sessions.get(session) is client:
            del node.sessions[session]
        await client.transport_closed()
        closing.release(sock, closing.STREAM_WRITE_TIMEOUT)
    return resp


async def http_stream_handler(request: web.Request) -> web.StreamResponse:
    cfg = request.app[NODE_KEY].config
    allowed = cfg.client.allowed_origins
    if request.method == "OPTIONS":
        return preflight_response(request, allowed, "POST, OPTIONS")
    cors = cors_headers(request, allowed)
    rejected = reject_request(request, cfg)
    if rejected is not None:
        return rejected
    if request.method != "POST":
        return empty_response(405, cors)
    codec = codec_for_content_type(request.content_type)
    try:
        data = await read_body(request, cfg.http_stream.max_request_body_size)
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
    return await serve_stream(request, lambda resp: HttpStreamTransport(resp, codec), data, headers)


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register `http_stream.handler_prefix` when `http_stream.enabled`."""
    if not cfg.http_stream.enabled:
        return
    ensure_peer_watch(app)
    prefix = cfg.http_stream.handler_prefix.rstrip("/") or "/"
    app.router.add_route("*", prefix, http_stream_handler)
