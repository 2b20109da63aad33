"""In-process Broker and PresenceManager (the zero-dependency default engine).

Semantics follow centrifuge's memory broker so that clients see the same thing
as with Redis:

- A channel stream has an epoch (8 random ASCII letters) and a top offset that
  grows by one per publication with history, starting at 1. The stream meta is
  created by the first publish with history or by the first history read.
- The meta lives `history_meta_ttl` after its last access (publish or read);
  once it lapses the stream is dropped, so the next use starts a new epoch at
  offset 0. That is how subscribers learn their position is gone.
- `history_ttl` is an inactivity TTL of the stored items, as in Redis where the
  stream key's EXPIRE is refreshed on every publish: the items are dropped
  `history_ttl` after the last publication while the meta (epoch, top) stays.
- Items are trimmed to `history_size`, oldest first.
- Versioned publish: the stream keeps the last stored `version` and `version_epoch`
  (beside epoch and top, like the Redis meta hash's v and ve); a publication whose
  version is not newer in the same version epoch ("" matches any) is dropped and the
  current top returned. An unversioned publication neither is checked nor resets them
  (as Redis does; centrifuge's memory broker resets them to 0).

Everything runs on the event loop without awaiting in between, so each method
is atomic with respect to the others. Expired state is dropped lazily on access
and by a periodic sweep started in `run()`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Hashable
from itertools import islice
from typing import Generic, TypeVar

from app.broker import Broker, BrokerEventHandler, ControlEventHandler, Controller
from app.models import (
    ClientInfo,
    HistoryFilter,
    HistoryResult,
    PresenceStats,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from app.presence import PresenceManager

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_META_TTL = 720 * 3600.0  # Centrifugo's channel.history_meta_ttl default
DEFAULT_IDEMPOTENT_RESULT_TTL = 300.0
DEFAULT_PRESENCE_TTL = 60.0

_EPOCH_ALPHABET = string.ascii_letters

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)


def generate_epoch() -> str:
    """8 letters from [a-zA-Z], like centrifuge's internal/epoch."""
    return "".join(secrets.choice(_EPOCH_ALPHABET) for _ in range(8))


class ExpiryQueue(Generic[K]):
    """Deadlines per key in a heap, at most one heap entry per key.

    Re-scheduling a key only updates its deadline in a dict; the stale heap entry
    is pushed back with the newer deadline when it surfaces. This keeps the heap
    size bounded by the number of keys however often they are touched.
    """

    __slots__ = ("_heap", "_deadlines")

    def __init__(self) -> None:
        self._heap: list[tuple[float, K]] = []
        self._deadlines: dict[K, float] = {}

    def __len__(self) -> int:
        return len(self._deadlines)

    def schedule(self, key: K, deadline: float) -> None:
        if key not in self._deadlines:
            heapq.heappush(self._heap, (deadline, key))
        self._deadlines[key] = deadline

    def pop_due(self, now: float) -> list[K]:
        due: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            deadline = self._deadlines[key]
            if deadline <= now:
                del self._deadlines[key]
                due.append(key)
            else:
                heapq.heappush(heap, (deadline, key))
        return due


class _Stream:
    __slots__ = (
        "epoch",
        "top",
        "items",
        "meta_expire_at",
        "items_expire_at",
        "version",
        "version_epoch",
    )

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.top = 0
        # The last stored publication's version (0: none yet) and its version epoch.
        self.version = 0
        self.version_epoch = ""
        # Offsets in `items` are dense: items[i].offset == top - len(items) + 1 + i.
        self.items: deque[Publication] = deque()
        self.meta_expire_at = math.inf
        self.items_expire_at = math.inf


def _copy_pub(p: Publication) -> Publication:
    # History readers get their own objects so that nothing they do (delta
    # encoding, clearing fields) can alter the stored stream. Without `delta`: on a stored
    # publication it is the publisher's "may use delta" (for the hub's fan-out), while on
    # the wire it means "data is a patch", which a stored publication never is.
    return Publication(p.data, p.info, p.offset, p.tags, p.time)


class MemoryBroker:
    """Broker and Controller for one process. Delivers every publication to the handler;
    the node filters."""

    def __init__(
        self,
        *,
        history_meta_ttl: float = DEFAULT_HISTORY_META_TTL,
        clock: Clock | None = None,
        cleanup_interval: float = 1.0,
    ) -> None:
        # history_meta_ttl is used when neither PublishOptions nor HistoryFilter
        # set one; 0 here means the meta never expires.
        self._default_meta_ttl = history_meta_ttl
        self._clock: Clock = clock or time.monotonic
        self._cleanup_interval = cleanup_interval
        self._handler: BrokerEventHandler | None = None
        self._control: ControlEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._meta_expiry: ExpiryQueue[str] = ExpiryQueue()
        self._items_expiry: ExpiryQueue[str] = ExpiryQueue()
        self._results: dict[tuple[str, str], tuple[float, StreamPosition]] = {}
        self._results_expiry: ExpiryQueue[tuple[str, str]] = ExpiryQueue()
        self._subscribed: set[str] = set()
        self._cleanup_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def run(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        if self._cleanup_task is None and self._cleanup_interval > 0:
            self._cleanup_task = asyncio.create_task(
                self._cleanup_loop(), name="memory-broker-cleanup"
            )

    async def close(self) -> None:
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            # wait() neither raises the task's CancelledError nor hides our own.
            await asyncio.wait([task])
        self._handler = None
        self._control = None

    async def run_control(self, handler: ControlEventHandler) -> None:
        self._control = handler

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_interval)
            try:
                self.cleanup()
            except Exception:
                logger.exception("memory broker cleanup failed")

    def cleanup(self) -> None:
        """Drop expired streams, stream items and idempotency results now."""
        now = self._clock()
        for ch in self._meta_expiry.pop_due(now):
            s = self._streams.get(ch)
            if s is not None and s.meta_expire_at <= now:
                del self._streams[ch]
        for ch in self._items_expiry.pop_due(now):
            s = self._streams.get(ch)
            if s is not None and s.items_expire_at <= now:
                s.items.clear()
        for key in self._results_expiry.pop_due(now):
            entry = self._results.get(key)
            if entry is not None and entry[0] <= now:
                del self._results[key]

    @property
    def num_streams(self) -> int:
        """Streams currently held in memory (expired ones may linger until cleanup)."""
        return len(self._streams)

    @property
    def subscribed_channels(self) -> frozenset[str]:
        return frozenset(self._subscribed)

    # -- node subscriptions ----------------------------------------------------

    async def subscribe(self, channels: list[str]) -> None:
        # Nothing to wire up in one process: every publication already reaches the handler.
        self._subscribed.update(channels)

    async def unsubscribe(self, channels: list[str]) -> None:
        self._subscribed.difference_update(channels)

    # -- streams -----------------------------------------------------------------

    def _stream(self, channel: str, now: float, create: bool) -> _Stream | None:
        s = self._streams.get(channel)
        if s is not None:
            if s.meta_expire_at <= now:
                del self._streams[channel]
                s = None
            elif s.items and s.items_expire_at <= now:
                s.items.clear()
        if s is None and create:
            s = _Stream(generate_epoch())
            self._streams[channel] = s
        return s

    def _touch_meta(self, channel: str, s: _Stream, now: float, meta_ttl: float) -> None:
        ttl = meta_ttl if meta_ttl > 0 else self._default_meta_ttl
        if ttl > 0:
            s.meta_expire_at = now + ttl
            self._meta_expiry.schedule(channel, s.meta_expire_at)
        else:
            s.meta_expire_at = math.inf

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        now = self._clock()
        result_key: tuple[str, str] | None = None
        if opts.idempotency_key:
            result_key = (channel, opts.idempotency_key)
            cached = self._results.get(result_key)
            if cached is not None:
                if cached[0] > now:
                    pos = cached[1]
                    return PublishResult(StreamPosition(pos.offset, pos.epoch), True, "idempotency")
                del self._results[result_key]

        pub = Publication(data=data, info=opts.client_info, tags=opts.tags, delta=opts.delta)
        if opts.history_size > 0 and opts.history_ttl > 0:
            s = self._stream(channel, now, create=True)
            assert s is not None
            version = opts.version
            if version:
                if version <= s.version and opts.version_epoch in ("", s.version_epoch):
                    # Not newer than what the channel holds: not stored, not sent, and
                    # its idempotency key not remembered (centrifuge's historyHub.add).
                    return PublishResult(StreamPosition(s.top, s.epoch), True, "version")
                s.version = version
                s.version_epoch = opts.version_epoch
            s.top += 1
            pub.offset = s.top
            items = s.items
            items.append(pub)
            while len(items) > opts.history_size:
                items.popleft()
            s.items_expire_at = now + opts.history_ttl
            self._items_expiry.schedule(channel, s.items_expire_at)
            self._touch_meta(channel, s, now, opts.history_meta_ttl)
            epoch = s.epoch
            position = StreamPosition(s.top, epoch)
        else:
            epoch = ""
            position = StreamPosition()

        if result_key is not None:
            ttl = opts.idempotent_result_ttl or DEFAULT_IDEMPOTENT_RESULT_TTL
            if ttl > 0:
                expire_at = now + ttl
                self._results[result_key] = (expire_at, StreamPosition(position.offset, epoch))
                self._results_expiry.schedule(result_key, expire_at)

        handler = self._handler
        if handler is not None:
            try:
                handler.handle_publication(channel, pub, epoch)
            except Exception:
                # The publication is committed; a delivery bug must not fail the publisher.
                logger.exception("publication handler failed for channel %r", channel)
        return PublishResult(position)

    async def history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        now = self._clock()
        s = self._stream(channel, now, create=True)
        assert s is not None
        self._touch_meta(channel, s, now, flt.meta_ttl)
        position = StreamPosition(s.top, s.epoch)
        items = s.items
        n = len(items)
        if flt.limit == 0 or n == 0:
            return HistoryResult([], position)
        first = s.top - n + 1
        since = flt.since
        limit = flt.limit
        if not flt.reverse:
            start = 0 if since is None else max(0, since.offset + 1 - first)
            if start >= n:
                return HistoryResult([], position)
            stop = n if limit < 0 else min(n, start + limit)
            pubs = [_copy_pub(p) for p in islice(items, start, stop)]
        else:
            # `end` is the exclusive index bound: entries with offset < since.offset.
            end = n if since is None else min(n, since.offset - first)
            if end <= 0:
                return HistoryResult([], position)
            count = end if limit < 0 else min(end, limit)
            skip = n - end
            pubs = [_copy_pub(p) for p in islice(reversed(items), skip, skip + count)]
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        s = self._stream(channel, self._clock(), create=False)
        if s is not None:
            s.items.clear()

    # -- join / leave / control ----------------------------------------------

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._handler is not None:
            self._handler.handle_leave(channel, info)

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        # One process is one node: a message to all nodes or to a node id reaches us.
        if self._control is not None:
            self._control.handle_control(data)


class MemoryPresenceManager:
    """Presence for one process: channel -> client id -> (info, expiry)."""

    def __init__(
        self,
        presence_ttl: float = DEFAULT_PRESENCE_TTL,
        *,
        clock: Clock | None = None,
        cleanup_interval: float = 10.0,
    ) -> None:
        self._ttl = presence_ttl
        self._clock: Clock = clock or time.monotonic
        self._cleanup_interval = cleanup_interval
        self._channels: dict[str, dict[str, tuple[ClientInfo, float]]] = {}
        self._cleanup_task: asyncio.Task[None] | None = None
        self._closed = False

    def _live(self, channel: str) -> dict[str, tuple[ClientInfo, float]] | None:
        entries = self._channels.get(channel)
        if entries is None:
            return None
        now = self._clock()
        expired = [cid for cid, (_, exp) in entries.items() if exp <= now]
        for cid in expired:
            del entries[cid]
        if not entries:
            del self._channels[channel]
            return None
        return entries

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        entries = self._live(channel)
        if entries is None:
            return {}
        return {cid: info for cid, (info, _) in entries.items()}

    async def presence_stats(self, channel: str) -> PresenceStats:
        entries = self._live(channel)
        if entries is None:
            return PresenceStats()
        users = {info.user for info, _ in entries.values()}
        return PresenceStats(num_clients=len(entries), num_users=len(users))

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        expire_at = self._clock() + self._ttl if self._ttl > 0 else math.inf
        self._channels.setdefault(channel, {})[client_id] = (info, expire_at)
        if self._cleanup_task is None and not self._closed and self._cleanup_interval > 0:
            self._cleanup_task = asyncio.create_task(
                self._cleanup_loop(), name="memory-presence-cleanup"
            )

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None:
        entries = self._channels.get(channel)
        if entries is None:
            return
        entries.pop(client_id, None)
        if not entries:
            del self._channels[channel]

    def cleanup(self) -> None:
        """Drop expired entries of every channel now."""
        for channel in list(self._channels):
            self._live(channel)

    @property
    def num_channels(self) -> int:
        return len(self._channels)

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_interval)
            try:
                self.cleanup()
            except Exception:
                logger.exception("memory presence cleanup failed")

    async def close(self) -> None:
        self._closed = True
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


# Conformance, checked by mypy (centrifuge's `var _ Broker = (*MemoryBroker)(nil)`).
_broker: type[Broker] = MemoryBroker
_controller: type[Controller] = MemoryBroker
_presence: type[PresenceManager] = MemoryPresenceManager
