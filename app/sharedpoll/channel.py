"""One shared poll channel on this worker: its tracked items, who tracks each, and the
loop that asks the backend about them (centrifuge shared_poll.go sharedPollChannelState,
keyed_hub.go keyedHub).

One refresh call per channel and batch for every subscriber of the worker: the loop polls
all tracked keys every `refresh_interval` (in `refresh_batch_size` chunks spread over the
interval), and at once the keys that a new subscriber needs data for (`notify`). What the
backend says changed is delivered to the connections tracking the key; each connection
filters by the version it already holds (app/client/polling.py).

Versioned mode: the backend's versions count; a changed reply epoch resets every item and
sends the subscribers away with 2500 (insufficient state) to track again from version 0.
Versionless mode: the backend sends no versions; a change of the data (its hash) makes a
new version from this channel's counter, and the channel's own epoch (new each time the
state is made) tells a client on resubscribe that its versions mean nothing any more.

Across workers (Redis engine) a `ChannelLink` (coordination.py, redis_link.py) decides
who polls: the lease holder polls the union of every worker's keys (`remote` holds the
keys only other workers track) and hands each reply's changes to the others
(`send_results`); a follower never calls the backend: it adopts the leader's versions
(`adopt`, versionless ones included, made from one counter in Redis) and forwards the
keys its joins need polled at once. Without a link (memory engine) the channel polls for
this worker alone.

Everything runs on the worker's event loop: the Go code's locks and reservations (a
track's subscriber joining the hub before a concurrent untrack deletes the entry) have no
counterpart because no await separates the steps they guard.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from app import metrics
from app.proxy import ProxyUnavailable
from app.proxy.models import SharedPollItem, SharedPollRefreshResult
from app.sharedpoll import metrics as pm
from app.sharedpoll.coordination import LinkUnavailable
from app.sharedpoll.frames import PollPub
from app.sharedpoll.options import CALL_TIMEOUT, PollOptions

if TYPE_CHECKING:
    from app.sharedpoll.coordination import ChannelLink

log = logging.getLogger("centrifugo.sharedpoll")

__all__ = ["Entry", "PollChannel", "PollSubscriber", "Refresher", "new_epoch"]

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def new_epoch() -> str:
    """8 random letters (centrifuge internal/epoch.Generate); the SDK checks the length."""
    return "".join(_LETTERS[b % len(_LETTERS)] for b in secrets.token_bytes(8))


class PollSubscriber(Protocol):
    """What a channel needs of a connection tracking its keys (app/client/polling.py)."""

    uid: str

    def poll_publication(self, pub: PollPub) -> None:
        """Deliver if `pub.version` is newer than what the connection holds for the key."""

    def poll_removal(self, pub: PollPub) -> None:
        """The backend removed the key: deliver and stop tracking it."""

    def poll_state_lost(self, channel: str) -> None:
        """The channel's epoch changed: unsubscribe with 2500 so the client tracks again."""


# (channel, [(key, version)]) -> the backend's answer; raises ProxyUnavailable.
Refresher = Callable[[str, list[tuple[str, int]]], Awaitable[SharedPollRefreshResult]]


@dataclass(slots=True)
class Entry:
    """A tracked item (sharedPollTrackedEntry; no data kept: Centrifugo never sets
    KeepLatestData)."""

    version: int = 0  # last version from the backend (or made here, versionless)
    data_hash: int = 0  # versionless change detection
    fresh_from_publish: bool = False  # shared_poll_publish brought it: skip one timer poll
    needs_broadcast: bool = False  # a version-0 subscriber joined: send the next data


class PollChannel:
    __slots__ = (
        "channel",
        "opts",
        "epoch",
        "entries",
        "subs",
        "closed",
        "_refresh",
        "_sem",
        "_on_empty",
        "_counter",
        "_notified",
        "_wake",
        "_task",
        "_shutdown",
        "_ns",
        "link",
        "remote",
    )

    def __init__(
        self,
        channel: str,
        opts: PollOptions,
        refresh: Refresher,
        sem: asyncio.Semaphore,
        on_empty: Callable[[PollChannel], None],
        link: ChannelLink | None = None,
    ) -> None:
        self.channel = channel
        self.opts = opts
        # Versioned: the publisher's epoch, learnt from the first reply or publish.
        self.epoch = new_epoch() if opts.versionless else ""
        self.entries: dict[str, Entry] = {}
        self.subs: dict[str, dict[str, PollSubscriber]] = {}  # key -> uid -> connection
        self.closed = False
        self._refresh = refresh
        self._sem = sem
        self._on_empty = on_empty  # the manager forgets the channel
        self._counter = 0  # versionless: the last version made here
        self._notified: dict[str, None] = {}  # keys to poll at once, in order
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._shutdown: asyncio.TimerHandle | None = None
        self._ns = metrics.namespace_of(channel)
        # Across workers: who polls (None: this worker alone), and the leader's entries of
        # the keys only other workers track (their subscribers are there, not here).
        self.link = link
        self.remote: dict[str, Entry] = {}

    # ------------------------------------------------------------------ tracking

    def track(self, keys: Iterable[str]) -> list[tuple[bool, int]]:
        """Register keys (before their subscriber joins); (is_new, entry version) each."""
        if self._shutdown is not None:
            self._shutdown.cancel()
            self._shutdown = None
        out = []
        for key in keys:
            entry = self.entries.get(key)
            if entry is None:
                self.entries[key] = Entry()
                out.append((True, 0))
            else:
                out.append((False, entry.version))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return out

    def add_subscriber(self, key: str, sub: PollSubscriber) -> None:
        self.subs.setdefault(key, {})[sub.uid] = sub

    def remove_subscriber(self, key: str, sub: PollSubscriber) -> None:
        """Drop `sub` from `key`; the last one gone untracks the key, the last key gone
        shuts the channel down after `channel_shutdown_delay` (scheduleShutdown)."""
        subs = self.subs.get(key)
        if subs is None or subs.pop(sub.uid, None) is None:
            return
        if subs:
            return
        del self.subs[key]
        self.entries.pop(key, None)
        if not self.entries:
            self._schedule_shutdown()

    def _schedule_shutdown(self) -> None:
        if self._shutdown is not None:
            self._shutdown.cancel()
        if self.opts.shutdown_delay < 0:
            self.close()
            return
        loop = asyncio.get_running_loop()
        self._shutdown = loop.call_later(self.opts.shutdown_delay, self._shutdown_if_empty)

    def _shutdown_if_empty(self) -> None:
        self._shutdown = None
        if not self.entries:
            self.close()

    def close(self) -> None:
        """Stop polling and let the manager forget this state (a later track makes a new
        one, with a new epoch in versionless mode)."""
        if self.closed:
            return
        self.closed = True
        if self._shutdown is not None:
            self._shutdown.cancel()
            self._shutdown = None
        if self._task is not None:
            self._task.cancel()
        if self.link is not None:
            self.link.close()
        self._on_empty(self)

    def notify(self, key: str) -> None:
        """Poll `key` now rather than at the next interval."""
        if key in self.entries or key in self.remote:
            self._notified[key] = None
            self._wake.set()
            metrics.child(pm.NOTIFY, self._ns).inc()

    def mark_needs_broadcast(self, keys: Iterable[str]) -> None:
        """Existing keys a version-0 subscriber joined: the next reply is sent even if
        unchanged; keys that have data are polled now, once per wave of such joins."""
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None and not entry.needs_broadcast:
                entry.needs_broadcast = True
                if entry.version > 0:
                    self.notify(key)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.link
        if link is not None:
            await link.ready.wait()  # the role decides what a notification does
        interval = self.opts.refresh_interval
        deadline = loop.time() + interval
        # `closed`, not only the cancel: Python 3.11's wait_for can swallow a cancellation
        # that lands as the awaited call completes, and this loop must not outlive close().
        while not self.closed:
            if not self._notified:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    pass
            if self._notified:
                keys = list(self._notified)
                self._notified.clear()
                if link is None or link.leader:
                    await self._poll(keys, "notification")
                else:
                    link.forward(keys)
            if loop.time() >= deadline:
                if link is not None and not link.leader:
                    deadline = loop.time() + interval  # the leader polls
                    continue
                started = loop.time()
                spread = await self._cycle()
                took = loop.time() - started
                metrics.child(pm.CYCLE_DURATION, self._ns).observe(took)
                metrics.child(pm.CYCLE_WORK_DURATION, self._ns).observe(max(took - spread, 0))
                # Period-based, as centrifuge: the next cycle starts an interval after
                # this one started, at once if it took longer.
                deadline = started + interval

    async def _cycle(self) -> float:
        """Poll every tracked key (but those a publish just refreshed), in sorted chunks
        whose dispatch is spread over the interval; returns the spread delay."""
        keys = []
        for entries in (self.entries, self.remote):
            for key, entry in entries.items():
                if entry.fresh_from_publish:
                    entry.fresh_from_publish = False
                    continue
                keys.append(key)
        if not keys:
            return 0.0
        keys.sort()
        size = self.opts.batch_size
        chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
        delay = self.opts.refresh_interval / len(chunks) if len(chunks) > 1 else 0.0
        calls = []
        for i, chunk in enumerate(chunks):
            if i and delay:
                await asyncio.sleep(delay)
            calls.append(asyncio.ensure_future(self._poll(chunk, "timer")))
        await asyncio.gather(*calls)
        return delay * (len(chunks) - 1)

    def _entry(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        return entry if entry is not None else self.remote.get(key)

    async def _poll(self, keys: list[str], trigger: str) -> None:
        items = []
        for key in keys:
            entry = self._entry(key)
            if entry is None:
                continue  # untracked meanwhile
            version = 0
            if not self.opts.versionless and not entry.needs_broadcast:
                version = entry.version
            items.append((key, version))
        if not items:
            return
        labels = (trigger, self._ns)
        waited = time.monotonic()
        async with self._sem:
            metrics.child(pm.SEM_WAIT_DURATION, *labels).observe(time.monotonic() - waited)
            metrics.child(pm.ITEMS, trigger, "polled", self._ns).inc(len(items))
            started = time.monotonic()
            try:
                result = await asyncio.wait_for(self._refresh(self.channel, items), CALL_TIMEOUT)
            except (ProxyUnavailable, TimeoutError) as e:
                metrics.child(pm.HANDLER_ERRORS, *labels).inc()
                log.warning("shared poll refresh error in %r: %s", self.channel, e)
                return
            finally:
                metrics.child(pm.HANDLER_DURATION, *labels).observe(time.monotonic() - started)
        if self.closed:
            return
        if self.link is None:
            self.apply(result.epoch, result.items, trigger)
        else:
            await self._apply_as_leader(self.link, result.epoch, result.items, trigger)

    # ------------------------------------------------------------------ results

    def apply(self, epoch: str, items: list[SharedPollItem], trigger: str) -> None:
        """A backend reply: deliver what changed, remove what was removed
        (applyRefreshResponse); versionless versions from this channel's counter."""
        if not self.opts.versionless:
            self.flip_epoch(epoch)
        pubs, removals, made = self._diff(items, trigger)
        for pub, entry, data_hash in made:
            self._counter += 1
            pub.version = entry.version = self._counter
            entry.data_hash = data_hash
        self._deliver(pubs, removals)

    async def _apply_as_leader(
        self, link: ChannelLink, epoch: str, items: list[SharedPollItem], trigger: str
    ) -> None:
        """`apply` on the polling worker of a coordinated channel: versionless versions
        come from the counter in Redis, and the changes go to the other workers too, with
        the epoch they must hold (the backend's, or the shared versionless one)."""
        if self.opts.versionless:
            epoch = self.epoch
        else:
            self.flip_epoch(epoch)
        pubs, removals, made = self._diff(items, trigger)
        if made:
            try:
                first = await link.allocate(len(made)) - len(made) + 1
            except LinkUnavailable as e:
                # The hashes stay as they were, so the next poll finds the change again.
                log.warning("shared poll versions for %r unavailable: %s", self.channel, e)
                pubs = [p for p in pubs if p.version]
                made = []
            for i, (pub, entry, data_hash) in enumerate(made):
                pub.version = entry.version = first + i
                entry.data_hash = data_hash
        if self.closed:
            return
        self._deliver(pubs, removals)
        gone = [PollPub(self.channel, key, b"", 0, removed=True) for key in removals]
        link.send_results(epoch, pubs + gone)

    def _diff(
        self, items: list[SharedPollItem], trigger: str
    ) -> tuple[list[PollPub], list[str], list[tuple[PollPub, Entry, int]]]:
        """What a reply changes: the publications to send, the removed keys, and the
        versionless changes still waiting for a version (with the new data hash, recorded
        only once the version is made)."""
        pubs: list[PollPub] = []
        removals: list[str] = []
        made: list[tuple[PollPub, Entry, int]] = []
        changed = unchanged = 0
        for it in items:
            if it.removed:
                removals.append(it.key)
                continue
            entry = self._entry(it.key)
            if entry is None:
                continue
            if self.opts.versionless and it.version == 0:
                h = hash(it.data)
                if entry.version > 0 and h == entry.data_hash:
                    unchanged += 1
                    if entry.needs_broadcast:
                        entry.needs_broadcast = False
                        pubs.append(PollPub(self.channel, it.key, it.data, entry.version))
                    continue
                entry.needs_broadcast = False
                changed += 1
                pub = PollPub(self.channel, it.key, it.data, 0)
                pubs.append(pub)
                made.append((pub, entry, h))
                continue
            if it.version <= entry.version:
                unchanged += 1
                # Without kept data only the backend's own (version, data) pair can go,
                # and only when no publish raced ahead of it; else the next poll retries.
                if entry.needs_broadcast and entry.version > 0 and it.version == entry.version:
                    entry.needs_broadcast = False
                    pubs.append(PollPub(self.channel, it.key, it.data, it.version))
                continue
            entry.needs_broadcast = False
            changed += 1
            entry.version = it.version
            pubs.append(PollPub(self.channel, it.key, it.data, it.version))
        metrics.child(pm.ITEMS, trigger, "changed", self._ns).inc(changed)
        metrics.child(pm.ITEMS, trigger, "unchanged", self._ns).inc(unchanged)
        metrics.child(pm.ITEMS, trigger, "removed", self._ns).inc(len(removals))
        return pubs, removals, made

    def _deliver(self, pubs: list[PollPub], removals: list[str]) -> None:
        """Publications to this worker's subscribers; removed keys untracked here."""
        for pub in pubs:
            self.broadcast(pub)
        for key in removals:
            self.remote.pop(key, None)
            removal = PollPub(self.channel, key, b"", 0, removed=True)
            for sub in list(self.subs.pop(key, {}).values()):
                sub.poll_removal(removal)
            self.entries.pop(key, None)
        if removals and not self.entries:
            self._schedule_shutdown()

    def broadcast(self, pub: PollPub) -> None:
        subs = self.subs.get(pub.key)
        if subs:
            for sub in list(subs.values()):
                sub.poll_publication(pub)

    def flip_epoch(self, epoch: str) -> None:
        """Versioned: a new publisher epoch resets every item and sends the current
        subscribers away with 2500 (flipEpochAndCollectClients). Coordinated versionless:
        the shared epoch changed (Redis lost the channel's meta), the same."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        for entry in (*self.entries.values(), *self.remote.values()):
            entry.version = 0
            entry.data_hash = 0
            entry.fresh_from_publish = False
            entry.needs_broadcast = False
        clients: dict[str, PollSubscriber] = {}
        for subs in self.subs.values():
            clients.update(subs)
        for sub in clients.values():
            sub.poll_state_lost(self.channel)

    def published(self, key: str, version: int, epoch: str, data: bytes) -> bool:
        """shared_poll_publish: apply a newer version of a tracked key here
        (handlePublishedData); False when it was not newer (skipped)."""
        self.flip_epoch(epoch)
        entry = self._entry(key)
        if entry is None:
            return True  # not tracked on this worker
        if version <= entry.version:
            return False
        entry.version = version
        entry.fresh_from_publish = True
        self.broadcast(PollPub(self.channel, key, data, version))
        return True

    # ------------------------------------------------------------------ across workers

    def on_heartbeat(self, leader: bool, epoch: str, tracked: list[str] | None) -> None:
        """LinkedChannel: the link's heartbeat answered. A versionless channel takes the
        shared epoch (silently the first time: nothing was delivered under its own yet);
        the leader keeps an entry for every key only other workers track."""
        if self.opts.versionless and epoch and epoch != self.epoch:
            if self.link is not None and not self.link.ready.is_set():
                self.epoch = epoch
            else:
                self.flip_epoch(epoch)
        if tracked is None:
            self.remote.clear()
            return
        wanted = {key for key in tracked if key not in self.entries}
        for key in [k for k in self.remote if k not in wanted]:
            del self.remote[key]
        for key in wanted:
            if key not in self.remote:
                self.remote[key] = Entry()

    def remote_notify(self, keys: list[str]) -> None:
        """A follower's joins need `keys` polled now (and sent even if unchanged, as
        `mark_needs_broadcast`); only the leader acts on it."""
        if self.link is None or not self.link.leader:
            return
        for key in keys:
            entry = self._entry(key)
            if entry is None:
                self.remote[key] = Entry()
            else:
                entry.needs_broadcast = True
            self.notify(key)

    def adopt(self, epoch: str, pubs: list[PollPub]) -> None:
        """The leader's changes, on another worker: take its epoch and versions, deliver
        to the subscribers here (each connection keeps only what is newer than it holds;
        an equal version is the leader re-sending for a version-0 subscriber)."""
        self.flip_epoch(epoch)
        removals: list[str] = []
        for pub in pubs:
            if pub.removed:
                removals.append(pub.key)
                continue
            entry = self._entry(pub.key)
            if entry is None or pub.version < entry.version:
                continue
            entry.version = pub.version
            if self.opts.versionless:
                entry.data_hash = hash(pub.data)
            self.broadcast(pub)
        if removals:
            self._deliver([], removals)
