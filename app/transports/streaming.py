"""The streaming HTTP base: one response the server keeps writing to (research §1.12, §1.13).

SSE and HTTP-stream (bidirectional through `POST /emulation`), uni_sse and uni_http_stream
all serve a connection the same way, here: the request body read within its bound
(`read_body`), one `StreamTransport` per connection, `serve_stream` to run it, and one
`PeerWatch` per worker noticing peers that left. What differs between them is only how
messages look on the wire (a `Framing`: newline-terminated JSON or varint-prefixed
Protobuf, SSE `data:` events) and how the connect request is decoded (their handlers).

Bidirectional and unidirectional streams differ in one more way, decided by
`StreamTransport.unidirectional`:
- bidirectional (SSE, HTTP-stream): the headers go out first, then the connect command
  runs, as in centrifuge's handlers; the session is registered in `node.sessions` so that
  `POST /emulation` finds it.
- unidirectional: connect runs first, because its outcome decides the status line
  (`connect_code_to_http_response`); frames written meanwhile wait in the transport.

Every write of a stream, the last chunk included, gets Centrifugo's one second
(streamWriteTimeout, `closing.STREAM_WRITE_TIMEOUT`) before the peer counts as gone; once
the stream ends its socket is released within that same bound (app/transports/closing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from app.client import Client
from app.errors import Disconnect
from app.node import NODE_KEY
from app.protocol import Codec
from app.transport import Transport
from app.transports import closing

log = logging.getLogger("centrifugo.streaming")

# Used when a bidirectional endpoint's max_request_body_size is configured as 0
# (Centrifugo's default limit); README's bounds table names it.
DEFAULT_BODY_LIMIT = 64 * 1024
# Status Centrifugo answers when the peer vanished while sending its body (nginx's 499).
STATUS_CLIENT_CLOSED = 499
# How often streams are checked for a peer that went away without us writing. A write to
# a gone peer fails anyway (pings at the latest); this just frees state sooner.
PEER_CHECK_INTERVAL = 1.0

# Centrifugo's streaming responses (the misspelt `Expire` header included).
NO_CACHE_HEADERS = {
    "X-Accel-Buffering": "no",
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expire": "0",
}


class BodyTooLarge(Exception):
    """The request body is larger than the endpoint's max_request_body_size (HTTP 413)."""


def body_limit(configured: int) -> int:
    """The body bound of a bidirectional endpoint (SSE, HTTP-stream, emulation): 0 means
    Centrifugo's default, 64 KiB."""
    return configured if configured > 0 else DEFAULT_BODY_LIMIT


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (exactly `limit` is fine;
    `limit` <= 0: unbounded, the unidirectional endpoints' reading of 0).

    Raises BodyTooLarge, or ConnectionError when the body does not arrive whole."""
    declared = request.content_length
    if limit > 0 and declared is not None and declared > limit:
        raise BodyTooLarge
    buf = bytearray()
    try:
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit > 0:
                raise BodyTooLarge
    except HttpProcessingError as e:  # truncated or malformed body framing
        raise ConnectionError(str(e)) from e
    return bytes(buf)


# How a frame of messages (joined by the codec's separator) looks on one kind of stream.
Framing = Callable[[bytes], bytes]


def delimited(codec: Codec) -> Framing:
    """HTTP-stream: JSON messages each end with "\\n" (the separator inside the frame
    already splits them); Protobuf ones are varint-length-prefixed, with no separator."""
    sep = codec.separator
    return lambda frame: frame + sep


def sse_events(codec: Codec) -> Framing:
    """SSE: one `data:` event per message, as Centrifugo writes them. JSON messages never
    hold a raw newline (orjson output, compact payloads), so the separator split is exact.
    SSE is JSON only."""
    sep = codec.separator
    return lambda frame: b"".join(b"data: " + m + b"\n\n" for m in frame.split(sep))


class StreamTransport:
    """A Client's side of one streaming response (the writer's async path, app/writer.py).

    Frames written before the response starts (a unidirectional connect push, or the
    disconnect push of a failed connect) wait in memory: the status line must not go out
    before connect has decided between 200 and an error status. `done` is set when the
    client closed the connection or the peer went away; the handler then returns.
    """

    disconnect_push = True  # no close frame here: the disconnect travels as a push

    __slots__ = ("name", "codec", "unidirectional", "_framing", "_resp", "_pending", "done")

    def __init__(self, name: str, codec: Codec, framing: Framing, *, unidirectional: bool) -> None:
        self.name = name
        self.codec = codec
        self.unidirectional = unidirectional
        self._framing = framing
        self._resp: web.StreamResponse | None = None
        self._pending: list[bytes] = []
        self.done = asyncio.Event()

    async def write(self, frame: bytes) -> None:
        if self._resp is None:
            self._pending.append(frame)
            return
        try:
            await closing.write_stream(self._resp, self._framing(frame))
        except TimeoutError:
            raise ConnectionError("stream write timed out") from None

    async def start(self, resp: web.StreamResponse, preamble: bytes = b"") -> None:
        """Send the preamble and the held frames, then let writes through."""
        if preamble:
            await closing.write_stream(resp, preamble)
        while self._pending:
            batch, self._pending = self._pending, []
            for frame in batch:
                await closing.write_stream(resp, self._framing(frame))
        # No await since the last check: no frame can slip in between.
        self._resp = resp

    async def close(self, disconnect: Disconnect) -> None:
        self.done.set()

    def peer_gone(self) -> None:
        self.done.set()


# The contract it satisfies (app/transport.py), checked by mypy.
_transport: type[Transport] = StreamTransport


class PeerWatch:
    """Notices streams whose peer closed the socket while we had nothing to write.

    aiohttp does not cancel a handler when its connection drops, and a streaming handler
    never reads, so one task per worker looks at the sockets of all open streams (cheap:
    an attribute check each) instead of a timer per stream."""

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


PEER_WATCH = web.AppKey("stream_peer_watch", PeerWatch)


def ensure_peer_watch(app: web.Application) -> None:
    """Give the app its PeerWatch (with its cleanup) once; every streaming endpoint's
    `add_routes` calls it."""
    if PEER_WATCH not in app:
        watch = app[PEER_WATCH] = PeerWatch()
        app.on_cleanup.append(watch.stop)


# Runs the connect command on the new client: True keeps the stream open until either
# side closes; False ends it (the client is closed, its disconnect push is the body);
# a Response is answered instead of the stream (unidirectional only: the headers are
# not out yet).
Connect = Callable[[Client], Awaitable[bool | web.Response]]


async def serve_stream(
    request: web.Request,
    transport: StreamTransport,
    headers: dict[str, str],
    connect: Connect,
    *,
    preamble: bytes = b"",
) -> web.StreamResponse:
    """Connect a client on `transport` and stream to it until either side closes."""
    node = request.app[NODE_KEY]
    session = str(uuid.uuid4())  # reported in the connect result or push
    client = Client(node, transport, session=session, headers=request.headers)
    emulated = not transport.unidirectional  # commands arrive by POST /emulation
    watch = request.app[PEER_WATCH]
    resp = web.StreamResponse(status=200, headers=headers)
    # The stream is the connection's last response: once it ends the socket is released
    # (bounded, app/transports/closing.py), not kept for a next request.
    resp.force_close()
    sock = request.transport
    streamed = False
    try:
        if emulated:
            await resp.prepare(request)
            streamed = True
            await transport.start(resp, preamble)
            node.sessions[session] = client
            watch.add(transport, request)
        outcome = await connect(client)
        if isinstance(outcome, web.Response):
            return outcome
        if not streamed:
            await resp.prepare(request)
            streamed = True
            await transport.start(resp, preamble)
            watch.add(transport, request)
        if outcome:
            await transport.done.wait()
        await closing.end_stream(resp)
    except (ConnectionError, RuntimeError, OSError) as e:
        # The peer went away mid-write (or took nothing for STREAM_WRITE_TIMEOUT).
        log.debug("%s stream of client %s ended: %r", transport.name, client.uid, e)
    finally:
        watch.discard(transport)
        if emulated and node.sessions.get(session) is client:
            del node.sessions[session]
        await client.transport_closed()
        if streamed:
            closing.release(sock, closing.STREAM_WRITE_TIMEOUT)
    return resp
