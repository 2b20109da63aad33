"""One QUIC connection speaking HTTP/3: extended CONNECT to WebTransport sessions.

Each QUIC connection a worker accepts gets an `H3Server` (aioquic's QuicServer makes them).
It runs aioquic's H3Connection with WebTransport on (SETTINGS_ENABLE_WEBTRANSPORT,
H3_DATAGRAM, ENABLE_CONNECT_PROTOCOL) and answers requests:

- `CONNECT` with `:protocol webtransport` at `webtransport.handler_prefix` (exact path, as
  Go's ServeMux matches Centrifugo's pattern): the connection endpoint's admission
  (app/transports/admission.py: draining, `client.connection_rate_limit`,
  `client.connection_limit` → 503; `client.allowed_origins` → 400, which is what
  Centrifugo's handler writes when webtransport-go's Upgrade refuses the origin), then
  200 and a `Session` (session.py). `cf_protocol=protobuf` in the query selects Protobuf,
  anything else JSON (handler.go).
- the same CONNECT at another path: 404.
- any other request: 421 (Misdirected Request). Centrifugo serves its whole mux over
  HTTP/3; this server serves only WebTransport there, and 421 tells a browser that followed
  `Alt-Svc` to retry the request on a new connection (TCP), where every endpoint answers.

A session's bidirectional stream (WEBTRANSPORT_STREAM frames) reaches its Session; a FIN
or reset of the session's CONNECT stream, a CLOSE_WEBTRANSPORT_SESSION capsule from the
peer, or the end of the QUIC connection ends it. Other capsules are skipped, their values
never kept (`CapsuleReader`: at most a 16-byte header per stream, whatever length a capsule
announces); Chromium sends a GREASE one right after its CONNECT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.events import (
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
    StreamReset,
)
from multidict import CIMultiDict

from app.node import Node
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF
from app.transports import admission
from app.transports.webtransport.session import Session

log = logging.getLogger("centrifugo.webtransport")

# draft-ietf-webtrans-http3: the CLOSE_WEBTRANSPORT_SESSION capsule (32-bit code, reason of
# at most 1024 bytes) that webtransport-go's CloseWithError sends.
CLOSE_WEBTRANSPORT_SESSION = 0x2843
MAX_CLOSE_REASON = 1024


class CapsuleReader:
    """The types of the capsules (RFC 9297: varint type, varint length, value) on one
    CONNECT stream, read across pieces. Values are skipped, never kept: what a peer may make
    this hold is one unfinished header (at most 16 bytes), whatever length it announces."""

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # the start of a header not yet complete
        self._skip = 0  # bytes of the current capsule's value still to come

    def feed(self, data: bytes) -> list[int]:
        kinds: list[int] = []
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        data = self._head + data
        self._head = b""
        buf = Buffer(data=data)
        while not buf.eof():
            start = buf.tell()
            try:
                kind = buf.pull_uint_var()
                length = buf.pull_uint_var()
            except BufferReadError:
                self._head = data[start:]
                break
            kinds.append(kind)
            left = len(data) - buf.tell()
            if length > left:
                self._skip = length - left
                break
            buf.seek(buf.tell() + length)
        return kinds


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What every connection of a worker needs: the node and the endpoint's settings."""

    node: Node
    path: str  # webtransport.handler_prefix, trailing "/" trimmed ("/" when empty)
    message_size_limit: int


class H3Server(QuicConnectionProtocol):
    """An HTTP/3 connection serving WebTransport sessions (`SessionHost` for each)."""

    def __init__(self, *args: Any, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._endpoint = endpoint
        self._h3: H3Connection | None = None
        self._sessions: dict[int, Session] = {}
        self._terminated = False
        self._flush_pending = False
        self._ended: set[int] = set()  # CONNECT streams this side has finished
        self._capsules: dict[int, CapsuleReader] = {}  # per CONNECT stream

    # ---------------------------------------------------------------- events

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self._h3 = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, ConnectionTerminated):
            self._terminated = True
            for session in list(self._sessions.values()):
                session.peer_closed()
            return
        elif isinstance(event, StreamReset):
            for session in list(self._sessions.values()):
                if event.stream_id in (session.session_id, session.stream_id):
                    session.peer_closed()
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, WebTransportStreamDataReceived):
            session = self._sessions.get(event.session_id)
            if session is not None:
                session.stream_data(event.stream_id, event.data, event.stream_ended)
        elif isinstance(event, HeadersReceived):
            self._request(event.stream_id, event.headers)
        elif isinstance(event, DataReceived):
            session = self._sessions.get(event.stream_id)
            if session is None:
                return  # a request answered already (421, 404...): its body is ignored
            # On a CONNECT stream the peer sends capsules (RFC 9297). Chromium sends a
            # GREASE capsule right after its request; CLOSE_WEBTRANSPORT_SESSION ends the
            # session as the stream's FIN does; any other type is skipped.
            reader = self._capsules.get(event.stream_id)
            if reader is None:
                reader = self._capsules[event.stream_id] = CapsuleReader()
            kinds = reader.feed(event.data)
            if event.stream_ended or CLOSE_WEBTRANSPORT_SESSION in kinds:
                self._capsules.pop(event.stream_id, None)
                session.peer_closed()

    def _request(self, stream_id: int, raw: list[tuple[bytes, bytes]]) -> None:
        assert self._h3 is not None  # requests come through it
        pseudo: dict[bytes, bytes] = {}
        headers: CIMultiDict[str] = CIMultiDict()
        for k, v in raw:
            if k.startswith(b":"):
                pseudo[k] = v
            else:
                headers.add(k.decode("latin-1"), v.decode("latin-1"))
        ep = self._endpoint
        if pseudo.get(b":method") != b"CONNECT" or pseudo.get(b":protocol") != b"webtransport":
            self._respond(stream_id, 421)
            return
        path, _, query = pseudo.get(b":path", b"").decode("latin-1").partition("?")
        if path != ep.path:
            self._respond(stream_id, 404)
            return
        refusal = admission.check(ep.node, headers.get("Origin"))
        if refusal is not None:
            if refusal.status == 403:
                log.info("error upgrading to webtransport: request origin not allowed")
                self._respond(stream_id, 400)
            else:
                self._respond(stream_id, refusal.status, refusal.reason.encode())
            return
        protobuf = query and parse_qs(query).get("cf_protocol", [""])[0] == "protobuf"
        self._h3.send_headers(
            stream_id, [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")]
        )
        self._sessions[stream_id] = Session(
            self,
            stream_id,
            ep.node,
            PROTOBUF if protobuf else JSON,
            headers,
            ep.message_size_limit,
        )
        self._transmit_soon()

    def _respond(self, stream_id: int, status: int, body: bytes = b"") -> None:
        assert self._h3 is not None
        self._h3.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=not body)
        if body:
            self._h3.send_data(stream_id, body, end_stream=True)
        self._transmit_soon()

    # ---------------------------------------------------------------- SessionHost

    def send_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        if self._terminated:
            raise ConnectionError("QUIC connection closed")
        try:
            self._quic.send_stream_data(stream_id, data, end)
        except (AssertionError, ValueError) as e:  # aioquic: after FIN or a reset
            raise ConnectionError(str(e)) from None
        self._transmit_soon()

    def stream_unsent(self, stream_id: int) -> int:
        # What the stream's sender still has to transmit (flow or congestion control holds
        # it back), as a quic-go write blocks only while data cannot go out. Not the bytes
        # awaiting acknowledgement: a busy peer's late ACKs tripped the write timeout (3009)
        # for 241 of 1000 sessions at 5,000 deliveries/s (`python -m bench.webtransport`),
        # none with this. aioquic has no public accessor: its sender's pending ranges.
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        return sum(len(r) for r in stream.sender._pending)

    def close_session(self, session_id: int, code: int, reason: str) -> None:
        if self._terminated or self._h3 is None or session_id in self._ended:
            return
        self._ended.add(session_id)
        payload = (code & 0xFFFFFFFF).to_bytes(4, "big") + reason.encode()[:MAX_CLOSE_REASON]
        capsule = (
            encode_uint_var(CLOSE_WEBTRANSPORT_SESSION) + encode_uint_var(len(payload)) + payload
        )
        try:
            self._h3.send_data(session_id, capsule, end_stream=True)
        except Exception:  # aioquic refuses once the stream ended (peer reset, FIN sent)
            log.debug("closing webtransport session %d", session_id, exc_info=True)
            return
        self._transmit_soon()

    def session_ended(self, session_id: int) -> None:
        self._sessions.pop(session_id, None)
        self._capsules.pop(session_id, None)
        if self._terminated or self._h3 is None or session_id in self._ended:
            return
        # Ended by the peer (or its stream): finish our side of the CONNECT stream too.
        self._ended.add(session_id)
        try:
            self._h3.send_data(session_id, b"", end_stream=True)
        except Exception:  # aioquic refuses once the peer reset the stream
            log.debug("ending webtransport session %d", session_id, exc_info=True)
            return
        self._transmit_soon()

    # ---------------------------------------------------------------- sending

    def _transmit_soon(self) -> None:
        """One transmit per connection per loop turn, whatever number of writes queued
        data in it (the writer flushes every connection's frames in one turn)."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._terminated:
            self.transmit()
