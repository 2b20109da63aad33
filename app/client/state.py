"""Connection state and the records a connection keeps per subscription."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from app.auth import SubscribeOverride
from app.channels import ChannelInfo
from app.errors import ERROR_EXPIRED, ClientError
from app.filter import FilterNode, Matcher
from app.hub import DeltaFrames, Frames
from app.models import Publication


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
    tags_filter: Matcher | None = None  # the client's `tf`, compiled (app/filter.py)
    # Fossil delta negotiated (SubscribeResult.delta), and whether the client holds the
    # base a patch applies to (centrifuge's flagDeltaAllowed): false until it got one
    # publication in full.
    delta: bool = False
    delta_ready: bool = False
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
    flag: int = 0  # SubscribeRequest.flag bits (SUB_FLAG_* in app/client/subscribing.py)
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
