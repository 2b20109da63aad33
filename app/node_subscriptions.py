"""A node's broker subscriptions: the node subscribes itself to a channel in the broker when
the channel's first local subscriber arrives, and unsubscribes `UNSUBSCRIBE_DELAY` seconds
after the last one leaves (a quick resubscribe then costs nothing). centrifuge's Node
(`addSubscription` / `removeSubscription`) does the same, its unsubscribe at least a second
after the channel emptied (through its dissolver)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from app import metrics
from app.hub import Hub, HubClient

# Keeps the broker subscription a moment after the last local subscriber leaves.
UNSUBSCRIBE_DELAY = 5.0


class PubSub(Protocol):
    """The part of a Broker (or MapBroker) a channel's subscription goes to."""

    async def subscribe(self, channels: list[str]) -> None: ...

    async def unsubscribe(self, channels: list[str]) -> None: ...


class BrokerSubscriptions:
    def __init__(
        self,
        hub: Hub,
        pubsub: Callable[[str], PubSub],
        loop: Callable[[], asyncio.AbstractEventLoop],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        """`pubsub(channel)`: where the channel's publications come from (the node picks the
        map broker for a map channel); `loop()`: the worker's loop, asked for when first
        needed; `spawn`: the node's background task runner (tasks outlive no broker)."""
        self._hub = hub
        self._pubsub = pubsub
        self._loop = loop
        self._spawn = spawn
        # channel -> its broker subscription: pending, or once made `_subscribed` (done).
        self._subs: dict[str, asyncio.Future[None]] = {}
        self._subscribed: asyncio.Future[None] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def add(self, channel: str, client: HubClient) -> None:
        """Registers a local subscriber; returns once the broker delivers the channel."""
        self._hub.add_subscriber(channel, client)
        metrics.action("add_subscription", channel)
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        fut = self._subs.get(channel)
        if fut is None:
            fut = self._loop().create_future()
            self._subs[channel] = fut
            metrics.action("broker_subscribe", channel)
            try:
                await self._pubsub(channel).subscribe([channel])
            except BaseException as e:
                del self._subs[channel]
                fut.set_exception(e)
                fut.exception()  # mark retrieved: waiters re-raise on their own await
                raise
            fut.set_result(None)
            # Made: the channel keeps the one done future, not its own (144 bytes each: 2 %
            # of a connection's 7.17 KB with a personal channel per connection).
            if self._subs.get(channel) is fut:
                self._subs[channel] = self._done()
            return
        await asyncio.shield(fut)

    def _done(self) -> asyncio.Future[None]:
        if self._subscribed is None:
            self._subscribed = self._loop().create_future()
            self._subscribed.set_result(None)
        return self._subscribed

    def remove(self, channel: str, client: HubClient) -> None:
        metrics.action("remove_subscription", channel)
        if self._hub.remove_subscriber(channel, client) and channel in self._subs:
            self._timers[channel] = self._loop().call_later(
                UNSUBSCRIBE_DELAY, self._maybe_unsubscribe, channel
            )

    def _maybe_unsubscribe(self, channel: str) -> None:
        self._timers.pop(channel, None)
        if self._hub.has_subscribers(channel):
            return
        fut = self._subs.get(channel)
        if fut is None or not fut.done():
            return
        del self._subs[channel]
        self._spawn(self._unsubscribe(channel))

    async def _unsubscribe(self, channel: str) -> None:
        # A subscriber may have come back between scheduling and running this.
        if channel in self._subs or self._hub.has_subscribers(channel):
            return
        metrics.action("broker_unsubscribe", channel)
        await self._pubsub(channel).unsubscribe([channel])

    def close(self) -> None:
        """Drops the pending unsubscribes (the node is stopping with its broker)."""
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
