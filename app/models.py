"""Plain data shared by the engines, the node and the protocol codecs.

Payloads (`data`, `conn_info`, `chan_info`) are kept as the raw bytes the
publisher sent: for JSON clients they are spliced into frames unchanged, so a
payload is never parsed and re-encoded on the fan-out path.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ClientInfo:
    """Who is behind a connection; shown in presence, join/leave and client publications."""

    user: str
    client: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None


@dataclass(slots=True)
class StreamPosition:
    """A place in a channel's history stream. Offsets start at 1; epoch names the incarnation."""

    offset: int = 0
    epoch: str = ""


@dataclass(slots=True)
class Publication:
    data: bytes
    info: ClientInfo | None = None
    offset: int = 0  # 0 when the channel keeps no history
    tags: dict[str, str] | None = None
    time: int = 0  # unix ms, optional
    delta: bool = False
    # Map channels (app/maps/): the key this publication sets or removes, whether it is a
    # removal, and (only between a map broker and the hub) the key's previous value, the
    # base of a per-key fossil delta (centrifuge's Publication.prev_data).
    key: str = ""
    removed: bool = False
    prev_data: bytes | None = None
    # The concrete channel, when it differs from the subscription it is delivered in
    # (centrifuge's Publication.Channel: a NATS wildcard subscription, NATS raw mode);
    # put on the client wire as Publication.channel when set.
    channel: str = ""


@dataclass(slots=True)
class PublishOptions:
    """How a publication is stored. History is kept only when both size and ttl are > 0."""

    history_size: int = 0
    history_ttl: float = 0.0  # seconds
    history_meta_ttl: float = 0.0  # seconds; 0 means the engine default
    client_info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0
    delta: bool = False
    # Versioned publish (with history only): dropped when the channel's last stored version
    # in the same version_epoch ("" matches any) is >= version; 0 = not versioned.
    version: int = 0
    version_epoch: str = ""


@dataclass(slots=True)
class PublishResult:
    position: StreamPosition
    # True when nothing was stored or sent: an idempotency key matched (the original result
    # is returned) or a version was not newer (the stream's current top is returned).
    suppressed: bool = False
    suppress_reason: str = ""  # "idempotency" | "version", as centrifuge's SuppressReason


@dataclass(slots=True)
class HistoryFilter:
    """What to read. limit: 0 = position only, -1 = everything, N = at most N.

    `since` returns publications strictly after since.offset (strictly before when
    reverse). The caller has already checked since.epoch against the stream.
    """

    since: StreamPosition | None = None
    limit: int = 0
    reverse: bool = False
    meta_ttl: float = 0.0  # seconds; 0 means the engine default


@dataclass(slots=True)
class HistoryResult:
    publications: list[Publication] = field(default_factory=list)
    position: StreamPosition = field(default_factory=StreamPosition)


@dataclass(slots=True)
class PresenceStats:
    num_clients: int = 0
    num_users: int = 0
