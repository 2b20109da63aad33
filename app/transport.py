"""The transport contracts: what a Client and its Writer need from the socket a transport
handler owns (WebSocket, SSE, HTTP-stream, their unidirectional forms, gRPC).

`Transport` is what every transport offers: an async `write` that must itself give up on a
peer that takes nothing, and `close`. `SyncTransport` adds the synchronous fast path
(`write_now`): app/writer.py writes such a transport right in its flush, with no task per
connection, and bounds what stays unsent by `write_timeout` (app/writer.py's docstring
holds the measurements). `KeepsAlive` marks a transport that needs no protocol pings.
Every transport class states the contract it satisfies in one typed line
(`_: type[SyncTransport] = WebSocketTransport`); the optional ones are decided once per
class (`is_sync`, `sends_pings`), never probed per connection by attribute name.

The WebSocket connection a handler serves (framing, handshake, deflate) is the WebSocket
wing's own contract (app/transports/websocket/); only these generic ones live here.
"""

from __future__ import annotations

from typing import Protocol, TypeGuard, runtime_checkable

from app.errors import Disconnect
from app.protocol import Codec

# What a transport raises when its peer is gone (TimeoutError is an OSError).
WRITE_ERRORS = (ConnectionError, RuntimeError, OSError)


class Transport(Protocol):
    """A socket owned by a transport handler, as a Client writes to it."""

    name: str  # "websocket", "sse", ... (metrics labels)
    codec: Codec  # how this connection's frames are encoded
    unidirectional: bool  # server-to-client only: no commands, no pongs
    disconnect_push: bool  # signal disconnects with a push before closing (all but bidi WS)

    async def write(self, frame: bytes) -> None:
        """Write one frame (messages joined by the codec's separator). Raises one of
        WRITE_ERRORS when the peer is gone or takes nothing within the transport's bound."""

    async def close(self, disconnect: Disconnect) -> None:
        """Close the connection with `disconnect` (after its push, if disconnect_push)."""


@runtime_checkable
class SyncTransport(Transport, Protocol):
    """The synchronous fast path (WebSocket, uni WebSocket)."""

    # Seconds the bytes `write_now` leaves unsent may wait for the kernel to take them
    # (Centrifugo's write_timeout); 0 for no limit.
    write_timeout: float

    def write_now(self, frame: bytes) -> int:
        """Write the frame now; returns how many bytes the transport still holds unsent
        (the backpressure measure). Raises one of WRITE_ERRORS when the peer is gone."""

    def write_many_now(self, frames: list[bytes]) -> int:
        """Write these frames now, in order, in one socket write where the transport can
        (the writer's burst of more than MAX_MESSAGES_IN_FRAME messages, app/writer.py);
        returns and raises as `write_now`."""

    def unsent(self) -> int:
        """What `write_now` would return now."""


@runtime_checkable
class KeepsAlive(Protocol):
    """Optional capability: the transport keeps the connection alive by itself, so the
    client sends it no protocol pings (uni_grpc: HTTP/2 keepalive)."""

    keepalive: str  # what keeps it alive, e.g. "http2 keepalive"


# (capability, transport class) -> whether the class has it. A structural isinstance check
# of a runtime-checkable Protocol costs ~40 us (each member looked up on the instance), a
# visible part of a connect; one per class costs nothing.
_capabilities: dict[tuple[type, type], bool] = {}


def _has(transport: Transport, capability: type) -> bool:
    key = (capability, type(transport))
    has = _capabilities.get(key)
    if has is None:
        has = _capabilities[key] = isinstance(transport, capability)
    return has


def is_sync(transport: Transport) -> TypeGuard[SyncTransport]:
    """Whether `transport` offers `write_now`, decided once for its class."""
    return _has(transport, SyncTransport)


def sends_pings(transport: Transport) -> bool:
    """Whether the client sends protocol pings over `transport` (not to a KeepsAlive)."""
    return not _has(transport, KeepsAlive)
