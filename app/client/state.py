"""Connection state: its phase, the attributes every part of `Client` shares
(`ClientState`), and the records a connection keeps per subscription."""

from __future__ import annotations

import asyncio
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app import metrics
from app.auth import SubscribeOverride
from app.channels import ChannelInfo
from app.errors import ERROR_EXPIRED, ClientError, Disconnect
from app.filter import FilterNode, Matcher
from app.hub import DeltaFrames, Frames
from app.models import Publication
from app.proxy import ProxyContext

if TYPE_CHECKING:
    from app.client.inflight import InFlight
    from app.client.polling import PollState
    from app.config import ClientConfig
    from app.node import Node
    from app.protocol import Codec
    from app.timers import CoarseTimer
    from app.transport import Transport
    from app.writer import Writer


class _Phase:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"State.{self.name}"


class State:
    """A connection's phase, compared by identity. A plain class, not an enum.Enum: on
    CPython 3.11 reading an Enum member goes through EnumType's __getattr__ hook (~0.1 µs
    each), and a connect reads these about twenty times."""

    CONNECTING = _Phase("CONNECTING")
    CONNECTED = _Phase("CONNECTED")
    CLOSED = _Phase("CLOSED")


class ClientState:
    """Every attribute of a connection, declared once with its type: the base of each
    part of `Client` (listed in app/client/connection.py), so the type checker sees
    the state each of them uses. `Client.__init__` sets them all."""

    # Slots, not an instance dict: ~0.5 KB less per idle connection (issue 7's 16 KB).
    # The subclasses add none (`__slots__ = ()`).
    __slots__ = (
        "node",
        "cfg",
        "transport",
        "codec",
        "uid",
        "session",
        "headers",
        "user",
        "conn_info",
        "state",
        "expire_at",
        "meta",
        "_token_channels",
        "_connect_failed",
        "_subs",
        "_writer",
        "_waiting_pong",
        "_ping_at",
        "_ping_handle",
        "_pong_handle",
        "_expire_handle",
        "_stale_handle",
        "_inbox",
        "_m_inflight",
        "_emulated_headers",
        "_client_name",
        "_inflight",
        "_subscribing",
        "_map_syncs",
        "_polls",
        "__weakref__",
    )

    node: Node
    cfg: ClientConfig  # node.config.client
    transport: Transport
    codec: Codec  # transport.codec
    uid: str  # the client id, a random UUID
    session: str  # emulation/unidirectional session id ("" for none)
    headers: Mapping[str, str]  # the request headers it keeps (connection.kept_headers)
    user: str  # "" until connected, and for anonymous connections
    conn_info: bytes | None  # ConnectResult info, from a token or the connect proxy
    state: _Phase
    expire_at: int  # unix seconds the connection expires at; 0 for never
    meta: bytes | None  # server-only JSON from token or connect proxy
    _token_channels: tuple[str, ...]  # server-side channels of the connection token
    _connect_failed: bool  # a connect was answered with an error: no second one
    _subs: dict[str, Subscription]
    _writer: Writer
    _waiting_pong: bool
    _ping_at: float  # loop time the awaited ping was sent (ping/pong duration metric)
    _ping_handle: CoarseTimer | None
    _pong_handle: CoarseTimer | None
    _expire_handle: asyncio.TimerHandle | None
    _stale_handle: CoarseTimer | None  # closes a connection that never connects
    _inbox: asyncio.Queue[bytes] | None  # emulation: frames waiting for their turn
    # Prometheus children (app/metrics.child); None where metrics are off.
    _m_inflight: Any  # connections_inflight child once connected
    _emulated_headers: dict[str, str] | None  # ConnectRequest.headers (emulation)
    _client_name: str  # ConnectRequest.name (metrics labels)
    # client.concurrency > 1: the commands in flight, made at the first one.
    _inflight: InFlight | None
    # Channels with a client subscribe in flight -> the future an unsubscribe waits on
    # (app/client/subscribing.py); None while there are none.
    _subscribing: dict[str, asyncio.Future[None] | None] | None
    # Map subscriptions still syncing (app/client/mapping.py MapSync); None while none.
    _map_syncs: dict[str, MapSync] | None
    # Shared poll subscriptions' tracked keys (app/client/polling.py); None while none.
    _polls: dict[str, PollState] | None

    def send(self, data: bytes, frame_type: str = "unknown", namespace: str = "") -> None:
        """Queue one message, counted under centrifugal/protocol's frame type name (a
        reply: its command; a push: "push_<type>") and its channel's namespace."""
        self._writer.enqueue(data, metrics.sent(self.transport.name, frame_type, namespace))

    def proxy_context(self) -> ProxyContext:
        """This connection as a proxy request describes it."""
        return ProxyContext(
            client=self.uid,
            transport=self.transport.name,
            protocol="protobuf" if self.codec.name.startswith("protobuf") else "json",
            user=self.user,
            meta=self.meta,
            headers=self.headers or None,
            emulated_headers=self._emulated_headers,
        )

    # Implemented by `Client` (app/client/connection.py); subscriptions and commands
    # close the connection through them.

    @abstractmethod
    async def close(self, disconnect: Disconnect | None = None) -> None:
        """Tear the connection down once; the transport gets the close code."""

    @abstractmethod
    def disconnect_soon(self, disconnect: Disconnect) -> None:
        """Close from a synchronous context (timers, fan-out)."""


@dataclass(slots=True)
class Subscription:
    channel: str
    chinfo: ChannelInfo
    server_side: bool
    chan_info: bytes | None = None
    presence: bool = False
    join_leave: bool = False  # this subscription emits join/leave events
    push_join_leave: bool = False  # this client receives join/leave pushes
    positioned: bool = False
    recoverable: bool = False
    offset: int = 0
    epoch: str = ""
    expire_at: int = 0
    expire_handle: asyncio.TimerHandle | None = None
    checked_offset: int = -1  # offset at the last periodic position check
    m_inflight: Any = None  # subscriptions_inflight metric child
    # transport_messages_sent counter of its publications, taken at the first one.
    m_pub: metrics.MessageCounter | None = None
    tags_filter: Matcher | None = None  # the client's `tf`, compiled (app/filter.py)
    # Fossil delta negotiated (SubscribeResult.delta), and whether the client holds the
    # base a patch applies to (centrifuge's flagDeltaAllowed): false until it got one
    # publication in full.
    delta: bool = False
    delta_ready: bool = False
    map: bool = False  # a map subscription (app/client/mapping.py)
    # Publications that arrive while the subscribe is in flight wait here.
    buffer: list[tuple[Publication, str, Frames | DeltaFrames]] | None = field(default_factory=list)


@dataclass(slots=True)
class SubRequest:
    """What a subscribe asks for, from a client command, a token or the server API."""

    token: str = ""
    recover: bool = False
    offset: int = 0
    epoch: str = ""
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    data: bytes | None = None  # SubscribeResult.data, from a token or the subscribe proxy
    info: bytes | None = None
    expire_at: int = 0
    override: SubscribeOverride | None = None
    client_data: bytes | None = None  # the client's own subscribe data (for the proxy)
    tf: FilterNode | None = None  # the client's tags filter, as sent
    tags_filter: Matcher | None = None  # tf once allowed, validated and compiled
    flag: int = 0  # SubscribeRequest.flag bits (SUB_FLAG_* in app/client/positioning.py)
    delta: str = ""  # the delta type asked for ("fossil" is the only one)

    def grant(
        self,
        expire_at: int,
        info: bytes | None,
        data: bytes | None,
        override: SubscribeOverride | None,
    ) -> None:
        """What a subscription token or the subscribe proxy granted; an expiry already
        in the past is error 110 (Centrifugo checks it at subscribe time)."""
        if expire_at > 0:
            if expire_at < int(time.time()):
                raise ClientError(ERROR_EXPIRED)
            self.expire_at = expire_at
        self.info = info
        self.data = data
        self.override = override


# `ttl` is uint32 in the protocol: Centrifugo sends uint32(ttl). A far expiry (a valid int64
# `expire_at`, e.g. 2^40) is capped here instead of wrapping around, which would tell the
# client to refresh at some arbitrary near time; the Protobuf encoder refuses larger values.
MAX_TTL = 2**32 - 1


def ttl_until(expire_at: float) -> int:
    """Seconds left until `expire_at` (unix seconds) as the protocol's uint32 `ttl`."""
    return min(max(int(expire_at - time.time()), 0), MAX_TTL)


@dataclass(slots=True)
class MapSync:
    """A map subscription still syncing (centrifuge's mapSubscribeState): what the first
    command authorized, and the positions frozen on the way."""

    chinfo: ChannelInfo
    req: SubRequest  # authorized: token/proxy grants, compiled tags filter
    started: float  # monotonic
    epoch: str = ""
    offset: int = 0  # the stream top when the first state page was read
    offset_captured: bool = False
    stream_start: int = 0  # the stream top when the stream phase began
    stream_start_captured: bool = False
