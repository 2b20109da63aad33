"""`SharedPollManager`: the shared poll channels of one worker (centrifuge's
SharedPollManager and keyedManager), the refresh proxy each namespace calls, and
`shared_poll_publish`.

Contract with a connection (app/client/polling.py): `track` registers keys and returns
how each stands, the connection answers its client, then `join` adds it as a subscriber
and asks for the data it lacks; `leave` drops it from keys. The channel delivers through
the connection's `PollSubscriber` methods.

With the memory engine (one worker) each channel polls for this worker's subscribers.
With a `Coordinator` (the Redis engine, app/sharedpoll/coordination.py) one worker of the
deployment polls each channel for all of them and the others follow through the broker;
`shared_poll_publish` then goes through the broker to every worker tracking the channel
(centrifuge's route with `publish_enabled`, which the API requires), the sending worker
included. The node hands this manager the broker publications of the fan-out channels
(`handle_fanout`, app/sharedpoll/fanout.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from app import metrics
from app.config import ChannelOptions, Config
from app.proxy import Proxy
from app.proxy.models import SharedPollRefreshResult
from app.sharedpoll import fanout
from app.sharedpoll import metrics as pm
from app.sharedpoll.channel import PollChannel, PollSubscriber, Refresher, new_epoch
from app.sharedpoll.coordination import Coordinator
from app.sharedpoll.frames import PollPub
from app.sharedpoll.options import PollOptions, poll_options
from app.sharedpoll.signature import TrackVerifier

log = logging.getLogger("centrifugo.sharedpoll")

__all__ = ["SharedPollManager", "TrackState"]

DEFAULT_CONCURRENCY = 64  # newSharedPollManager: concurrency_limit <= 0 means 64

# (is_new, server version) of each tracked key, in request order.
TrackState = list[tuple[bool, int]]


class SharedPollManager:
    def __init__(
        self,
        cfg: Config,
        proxy_of: Callable[[ChannelOptions], Proxy],
        coordinator: Coordinator | None = None,
    ) -> None:
        """`coordinator` None: this worker polls alone (memory engine)."""
        sp = cfg.shared_poll
        self.verifier = TrackVerifier(
            sp.hmac_secret_key,
            sp.hmac_previous_secret_key,
            int(sp.hmac_previous_secret_key_valid_until),
        )
        self._proxy_of = proxy_of
        self._limit = sp.concurrency_limit if sp.concurrency_limit > 0 else DEFAULT_CONCURRENCY
        self._sem: asyncio.Semaphore | None = None  # made in the loop, at first use
        self._epoch = new_epoch()  # versionless channels without state yet
        self.channels: dict[str, PollChannel] = {}
        self.coordinator = coordinator

    # ------------------------------------------------------------------ connections

    def epoch(self, channel: str, opts: PollOptions) -> str:
        """SubscribeResult.epoch: the channel state's, or the worker's for a versionless
        channel without state ("" for versioned: the publisher's is not known yet)."""
        state = self.channels.get(channel)
        if state is not None:
            return state.epoch
        return self._epoch if opts.versionless else ""

    def track(self, channel: str, ns: ChannelOptions, keys: list[str]) -> TrackState:
        state = self.channels.get(channel)
        if state is None:
            if self._sem is None:
                self._sem = asyncio.Semaphore(self._limit)
            proxy = self._proxy_of(ns)
            state = PollChannel(
                channel, poll_options(ns), self._refresher(proxy), self._sem, self._forget
            )
            self.channels[channel] = state
            if self.coordinator is not None:
                state.link = self.coordinator.open(state)
        return state.track(keys)

    def join(
        self,
        channel: str,
        sub: PollSubscriber,
        keys: list[str],
        tracked: TrackState,
        versions: list[int],
    ) -> None:
        """After the track reply went out: `sub` receives broadcasts for `keys` from now
        on; cold keys (new here, client has nothing) are polled at once, warm ones (known
        here, client behind) on the next reply even if unchanged (handleTrack steps 5-7)."""
        state = self.channels.get(channel)
        if state is None:
            return
        cold: list[str] = []
        warm: list[str] = []
        for key, (is_new, server_version), version in zip(keys, tracked, versions, strict=True):
            state.add_subscriber(key, sub)
            if version == 0:
                (cold if is_new else warm).append(key)
            elif server_version > version:
                warm.append(key)
        for key in cold:
            state.notify(key)
        state.mark_needs_broadcast(warm)

    def leave(self, channel: str, sub: PollSubscriber, keys: Iterable[str]) -> None:
        state = self.channels.get(channel)
        if state is not None:
            for key in keys:
                state.remove_subscriber(key, sub)

    def _forget(self, state: PollChannel) -> None:
        if self.channels.get(state.channel) is state:
            del self.channels[state.channel]

    def update_gauges(self) -> None:
        """shared_poll_num_channels / num_keys of this worker (summed over workers), set
        with the node gauges at each heartbeat as centrifuge's updateGauges does."""
        if metrics.enabled():
            pm.NUM_CHANNELS.set(len(self.channels))
            pm.NUM_KEYS.set(self.num_keys())

    def num_keys(self) -> int:
        return sum(len(s.entries) for s in self.channels.values())

    # ------------------------------------------------------------------ backend

    def _refresher(self, proxy: Proxy) -> Refresher:
        request_items = metrics.child(pm.PROXY_REQUEST_ITEMS, proxy.name)
        response_items = metrics.child(pm.PROXY_RESPONSE_ITEMS, proxy.name)

        async def refresh(channel: str, items: list[tuple[str, int]]) -> SharedPollRefreshResult:
            request_items.observe(len(items))
            result = await proxy.shared_poll_refresh(channel, items)
            response_items.observe(len(result.items))
            return result

        return refresh

    async def publish(self, channel: str, key: str, version: int, epoch: str, data: bytes) -> None:
        """shared_poll_publish: through the broker to every worker when coordinated
        (raises ClientError(100) if the broker cannot publish), else on this worker."""
        if self.coordinator is not None:
            await self.coordinator.publish(channel, epoch, PollPub(channel, key, data, version))
            return
        self._published(channel, key, version, epoch, data)

    def _published(self, channel: str, key: str, version: int, epoch: str, data: bytes) -> None:
        """handlePublishedData on this worker."""
        state = self.channels.get(channel)
        if state is None or state.opts.versionless:
            return
        applied = state.published(key, version, epoch, data)
        result = "applied" if applied else "skipped"
        metrics.child(pm.PUBLISH, result, metrics.namespace_of(channel)).inc()

    def handle_fanout(self, name: str, data: bytes) -> None:
        """A broker publication of fan-out channel `name` (fanout.fanout_channel): the
        leader's results, a follower's keys to poll, or a shared_poll_publish."""
        channel = name[len(fanout.FANOUT_PREFIX) :]
        state = self.channels.get(channel)
        if state is None or self.coordinator is None:
            return  # closed meanwhile: nobody tracks the channel here
        try:
            msg = fanout.decode(channel, data)
        except (ValueError, TypeError, KeyError, IndexError):
            log.warning("dropping undecodable shared poll fan-out frame on %r", channel)
            return
        if msg.kind == fanout.PUBLISHED:
            for pub in msg.pubs:
                self._published(channel, pub.key, pub.version, msg.epoch, pub.data)
        elif msg.node == self.coordinator.node_id:
            return  # our own results or keys: already handled here
        elif msg.kind == fanout.RESULTS:
            state.adopt(msg.epoch, msg.pubs)
        else:
            state.remote_notify(msg.keys)

    async def close(self) -> None:
        for state in list(self.channels.values()):
            state.close()
        if self.coordinator is not None:
            await self.coordinator.close()
