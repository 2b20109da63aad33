"""The in-process MapBroker (centrifuge's `map_broker_memory.go`): keyed channel state, its
change stream and the delivery of every change, for one process.

Per channel: an epoch (8 random letters, as the stream engine's), a top offset, the state
(key -> entry: the key's last publication with the offset of its last write, its expiry,
its version and version epoch) and, in modes with a stream, the stream of changes (writes
and removals, offsets dense from 1). An ephemeral channel has an epoch too but no stream:
its offsets stay 0 and its deliveries carry epoch "" (app/maps/broker.py).

Atomicity: every method runs on the event loop without awaiting between its check and its
change, so a write, its stream entry and its delivery are one step with respect to every
other call, the expiry sweep included (centrifuge needs pubLock for that).

Suppression checks run in centrifuge's canonical order: idempotency, version, key mode,
CAS. Only a change that happened remembers its idempotency key.

Expiry (time.monotonic, swept every `cleanup_interval` seconds by the task `run` starts):
- a key lives `key_ttl` after its last write (or its last IF_NEW keep-alive with
  refresh_ttl_on_suppress). An expired key is removed exactly as `remove` does: state
  deleted, a removal appended to the stream, the removal delivered. Nothing else removes a
  key behind the stream's back, so reads may show a key until the sweep reaches it (as in
  centrifuge): a reader never sees a key vanish from the state without its removal in the
  stream.
- the stream's entries are dropped `stream_ttl` after the last append; top and epoch stay.
- the channel (state, stream, epoch) is dropped `meta_ttl` after its last write or read,
  so the next use starts a new epoch and readers at the old one get
  ERROR_UNRECOVERABLE_POSITION. meta_ttl >= key_ttl (app/maps/options.py), so its keys
  have expired (and their removals been delivered) by then; a channel that still holds
  keys is kept for another meta_ttl.
- idempotency results expire `idempotent_result_ttl` after the write.

Memory bounds: the keys of a channel are the application's (each expires with key_ttl
unless the mode is persistent); a stream holds at most stream_size entries and none
stream_ttl after its last append; a channel without keys is dropped meta_ttl after its last
use (ephemeral channels have no meta_ttl: they use key_ttl, which centrifuge's memory
broker lacks, keeping every ephemeral channel ever used); idempotency results expire. The
expiry heaps hold at most one entry per key, channel or result (the stream engine's
ExpiryQueue).

Delivery: `publish`, `remove` and the sweep call `handler.handle_publication` synchronously
for channels `subscribe` named (one process: subscribing only records the name).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from itertools import islice

from app.broker import BrokerEventHandler
from app.engines.memory import ExpiryQueue, generate_epoch
from app.errors import ERROR_UNRECOVERABLE_POSITION, ClientError
from app.maps.broker import (
    SUPPRESS_IDEMPOTENCY,
    SUPPRESS_KEY_EXISTS,
    SUPPRESS_KEY_NOT_FOUND,
    SUPPRESS_POSITION_MISMATCH,
    SUPPRESS_VERSION,
    KeyMode,
    MapBroker,
    MapChannelOptions,
    MapCurrentEntry,
    MapPublishOptions,
    MapRemoveOptions,
    MapStateResult,
    MapStreamResult,
    MapUpdateResult,
    check_stream_features,
)
from app.models import Publication, StreamPosition

logger = logging.getLogger(__name__)

# centrifuge's defaultIdempotentResultExpireSeconds, used when a caller passes 0.
DEFAULT_IDEMPOTENT_RESULT_TTL = 300.0

Clock = Callable[[], float]


def _unix_ms() -> int:
    return int(time.time() * 1000)


def _copy(p: Publication) -> Publication:
    # Readers get their own objects: nothing they do (delta encoding, clearing fields) can
    # alter the stored state or stream, which share one Publication per write.
    return Publication(p.data, p.info, p.offset, p.tags, p.time, key=p.key, removed=p.removed)


class _Entry:
    """One key of a channel's state."""

    __slots__ = ("pub", "expire_at", "version", "version_epoch")

    def __init__(self, pub: Publication, expire_at: float, version: int, version_epoch: str):
        self.pub = pub  # key, offset of the last write (0 when ephemeral), data, tags, info
        self.expire_at = expire_at  # monotonic; inf: never
        self.version = version
        self.version_epoch = version_epoch


class _Channel:
    __slots__ = (
        "epoch",
        "top",
        "opts",
        "state",
        "stream",
        "stream_expire_at",
        "meta_expire_at",
        "sorted_keys",
    )

    def __init__(self, opts: MapChannelOptions) -> None:
        self.epoch = generate_epoch()
        self.top = 0
        # The options of the last call that named the channel: the sweep needs the mode and
        # stream size to remove an expired key as `remove` would.
        self.opts = opts
        self.state: dict[str, _Entry] = {}
        # Offsets are dense: stream[i].offset == top - len(stream) + 1 + i.
        self.stream: deque[Publication] = deque()
        self.stream_expire_at = math.inf
        self.meta_expire_at = math.inf
        # The state's keys in order, for paging; None when a key was added or removed since.
        self.sorted_keys: list[str] | None = None

    def position(self) -> StreamPosition:
        return StreamPosition(self.top, self.epoch)


def _meta_ttl(opts: MapChannelOptions) -> float:
    # Ephemeral channels have no meta_ttl (validation keeps it 0); key_ttl bounds how long
    # an unused one is kept instead (see the module docstring).
    return opts.meta_ttl if opts.mode.has_stream else opts.key_ttl


class MemoryMapBroker:
    """MapBroker for one process (app/maps/broker.py)."""

    def __init__(self, *, clock: Clock | None = None, cleanup_interval: float = 1.0) -> None:
        self._clock: Clock = clock or time.monotonic
        self._cleanup_interval = cleanup_interval
        self._handler: BrokerEventHandler | None = None
        self._subscribed: set[str] = set()
        self._channels: dict[str, _Channel] = {}
        self._key_expiry: ExpiryQueue[tuple[str, str]] = ExpiryQueue()
        self._stream_expiry: ExpiryQueue[str] = ExpiryQueue()
        self._meta_expiry: ExpiryQueue[str] = ExpiryQueue()
        # channel -> idempotency key -> (expire_at, position of the first result)
        self._results: dict[str, dict[str, tuple[float, StreamPosition]]] = {}
        self._results_expiry: ExpiryQueue[tuple[str, str]] = ExpiryQueue()
        self._cleanup_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def run(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        if self._cleanup_task is None and self._cleanup_interval > 0:
            self._cleanup_task = asyncio.create_task(
                self._cleanup_loop(), name="memory-map-broker-cleanup"
            )

    async def close(self) -> None:
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            # wait() neither raises the task's CancelledError nor hides our own.
            await asyncio.wait([task])
        self._handler = None

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_interval)
            try:
                self.cleanup()
            except Exception:
                logger.exception("memory map broker cleanup failed")

    def cleanup(self) -> None:
        """Expire what is due now: keys (removed and delivered as `remove` does), then stream
        entries, channels, idempotency results. Keys first, so that a channel dropped in the
        same sweep has delivered its removals."""
        now = self._clock()
        for channel, key in self._key_expiry.pop_due(now):
            c = self._channels.get(channel)
            entry = c.state.get(key) if c is not None else None
            if c is None or entry is None:
                continue  # removed or cleared meanwhile
            if entry.expire_at > now:  # rewritten with a later deadline: keep watching it
                self._key_expiry.schedule((channel, key), entry.expire_at)
                continue
            self._remove_entry(channel, c, key, entry.pub.tags, now)
        for channel in self._stream_expiry.pop_due(now):
            c = self._channels.get(channel)
            if c is not None and c.stream_expire_at <= now:
                c.stream.clear()
        for channel in self._meta_expiry.pop_due(now):
            c = self._channels.get(channel)
            if c is None or c.meta_expire_at > now:
                continue
            if c.state:
                self._touch_meta(channel, c, now)
            else:
                del self._channels[channel]
        for channel, ikey in self._results_expiry.pop_due(now):
            results = self._results.get(channel)
            if results is None:
                continue
            cached = results.get(ikey)
            if cached is not None and cached[0] <= now:
                del results[ikey]
                if not results:
                    del self._results[channel]

    @property
    def num_channels(self) -> int:
        """Channels held in memory (with their epoch), expired ones until the sweep."""
        return len(self._channels)

    @property
    def num_idempotency_results(self) -> int:
        return sum(len(r) for r in self._results.values())

    # -- node subscriptions ----------------------------------------------------

    async def subscribe(self, channels: list[str]) -> None:
        # Nothing to wire up in one process: deliveries are filtered by this set.
        self._subscribed.update(channels)

    async def unsubscribe(self, channels: list[str]) -> None:
        self._subscribed.difference_update(channels)

    def _deliver(self, channel: str, pub: Publication, epoch: str) -> None:
        handler = self._handler
        if handler is None or channel not in self._subscribed:
            return
        try:
            handler.handle_publication(channel, pub, epoch)
        except Exception:
            # The change is committed; a delivery bug must not fail the writer (or the sweep).
            logger.exception("map publication handler failed for channel %r", channel)

    # -- channels ----------------------------------------------------------------

    def _channel(self, channel: str, opts: MapChannelOptions, now: float) -> _Channel:
        """The channel, created with a new epoch (and its meta TTL running) when absent.
        Reads and changes refresh the meta TTL themselves; suppressed writes do not
        (centrifuge's NoRefreshTTL_LetsMetaExpire)."""
        c = self._channels.get(channel)
        if c is None:
            c = _Channel(opts)
            self._channels[channel] = c
            self._touch_meta(channel, c, now)
        else:
            c.opts = opts
        return c

    def _touch_meta(self, channel: str, c: _Channel, now: float) -> None:
        ttl = _meta_ttl(c.opts)
        if ttl > 0:
            c.meta_expire_at = now + ttl
            self._meta_expiry.schedule(channel, c.meta_expire_at)
        else:
            c.meta_expire_at = math.inf

    def _stream_items(self, c: _Channel, now: float) -> deque[Publication]:
        if c.stream and c.stream_expire_at <= now:
            c.stream.clear()  # the sweep has not reached it yet
        return c.stream

    def _append(self, channel: str, c: _Channel, pub: Publication, now: float) -> None:
        """Give `pub` the next offset and append it, trimmed to stream_size."""
        opts = c.opts
        stream = self._stream_items(c, now)
        c.top += 1
        pub.offset = c.top
        stream.append(pub)
        while len(stream) > opts.stream_size:
            stream.popleft()
        if opts.stream_ttl > 0:
            c.stream_expire_at = now + opts.stream_ttl
            self._stream_expiry.schedule(channel, c.stream_expire_at)

    def _remove_entry(
        self, channel: str, c: _Channel, key: str, tags: dict[str, str] | None, now: float
    ) -> StreamPosition:
        """Delete `key`, append its removal (modes with a stream) and deliver it: the one
        removal path of `remove` and of key expiry."""
        del c.state[key]
        c.sorted_keys = None
        removal = Publication(b"", tags=tags, time=_unix_ms(), key=key, removed=True)
        has_stream = c.opts.mode.has_stream
        if has_stream:
            self._append(channel, c, removal, now)
        self._deliver(channel, _copy(removal), c.epoch if has_stream else "")
        return c.position()

    # -- idempotency -------------------------------------------------------------

    def _cached_result(self, channel: str, ikey: str, now: float) -> MapUpdateResult | None:
        results = self._results.get(channel)
        cached = results.get(ikey) if results is not None else None
        if cached is None or cached[0] <= now:
            return None
        pos = cached[1]
        return MapUpdateResult(StreamPosition(pos.offset, pos.epoch), True, SUPPRESS_IDEMPOTENCY)

    def _remember(
        self, channel: str, ikey: str, ttl: float, pos: StreamPosition, now: float
    ) -> None:
        expire_at = now + (ttl or DEFAULT_IDEMPOTENT_RESULT_TTL)
        self._results.setdefault(channel, {})[ikey] = (
            expire_at,
            StreamPosition(pos.offset, pos.epoch),
        )
        self._results_expiry.schedule((channel, ikey), expire_at)

    # -- writes --------------------------------------------------------------------

    async def publish(
        self, channel: str, key: str, opts: MapPublishOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        has_stream = chopts.mode.has_stream
        check_stream_features(channel, chopts, opts.expected_position, opts.version)
        now = self._clock()
        if opts.idempotency_key:
            cached = self._cached_result(channel, opts.idempotency_key, now)
            if cached is not None:
                return cached

        c = self._channel(channel, chopts, now)
        prev = c.state.get(key) if key else None

        if has_stream and key and opts.version > 0 and prev is not None:
            same_epoch = opts.version_epoch in ("", prev.version_epoch)
            if same_epoch and opts.version <= prev.version:
                return MapUpdateResult(c.position(), True, SUPPRESS_VERSION)

        if key and opts.key_mode is KeyMode.IF_NEW and prev is not None:
            if opts.refresh_ttl_on_suppress and chopts.key_ttl > 0:
                # Presence keep-alive: the key lives on without a stream entry.
                prev.expire_at = now + chopts.key_ttl
                self._key_expiry.schedule((channel, key), prev.expire_at)
                self._touch_meta(channel, c, now)  # or the channel goes before its key
            return MapUpdateResult(c.position(), True, SUPPRESS_KEY_EXISTS)
        if key and opts.key_mode is KeyMode.IF_EXISTS and prev is None:
            return MapUpdateResult(c.position(), True, SUPPRESS_KEY_NOT_FOUND)

        expected = opts.expected_position
        if key and expected is not None:
            if prev is None:
                return MapUpdateResult(c.position(), True, SUPPRESS_POSITION_MISMATCH)
            if prev.pub.offset != expected.offset or c.epoch != expected.epoch:
                current = MapCurrentEntry(prev.pub.offset, prev.pub.data)
                return MapUpdateResult(c.position(), True, SUPPRESS_POSITION_MISMATCH, current)

        # One object for state and stream (readers get copies); _append sets its offset.
        pub = Publication(opts.data, opts.client_info, 0, opts.tags, _unix_ms(), key=key)
        if has_stream:
            self._append(channel, c, pub, now)
        self._touch_meta(channel, c, now)
        if key:
            version, version_epoch = opts.version, opts.version_epoch
            if version == 0 and prev is not None:
                # An unversioned write keeps the stored version, so a late older write of a
                # versioned producer is still dropped (centrifuge, as its Redis broker).
                version, version_epoch = prev.version, prev.version_epoch
            expires = chopts.mode.has_expiry and chopts.key_ttl > 0
            expire_at = now + chopts.key_ttl if expires else math.inf
            c.state[key] = _Entry(pub, expire_at, version, version_epoch)
            if prev is None:
                c.sorted_keys = None
            if expires:
                self._key_expiry.schedule((channel, key), expire_at)

        position = c.position()
        if opts.idempotency_key:
            self._remember(channel, opts.idempotency_key, opts.idempotent_result_ttl, position, now)
        delivered = _copy(pub)
        delivered.delta = opts.delta  # the publisher's "may go as delta" (app/hub.py)
        if opts.delta and prev is not None:
            delivered.prev_data = prev.pub.data
        self._deliver(channel, delivered, c.epoch if has_stream else "")
        return MapUpdateResult(position)

    async def remove(
        self, channel: str, key: str, opts: MapRemoveOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        check_stream_features(channel, chopts, opts.expected_position)
        now = self._clock()
        if opts.idempotency_key:
            cached = self._cached_result(channel, opts.idempotency_key, now)
            if cached is not None:
                return cached

        expected = opts.expected_position
        c = self._channels.get(channel)
        if c is None:
            # No channel, no epoch: a CAS cannot match (Redis creates the meta with a new
            # epoch and reports the mismatch); without CAS the key is simply not there.
            reason = SUPPRESS_POSITION_MISMATCH if expected is not None else SUPPRESS_KEY_NOT_FOUND
            return MapUpdateResult(StreamPosition(), True, reason)
        c.opts = chopts
        entry = c.state.get(key)
        # CAS before the missing-key answer, as centrifuge's brokers do: a CAS caller
        # branches on position_mismatch to re-read and retry.
        if expected is not None:
            if entry is None:
                return MapUpdateResult(c.position(), True, SUPPRESS_POSITION_MISMATCH)
            if entry.pub.offset != expected.offset or c.epoch != expected.epoch:
                current = MapCurrentEntry(entry.pub.offset, entry.pub.data)
                return MapUpdateResult(c.position(), True, SUPPRESS_POSITION_MISMATCH, current)
        if entry is None:
            return MapUpdateResult(c.position(), True, SUPPRESS_KEY_NOT_FOUND)

        tags = opts.tags if opts.tags is not None else entry.pub.tags
        position = self._remove_entry(channel, c, key, tags, now)
        self._touch_meta(channel, c, now)
        if opts.idempotency_key:
            self._remember(channel, opts.idempotency_key, opts.idempotent_result_ttl, position, now)
        return MapUpdateResult(position)

    # -- reads -------------------------------------------------------------------

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
        now = self._clock()
        existed = channel in self._channels
        c = self._channel(channel, chopts, now)
        self._touch_meta(channel, c, now)
        position = c.position()
        if revision is not None:
            # A new channel matches only a revision without epoch (centrifuge's getState).
            stale = revision.epoch != "" if not existed else revision.epoch != c.epoch
            if stale:
                raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        if key:
            entry = c.state.get(key)
            return MapStateResult([_copy(entry.pub)] if entry is not None else [], position)
        if limit == 0 or not c.state:
            return MapStateResult([], position)

        keys = c.sorted_keys
        if keys is None:
            keys = c.sorted_keys = sorted(c.state)
        # The cursor is the last key returned: a key added or removed meanwhile shifts no
        # page, and its change is in the stream the client reads next.
        start = bisect_right(keys, cursor) if cursor else 0
        n = len(keys)
        end = n if limit < 0 else min(n, start + limit)
        state = c.state
        pubs = [_copy(state[k].pub) for k in islice(keys, start, end)]
        next_cursor = keys[end - 1] if 0 < limit and start < end < n else ""
        return MapStateResult(pubs, position, next_cursor)

    async def read_stream(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        since: StreamPosition | None = None,
        limit: int = -1,
        reverse: bool = False,
    ) -> MapStreamResult:
        now = self._clock()
        c = self._channel(channel, chopts, now)
        self._touch_meta(channel, c, now)
        position = c.position()
        if since is not None and since.epoch and since.epoch != c.epoch:
            raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        items = self._stream_items(c, now)
        n = len(items)
        first = c.top - n + 1  # offset of items[0]; top + 1 when nothing is kept
        if since is not None and not reverse and since.offset < c.top and first > since.offset + 1:
            # The reader's next offset is no longer kept (trimmed, or the stream expired): it
            # cannot catch up and must re-sync. centrifuge checks this in Node.MapStreamRead,
            # only for since > 0 and only on entries returned; the contract (and the Redis
            # script) checks every forward read, since 0 and position-only reads included.
            raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        if limit == 0:
            return MapStreamResult([], position)
        if not reverse:
            start = 0 if since is None else max(0, since.offset + 1 - first)
            stop = n if limit < 0 else min(n, start + limit)
            pubs = [_copy(p) for p in islice(items, start, stop)]
        else:
            # Newest first, from the entry before since.offset; nothing when that entry is
            # not kept (centrifuge's memstream.Get).
            end = n if since is None else since.offset - first  # exclusive index bound
            if end <= 0 or end > n:
                return MapStreamResult([], position)
            count = end if limit < 0 else min(end, limit)
            skip = n - end
            pubs = [_copy(p) for p in islice(reversed(items), skip, skip + count)]
        return MapStreamResult(pubs, position)

    async def stats(self, channel: str) -> int:
        c = self._channels.get(channel)
        return len(c.state) if c is not None else 0

    async def clear(self, channel: str) -> None:
        # Stale expiry-heap entries of the channel are skipped when they surface.
        self._channels.pop(channel, None)
        self._results.pop(channel, None)


# Conformance, checked by mypy (centrifuge's `var _ MapBroker = (*MemoryMapBroker)(nil)`).
_map_broker: type[MapBroker] = MemoryMapBroker
