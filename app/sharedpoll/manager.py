"""`SharedPollManager`: the shared poll channels of one worker (centrifuge's
SharedPollManager and keyedManager), the refresh proxy each namespace calls, and
`shared_poll_publish`.

Contract with a connection (app/client/polling.py): `track` registers keys and returns
how each stands, the connection answers its client, then `join` adds it as a subscriber
and asks for the data it lacks; `leave` drops it from keys. The channel delivers through
the connection's `PollSubscriber` methods.

Across workers each worker polls for its own subscribers, as every Centrifugo node does
(centrifuge polls per node); `shared_poll_publish` reaches every worker through the
broker only with `publish_enabled`, as Centrifugo's per-key broker channels do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from app import metrics
from app.config import ChannelOptions, Config
from app.proxy import Proxy
from app.proxy.models import SharedPollRefreshResult
from app.sharedpoll import metrics as pm
from app.sharedpoll.channel import PollChannel, PollSubscriber, Refresher, new_epoch
from app.sharedpoll.options import PollOptions, poll_options
from app.sharedpoll.signature import TrackVerifier

log = logging.getLogger("centrifugo.sharedpoll")

__all__ = ["SharedPollManager", "TrackState"]

DEFAULT_CONCURRENCY = 64  # newSharedPollManager: concurrency_limit <= 0 means 64

# (is_new, server version) of each tracked key, in request order.
TrackState = list[tuple[bool, int]]


class SharedPollManager:
    def __init__(self, cfg: Config, proxy_of: Callable[[ChannelOptions], Proxy]) -> None:
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

    def publish(self, channel: str, key: str, version: int, epoch: str, data: bytes) -> None:
        """shared_poll_publish on this worker (handlePublishedData)."""
        state = self.channels.get(channel)
        if state is None or state.opts.versionless:
            return
        applied = state.published(key, version, epoch, data)
        result = "applied" if applied else "skipped"
        metrics.child(pm.PUBLISH, result, metrics.namespace_of(channel)).inc()

    async def close(self) -> None:
        for state in list(self.channels.values()):
            state.close()
