"""`WebTransportTransport`: the `SyncTransport` (app/transport.py) a Client writes to over a
WebTransport session's one bidirectional stream (Centrifugo's internal/wt/transport.go).

Wire shape, as transport.go writes it: a frame of JSON messages ("\\n"-joined by the codec)
goes out followed by one more "\\n" ("WebTransport is stream-based, not frame-based"); a
Protobuf frame is its varint-length-prefixed messages as they are. Disconnects travel as
a disconnect push (transport.go's DisabledPushFlags is 0: centrifuge sends the push for
every code but 3000), then the stream is finished and the session closed with the code as
its WebTransport error code and the reason (transport.go's Close).

Synchronous writes: aioquic takes stream data at once into the stream's send buffer, so a
write is a buffer append and one transmit per QUIC connection per loop turn; the writer
(app/writer.py) measures backpressure as what that buffer still has to transmit (flow or
congestion control holding it back), and bytes not transmitted within `write_timeout`
(transport.go's 1 s writeTimeout on each stream write) disconnect the client with 3009, as
a quic-go write blocked that long would.

Closing: transport.go finishes the stream, sleeps one second (so the browser reads the
disconnect push before the session close: quic-go#3291), then closes the session. Here the
wait ends as soon as the peer closes the session itself (centrifuge-js closes its transport
on a disconnect push), and after one second at the latest.
"""

from __future__ import annotations

from typing import Protocol

from app.errors import Disconnect
from app.protocol import Codec
from app.protocol.protobuf import PROTOBUF
from app.transport import SyncTransport

# transport.go writeTimeout, and its wait before closing the session.
WRITE_TIMEOUT = 1.0
CLOSE_WAIT = 1.0


class SessionStream(Protocol):
    """What a transport writes to: a session's bidirectional stream on its QUIC connection
    (app/transports/webtransport/session.py implements it)."""

    def send(self, data: bytes) -> None:
        """Queue `data` on the stream and have it transmitted this loop turn. Raises
        ConnectionError once the session or connection is gone."""

    def unsent(self) -> int:
        """Bytes written to the stream and not yet transmitted."""

    async def finish(self, code: int, reason: str, wait: float) -> None:
        """End the stream, wait up to `wait` seconds for the peer to close the session,
        then close it with `code` and `reason` (no-op once closed)."""


class WebTransportTransport:
    name = "webtransport"
    unidirectional = False
    disconnect_push = True  # no close frame the browser sees: the push carries the code
    write_timeout = WRITE_TIMEOUT

    __slots__ = ("codec", "_stream", "_tail", "closed")

    def __init__(self, codec: Codec, stream: SessionStream) -> None:
        self.codec = codec
        self._stream = stream
        self._tail = b"" if codec is PROTOBUF else b"\n"
        self.closed = False

    def write_now(self, frame: bytes) -> int:
        if self.closed:
            return 0  # transport.go: writes after Close are dropped
        self._stream.send(frame + self._tail if self._tail else frame)
        return self._stream.unsent()

    def write_many_now(self, frames: list[bytes]) -> int:
        if self.closed:
            return 0
        tail = self._tail
        self._stream.send(b"".join(f + tail for f in frames) if tail else b"".join(frames))
        return self._stream.unsent()

    def unsent(self) -> int:
        return 0 if self.closed else self._stream.unsent()

    async def write(self, frame: bytes) -> None:
        self.write_now(frame)

    async def close(self, disconnect: Disconnect) -> None:
        if self.closed:
            return
        self.closed = True
        await self._stream.finish(disconnect.code, disconnect.reason, CLOSE_WAIT)


# The contract it satisfies (app/transport.py), checked by mypy.
_transport: type[SyncTransport] = WebTransportTransport
