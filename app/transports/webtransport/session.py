"""One WebTransport session: its bidirectional stream fed to a `Client`, as Centrifugo's
internal/wt/handler.go serves one.

After the extended CONNECT is answered 200, the client opens one bidirectional stream
(centrifuge-js `createBidirectionalStream()`); handler.go waits 10 s for it
(bidiStreamAcceptTimeout) and serves only that one. The stream's bytes are cut into
commands (framing.py) and handed, in order, to the same `Client` every transport drives
(app/client/): no second state machine. Its replies and pushes go out through
`WebTransportTransport` (transport.py), which writes to this session as its
`SessionStream`.

How a session ends, as in handler.go:
- The client's commands end it (a Disconnect raised by the Client: push, stream FIN,
  session closed with the code; transport.py).
- A command that does not decode, or one over `webtransport.message_size_limit`: handler.go
  logs "error decoding command" and returns, and its deferred close is centrifuge's
  DisconnectConnectionClosed (3000), which sends no push: the stream is finished and the
  session closed with 3000. One log line (info: a client's mistake), no traceback. A frame
  is checked before it reaches the Client, so such a frame never gets the 3501 that a
  WebSocket frame would.
- The peer closes the session or its stream, resets it, or the QUIC connection goes: the
  Client is closed quietly (nothing can be sent any more).

The reader is one task per session (commands of one session run one after another, as
handler.go's loop runs them); data arrives in aioquic's event callback, which must not
await. What a client sends faster than its commands run waits in the inbox, bounded: at
most INBOX_COMMANDS_AHEAD × `message_size_limit` bytes (256 KiB at the default 64 KiB).
quic-go's reader stops granting flow-control credit when its application stops reading;
aioquic grants credit as data arrives and offers no way to withhold it, so a session that
runs that far ahead is closed at once with 3000 and one log line instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from enum import Enum
from typing import Protocol

from app.client import Client
from app.errors import Disconnect
from app.node import Node
from app.protocol import Codec, Command, DecodeError
from app.protocol.protobuf import PROTOBUF
from app.transports.webtransport.framing import splitter
from app.transports.webtransport.transport import WebTransportTransport

log = logging.getLogger("centrifugo.webtransport")

# handler.go bidiStreamAcceptTimeout.
STREAM_ACCEPT_TIMEOUT = 10.0

# centrifuge's DisconnectConnectionClosed: what handler.go's deferred close sends.
CONNECTION_CLOSED = Disconnect(3000)

# Commands' bytes a session may queue beyond the one running, in message_size_limits.
INBOX_COMMANDS_AHEAD = 4


class SessionHost(Protocol):
    """The QUIC connection a session lives on (app/transports/webtransport/h3.py)."""

    def send_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        """Queue stream data and transmit it this loop turn; ConnectionError once the
        connection is gone."""

    def stream_unsent(self, stream_id: int) -> int:
        """Bytes written to the stream and not yet transmitted."""

    def close_session(self, session_id: int, code: int, reason: str) -> None:
        """Send CLOSE_WEBTRANSPORT_SESSION on the CONNECT stream and finish it."""

    def session_ended(self, session_id: int) -> None:
        """Forget the session, finishing the CONNECT stream if this side has not yet."""


class Phase(Enum):
    AWAITING_STREAM = "awaiting stream"
    OPEN = "open"
    CLOSED = "closed"


class Session:
    """A WebTransport session (the CONNECT stream `session_id`) and its Client."""

    __slots__ = (
        "_host",
        "session_id",
        "_node",
        "_codec",
        "_headers",
        "_limit",
        "phase",
        "stream_id",
        "_client",
        "_splitter",
        "_inbox",
        "_queued",
        "_inbox_limit",
        "_reader",
        "_accept_timer",
        "_peer_gone",
    )

    def __init__(
        self,
        host: SessionHost,
        session_id: int,
        node: Node,
        codec: Codec,
        headers: Mapping[str, str],
        message_size_limit: int,
    ) -> None:
        self._host = host
        self.session_id = session_id
        self._node = node
        self._codec = codec
        self._headers = headers
        self._limit = message_size_limit
        self.phase = Phase.AWAITING_STREAM
        self.stream_id = -1
        self._client: Client | None = None
        self._splitter = splitter(codec is PROTOBUF, message_size_limit)
        # Decoded commands with the bytes they came in, a Disconnect, or None (the end).
        self._inbox: asyncio.Queue[tuple[list[Command], int] | Disconnect | None] = asyncio.Queue()
        self._queued = 0  # bytes of commands in the inbox
        self._inbox_limit = INBOX_COMMANDS_AHEAD * message_size_limit
        self._reader: asyncio.Task[None] | None = None
        self._peer_gone = asyncio.Event()
        self._accept_timer: asyncio.TimerHandle | None = node.loop.call_later(
            STREAM_ACCEPT_TIMEOUT, self._no_stream
        )

    # ------------------------------------------------------------ from the connection

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        """Bytes of a stream of this session (aioquic's event callback: no await)."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.AWAITING_STREAM:
            if stream_id & 0x3 != 0:  # not client-initiated bidirectional: not ours
                return
            self._open(stream_id)
        elif stream_id != self.stream_id:
            return  # handler.go accepts one stream; others are never read
        if data:
            try:
                chunk = self._splitter.feed(data)
                # Decoded here, once: a bad command ends the session (3000), and the
                # reader hands the commands to the Client as they are.
                commands = self._codec.decode_commands(chunk) if chunk else []
            except (DecodeError, ValueError) as e:
                self._inbox.put_nowait(Disconnect(3000, detail=f"error decoding command: {e}"))
                self.phase = Phase.CLOSED
                return
            if chunk:
                self._queued += len(chunk)
                if self._queued > self._inbox_limit:
                    self._overflow()
                    return
                self._inbox.put_nowait((commands, len(chunk)))
        if ended:
            self.peer_closed()

    def peer_closed(self) -> None:
        """The peer closed or reset the session or its stream, or the connection went."""
        self._peer_gone.set()
        if self._accept_timer is not None:
            self._accept_timer.cancel()
            self._accept_timer = None
        if self._reader is None:
            self._end()
        else:
            self._inbox.put_nowait(None)

    def _overflow(self) -> None:
        """The client ran more than the inbox bound ahead of its commands: closed now, not
        after the queued commands (the reader may be waiting on a proxy)."""
        log.info(
            "webtransport session %d: over %d bytes of commands waiting, disconnecting with %d",
            self.session_id,
            self._inbox_limit,
            CONNECTION_CLOSED.code,
        )
        self.phase = Phase.CLOSED
        self._peer_gone.set()
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._queued = 0
        self._inbox.put_nowait(None)  # the reader ends after the command it runs
        self._host.close_session(self.session_id, CONNECTION_CLOSED.code, "connection closed")

    # ------------------------------------------------------------ SessionStream

    def send(self, data: bytes) -> None:
        self._host.send_stream(self.stream_id, data, False)

    def unsent(self) -> int:
        return self._host.stream_unsent(self.stream_id)

    async def finish(self, code: int, reason: str, wait: float) -> None:
        if self._peer_gone.is_set():
            return
        try:
            self._host.send_stream(self.stream_id, b"", True)
        except ConnectionError:
            return
        try:
            await asyncio.wait_for(self._peer_gone.wait(), wait)
        except TimeoutError:
            pass
        if not self._peer_gone.is_set():
            self._host.close_session(self.session_id, code, reason)
        self._inbox.put_nowait(None)  # the reader ends (it may be waiting for data)

    # ------------------------------------------------------------ inside

    def _open(self, stream_id: int) -> None:
        if self._accept_timer is not None:
            self._accept_timer.cancel()
            self._accept_timer = None
        self.stream_id = stream_id
        self.phase = Phase.OPEN
        transport = WebTransportTransport(self._codec, self)
        self._client = Client(self._node, transport, headers=self._headers)
        self._reader = self._node.spawn(self._read(self._client, transport))

    async def _read(self, client: Client, transport: WebTransportTransport) -> None:
        try:
            while True:
                item = await self._inbox.get()
                if item is None:
                    break  # the peer is gone
                if isinstance(item, Disconnect):
                    log.info(
                        "webtransport client %s: %s, disconnecting with %d",
                        client.uid,
                        item.detail,
                        item.code,
                    )
                    await client.transport_closed()  # 3000: no push (centrifuge)
                    await transport.close(item)
                    break
                commands, size = item
                self._queued -= size
                if not await client.handle_commands(commands, size):
                    break
        finally:
            await client.transport_closed()
            self._end()

    def _no_stream(self) -> None:
        self._accept_timer = None
        if self.phase is Phase.AWAITING_STREAM:
            log.info(
                "webtransport session %d: no stream within %.0f s",
                self.session_id,
                STREAM_ACCEPT_TIMEOUT,
            )
            self._host.close_session(self.session_id, 0, "")
            self._end()

    def _end(self) -> None:
        self.phase = Phase.CLOSED
        self._host.session_ended(self.session_id)
