"""Unidirectional HTTP streaming at `uni_http_stream.handler_prefix` (research §1.12).

The client POSTs a JSON ConnectRequest and reads a chunked response of JSON Push objects,
one per line: `connect` first, then publications, join/leave, `{}` pings, and finally a
`disconnect` push before the server ends the response.

This module also holds what the other unidirectional transports share: decoding the
ConnectRequest, running connect (with its errors turned into disconnects, or into HTTP
statuses by `connect_code_to_http_response`), and a stream transport that holds frames back
until the response headers are out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from app import jsonraw
from app.client import Client
from app.config import CodeTransformsConfig, Config
from app.errors import DISCONNECT_BAD_REQUEST, DISCONNECT_SERVER_ERROR, ClientError, Disconnect
from app.node import NODE_KEY, Node
from app.protocol import DecodeError
from app.protocol.gen.client_pb2 import ConnectRequest
from app.protocol.json import JSON_UNI
from app.transports import admission, closing

log = logging.getLogger("centrifugo.uni")

# Centrifugo's uni HTTP responses (the misspelt `Expire` header included).
NO_CACHE_HEADERS = {
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expire": "0",
    "X-Accel-Buffering": "no",
}

# How often streams the server only writes to are checked for a peer that went away. A
# write to a gone peer fails anyway (pings at the latest); this just frees state sooner.
PEER_CHECK_INTERVAL = 1.0


class BadConnectRequest(ValueError):
    """The ConnectRequest is not a JSON object (or `null`)."""


_CONNECT_REQUEST = jsonraw.decoder(ConnectRequest.DESCRIPTOR)


def decode_connect_request(data: bytes | str) -> dict[str, Any]:
    """A JSON ConnectRequest (its `data` kept as the bytes received); `null` is an empty
    request, as in Centrifugo."""
    buf = data.encode() if isinstance(data, str) else data
    if buf.strip() == b"null":
        return {}
    try:
        obj: dict[str, Any] = jsonraw.decode(_CONNECT_REQUEST, buf)
    except jsonraw.JsonError as e:
        raise BadConnectRequest(str(e)) from None
    return obj


async def read_limited_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than `limit` bytes (0 = no limit)."""
    if limit > 0 and (request.content_length or 0) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if limit > 0 and size > limit:
            return None
        chunks.append(chunk)


def service_unavailable(node: Node) -> web.Response | None:
    """503 while shutting down or over a connection limit (app/transports/admission.py)."""
    return admission.refuse(node)


def new_client(node: Node, transport: Any, headers: Any) -> Client:
    # Unidirectional connections get a session id, reported in the connect push.
    return Client(node, transport, session=str(uuid.uuid4()), headers=headers)


async def connect(client: Client, request: dict[str, Any]) -> bool:
    """Connect a unidirectional client; on failure it is already closed (disconnect push)."""
    try:
        return await client.connect_unidirectional(request)
    except Exception:
        log.exception("connect failed for client %s", client.uid)
        await client.close(Disconnect(DISCONNECT_SERVER_ERROR))
        return False


async def connect_or_error(
    client: Client, request: dict[str, Any]
) -> ClientError | Disconnect | None:
    """Connect keeping the original error (for `connect_code_to_http_response`); the
    client is left closed, with nothing sent, when the error is returned."""
    err: ClientError | Disconnect
    try:
        # The protocol connect command itself: connect_unidirectional would already have
        # turned an error into a disconnect code, losing the code the transforms match on.
        await client.connect_request(request)
        return None
    except (ClientError, Disconnect) as e:
        err = e
    except DecodeError:
        err = Disconnect(DISCONNECT_BAD_REQUEST)
    except Exception:
        log.exception("connect failed for client %s", client.uid)
        err = ClientError(100)
    await client.close(None)
    return err


def connect_error_response(
    err: ClientError | Disconnect, transforms: CodeTransformsConfig
) -> web.Response:
    """The configured HTTP answer for a connect error; 500 when no transform matches."""
    body = err.message if isinstance(err, ClientError) else err.reason
    for t in transforms.transforms:
        if t.get("code") != err.code:
            continue
        to = t.get("to") or {}
        status = int(to.get("status_code") or 0)
        if status <= 0:
            break
        return web.Response(status=status, text=str(to.get("body") or body))
    return web.Response(status=500, text="Internal Server Error")


class StreamTransport:
    """A unidirectional JSON stream over one HTTP response.

    Frames written before the response starts (the connect push, or the disconnect push
    of a failed connect) wait in memory: the status line must not go out before connect
    has decided between 200 and an error status.
    """

    codec = JSON_UNI
    unidirectional = True
    disconnect_push = True

    __slots__ = ("name", "_format", "_resp", "_pending", "done")

    def __init__(self, name: str, fmt: Callable[[bytes], bytes]) -> None:
        self.name = name
        self._format = fmt
        self._resp: web.StreamResponse | None = None
        self._pending: list[bytes] = []
        # Set when the client closed the connection or the peer went away.
        self.done = asyncio.Event()

    async def write(self, frame: bytes) -> None:
        if self._resp is None:
            self._pending.append(frame)
            return
        await closing.write_stream(self._resp, self._format(frame))

    async def start(self, resp: web.StreamResponse, preamble: bytes = b"") -> None:
        """Send the held frames, then let writes through."""
        if preamble:
            await closing.write_stream(resp, preamble)
        while self._pending:
            batch, self._pending = self._pending, []
            for frame in batch:
                await closing.write_stream(resp, self._format(frame))
        # No await since the last check: no frame can slip in between.
        self._resp = resp

    async def close(self, disconnect: Disconnect) -> None:
        self.done.set()


class PeerWatcher:
    """Notices peers gone from responses the server only writes to.

    aiohttp does not cancel handlers when a client disconnects, and a streaming handler
    reads nothing, so one task per worker checks the open streams' sockets instead of a
    timer per connection.
    """

    def __init__(self, interval: float = PEER_CHECK_INTERVAL) -> None:
        self.interval = interval
        self._watched: dict[asyncio.Event, web.Request] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, request: web.Request, gone: asyncio.Event) -> None:
        self._watched[gone] = request
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unwatch(self, gone: asyncio.Event) -> None:
        self._watched.pop(gone, None)

    async def _run(self) -> None:
        while self._watched:
            await asyncio.sleep(self.interval)
            for gone, request in list(self._watched.items()):
                t = request.transport
                if t is None or t.is_closing():
                    gone.set()
                    del self._watched[gone]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


PEER_WATCHER = web.AppKey("uni_peer_watcher", PeerWatcher)


def peer_watcher(app: web.Application) -> PeerWatcher:
    """The app's PeerWatcher, created (with its cleanup) on first use at setup time."""
    if PEER_WATCHER not in app:
        watcher = app[PEER_WATCHER] = PeerWatcher()

        async def stop(_: web.Application) -> None:
            await watcher.stop()

        app.on_cleanup.append(stop)
    return app[PEER_WATCHER]


async def serve_stream(
    request: web.Request,
    transport: StreamTransport,
    connect_request: dict[str, Any],
    http_response: CodeTransformsConfig,
    headers: dict[str, str],
    preamble: bytes = b"",
) -> web.StreamResponse:
    """Connect a client on `transport` and stream its pushes until either side closes."""
    node = request.app[NODE_KEY]
    client = new_client(node, transport, request.headers)
    watcher = request.app[PEER_WATCHER]
    resp = web.StreamResponse(status=200, headers={**NO_CACHE_HEADERS, **headers})
    # The stream is the connection's last response: once it ends the socket is released
    # (bounded, app/transports/closing.py), not kept for a next request.
    resp.force_close()
    sock = request.transport
    streamed = False
    try:
        if http_response.enabled:
            err = await connect_or_error(client, connect_request)
            if err is not None:
                return connect_error_response(err, http_response)
        else:
            # A failed connect still answers 200: its disconnect push is the body.
            await connect(client, connect_request)
        await resp.prepare(request)
        streamed = True
        await transport.start(resp, preamble)
        if not transport.done.is_set():
            watcher.watch(request, transport.done)
            try:
                await transport.done.wait()
            finally:
                watcher.unwatch(transport.done)
        await closing.end_stream(resp)
    except (ConnectionError, RuntimeError, OSError) as e:
        # The peer went away mid-write (or took nothing for STREAM_WRITE_TIMEOUT).
        log.debug("%s stream of client %s ended: %r", transport.name, client.uid, e)
    finally:
        await client.transport_closed()
        if streamed:
            closing.release(sock, closing.STREAM_WRITE_TIMEOUT)
    return resp


def _ndjson(frame: bytes) -> bytes:
    # A frame is newline-joined pushes; each line ends with a newline on the wire.
    return frame + b"\n"


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
    unavailable = service_unavailable(node)
    if unavailable is not None:
        return unavailable
    body = await read_limited_body(request, cfg.max_request_body_size)
    if body is None:
        return web.Response(status=413)
    try:
        connect_request = decode_connect_request(body)
    except BadConnectRequest as e:
        # One info line per refused body, as uni_sse writes (Centrifugo logs this one at
        # debug level, which would leave a refused request without a trace at info).
        log.info("uni_http_stream: malformed connect request: %s", e)
        return web.Response(status=400)
    return await serve_stream(
        request,
        StreamTransport("uni_http_stream", _ndjson),
        connect_request,
        cfg.connect_code_to_http_response,
        # Go's net/http sniffs this type from the first push Centrifugo writes.
        {"Content-Type": "text/plain; charset=utf-8"},
    )


def add_routes(app: web.Application, cfg: Config) -> None:
    """Register the uni_http_stream endpoint when `uni_http_stream.enabled`."""
    if not cfg.uni_http_stream.enabled:
        return
    peer_watcher(app)
    app.router.add_route("*", cfg.uni_http_stream.handler_prefix, uni_http_stream_handler)
