"""The map broker contract: keyed state per channel, a stream of its changes, and PUB/SUB
fan-out of every change (centrifuge's `map_broker.go`, Centrifugo 6.8+ map subscriptions).

A map channel holds keys; each key's value is a publication (data, tags, client info).
Every change (publish of a key, removal of a key) is one atomic step: the state changes,
the change is appended to the channel's stream with the next offset (modes with a stream),
and the change is delivered to every node subscribed to the channel. Clients sync in
phases (app/client/mapping.py): state pages, then stream pages since the state's position,
then live.

Implementations: `app/maps/memory.py` (one process) and `app/engines/redis/maps.py`
(Lua scripts `lua/map_*.lua`). A map broker is independent of the node's Broker (its own
Redis shards and PUB/SUB subscriptions, as in Centrifugo's `map_broker` section).

Epoch: a channel's stream has an epoch, a random string naming its incarnation. It changes
when the channel's state is lost or cleared (memory: process restart; Redis: meta key
expired or deleted, Redis flushed). A reader whose position names another epoch gets
ERROR_UNRECOVERABLE_POSITION (112) and re-syncs from scratch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from app.broker import BrokerEventHandler
from app.errors import ERROR_INTERNAL, ClientError
from app.models import ClientInfo, Publication, StreamPosition

log = logging.getLogger("centrifugo.maps")


class MapMode(Enum):
    """Centrifugo's `map.mode`. Ephemeral: keys expire (key_ttl), no stream: a resubscribe
    is a full state resync. Recoverable: keys expire and a stream allows catch-up.
    Persistent: keys never expire, with a stream."""

    EPHEMERAL = "ephemeral"
    RECOVERABLE = "recoverable"
    PERSISTENT = "persistent"

    @property
    def has_stream(self) -> bool:
        return self is not MapMode.EPHEMERAL

    @property
    def has_expiry(self) -> bool:
        return self is not MapMode.PERSISTENT


@dataclass(slots=True, frozen=True)
class MapChannelOptions:
    """How one map channel is stored, resolved from its namespace's `map` section and
    validated (centrifuge's ResolveAndValidateMapChannelOptions; app/maps/options.py).

    Durations in seconds. For modes with a stream, stream_size/stream_ttl are already
    defaulted (100 and 60 s) and meta_ttl derived (0 = never expires)."""

    mode: MapMode
    key_ttl: float = 0.0  # > 0 exactly when mode.has_expiry
    stream_size: int = 0  # > 0 exactly when mode.has_stream
    stream_ttl: float = 0.0
    meta_ttl: float = 0.0  # 0: the channel's meta (epoch, top offset) never expires


class KeyMode(Enum):
    """Conditional write of a key (centrifuge's KeyMode)."""

    REPLACE = ""  # always write
    IF_NEW = "if_new"  # only when the key is absent (suppressed: "key_exists")
    IF_EXISTS = "if_exists"  # only when the key is present (suppressed: "key_not_found")


# MapUpdateResult.suppress_reason values (centrifuge's SuppressReason).
SUPPRESS_IDEMPOTENCY = "idempotency"
SUPPRESS_VERSION = "version"
SUPPRESS_KEY_EXISTS = "key_exists"
SUPPRESS_KEY_NOT_FOUND = "key_not_found"
SUPPRESS_POSITION_MISMATCH = "position_mismatch"


@dataclass(slots=True)
class MapPublishOptions:
    """One key write. `data` is opaque bytes, stored and delivered exactly as given."""

    data: bytes = b""
    tags: dict[str, str] | None = None
    client_info: ClientInfo | None = None
    # The delivered publication may go as a fossil delta against the key's previous value
    # (subscribers that negotiated delta): the broker hands the previous value along.
    delta: bool = False
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0  # seconds
    # Per-key version (modes with a stream only): suppressed ("version") unless greater than
    # the key's stored version in the same version_epoch; 0 = not versioned.
    version: int = 0
    version_epoch: str = ""
    key_mode: KeyMode = KeyMode.REPLACE
    # With IF_NEW on an existing key: extend its TTL anyway (presence keep-alive) while
    # still suppressing the write.
    refresh_ttl_on_suppress: bool = False
    # Compare-and-swap (modes with a stream): write only if the key's current offset and
    # the channel's epoch match; else suppressed ("position_mismatch") with current_entry.
    expected_position: StreamPosition | None = None


@dataclass(slots=True)
class MapRemoveOptions:
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0
    expected_position: StreamPosition | None = None
    # Tags of the removal publication; None: the removed entry's own tags.
    tags: dict[str, str] | None = None


@dataclass(slots=True)
class MapCurrentEntry:
    """The key's current entry when a CAS write was suppressed (position_mismatch)."""

    offset: int
    data: bytes


@dataclass(slots=True)
class MapUpdateResult:
    """`position`: the channel's stream position after the operation (offset 0 and the
    epoch for ephemeral channels). Suppressed: nothing changed, stored or delivered."""

    position: StreamPosition
    suppressed: bool = False
    suppress_reason: str = ""
    current_entry: MapCurrentEntry | None = None


@dataclass(slots=True)
class MapStateResult:
    """One page of state: each publication has `key` set and `offset` = the offset of the
    key's last write (0 in ephemeral channels). `cursor` "" on the last page."""

    publications: list[Publication] = field(default_factory=list)
    position: StreamPosition = field(default_factory=StreamPosition)
    cursor: str = ""


@dataclass(slots=True)
class MapStreamResult:
    """Stream entries (publications with `key`, removals with `removed=True`), oldest
    first unless reversed, and the stream's current top position."""

    publications: list[Publication] = field(default_factory=list)
    position: StreamPosition = field(default_factory=StreamPosition)


class MapBroker(Protocol):
    """Keyed channel state, its change stream, and the PUB/SUB of its changes."""

    async def run(self, handler: BrokerEventHandler) -> None:
        """Start delivering changes of subscribed channels to `handler.handle_publication`
        (publications with `key` set, `removed` for removals; `epoch` "" for channels
        without a stream). Starts the expiry of keys with a TTL: an expired key is removed
        like `remove` does, so subscribers see a removal publication. Called once."""

    async def close(self) -> None:
        """Stop delivering and expiring; release connections. Called once."""

    async def subscribe(self, channels: list[str]) -> None:
        """Make this node receive the changes of `channels`; returns once delivery of
        everything published after the return is guaranteed. Idempotent per channel."""

    async def unsubscribe(self, channels: list[str]) -> None:
        """Stop receiving `channels`."""

    async def publish(
        self, channel: str, key: str, opts: MapPublishOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        """Write `key` atomically: state (TTL key_ttl when the mode expires keys), stream
        entry with the next offset (modes with a stream, trimmed to stream_size and
        stream_ttl), delivery to subscribers. The delivered publication carries `key`,
        `offset`, tags, info, `time`; with `opts.delta` it also carries the key's previous
        value as `prev_data` (absent for a new key) so a delta can be built per key.
        Suppressed writes store and deliver nothing (see MapPublishOptions)."""

    async def remove(
        self, channel: str, key: str, opts: MapRemoveOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        """Remove `key` atomically, appending and delivering a publication with
        `removed=True`, `key` and empty data. An absent key is suppressed
        ("key_not_found")."""

    async def read_state(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        cursor: str = "",
        limit: int = -1,
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapStateResult:
        """A page of the state, starting after `cursor` (opaque; "" first, "" returned on
        the last page). Memory: by key. Redis: HSCAN order and cursor, as centrifuge's
        unordered state, where a key changed during paging may come on two pages (readers
        merge by key). limit: -1 all, 0 position only, N at most N (the Redis broker may
        return a few more). `key`: only that entry (cursor and limit ignored). `revision` set: raise
        ClientError(ERROR_UNRECOVERABLE_POSITION) when its epoch is not the channel's."""

    async def read_stream(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        since: StreamPosition | None = None,
        limit: int = -1,
        reverse: bool = False,
    ) -> MapStreamResult:
        """Stream entries after `since` (strictly greater offsets; before, when reverse).
        limit: -1 all, 0 position only, N at most N. `since` with another epoch, or an
        offset older than the oldest kept entry minus one: raise
        ClientError(ERROR_UNRECOVERABLE_POSITION). Creates the channel's meta (epoch) if
        absent, so a position is always returned."""

    async def stats(self, channel: str) -> int:
        """The number of keys in the channel's state."""

    async def clear(self, channel: str) -> None:
        """Delete the channel's state, stream and meta: the next write starts a new epoch.
        Nothing is delivered."""


def check_stream_features(
    channel: str,
    chopts: MapChannelOptions,
    expected_position: StreamPosition | None,
    version: int = 0,
) -> None:
    """The rule every map broker applies before a write: CAS (`expected_position`) and
    per-key versions need a stream. centrifuge's brokers return a plain error, which
    Centrifugo's API answers as internal (100): the same here, with one log line."""
    if chopts.mode.has_stream:
        return
    what = "CAS (expected_position)" if expected_position is not None else ""
    if not what and version > 0:
        what = "version-based dedup"
    if what:
        log.warning("map channel %r: %s requires recoverable or persistent mode", channel, what)
        raise ClientError(ERROR_INTERNAL)
