"""The centrifuge-python event recorder the e2e tests share.

`ClientEvents` and `SubEvents` are the SDK's ClientEventHandler and SubscriptionEventHandler
recording every event by name: `log` keeps all in order, `next(name)` awaits the next of a kind
(optionally the next one matching `pred`; the ones skipped are consumed), `pending(name)` takes
the recorded ones without waiting, `names()` lists what happened.

`hooks[name]` (an async callable taking the context) runs inside the SDK's handler before the
event is recorded; the SDK awaits its handlers, so a hook can hold the SDK at that point (e.g.
keep it from reconnecting until the test has published what it must recover).

ClientEvents also records the server-side subscription events (subscribing, subscribed,
unsubscribed, publication, join, leave), which the SDK reports on the client.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from centrifuge import ClientEventHandler, SubscriptionEventHandler  # type: ignore[import-untyped]

EVENT_TIMEOUT = 5.0


class Recorder:
    """Records SDK events by name and wakes whoever awaits the next one."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self._queues: defaultdict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self.hooks: dict[str, Callable[[Any], Awaitable[None]]] = {}

    async def record(self, name: str, ctx: Any) -> None:
        hook = self.hooks.get(name)
        if hook is not None:
            await hook(ctx)
        self.log.append((name, ctx))
        self._queues[name].put_nowait(ctx)

    async def next(
        self, name: str, pred: Callable[[Any], bool] | None = None, timeout: float = EVENT_TIMEOUT
    ) -> Any:
        """The next `name` event (the next one satisfying `pred`; others are consumed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = max(deadline - loop.time(), 0.001)
            try:
                ctx = await asyncio.wait_for(self._queues[name].get(), left)
            except TimeoutError:
                raise AssertionError(
                    f"no {name!r} event within {timeout}s; events: {self.log}"
                ) from None
            if pred is None or pred(ctx):
                return ctx

    async def next_matching(
        self, name: str, pred: Callable[[Any], bool], timeout: float = EVENT_TIMEOUT
    ) -> Any:
        """The next `name` event satisfying `pred` (non-matching ones are consumed)."""
        return await self.next(name, pred, timeout)

    def names(self) -> list[str]:
        return [name for name, _ in self.log]

    def pending(self, name: str) -> list[Any]:
        """Recorded but not yet consumed `name` events (does not wait)."""
        q = self._queues[name]
        return [q.get_nowait() for _ in range(q.qsize())]


def recording(name: str) -> Callable[[Recorder, Any], Awaitable[None]]:
    """An SDK handler method recording its context as event `name`."""

    async def handler(self: Recorder, ctx: Any) -> None:
        await self.record(name, ctx)

    return handler


class ClientEvents(Recorder, ClientEventHandler):
    """Client events; `subscribed`/`publication`/... are server-side subscription events."""

    on_connecting = recording("connecting")
    on_connected = recording("connected")
    on_disconnected = recording("disconnected")
    on_error = recording("error")
    on_subscribing = recording("subscribing")
    on_subscribed = recording("subscribed")
    on_unsubscribed = recording("unsubscribed")
    on_publication = recording("publication")
    on_join = recording("join")
    on_leave = recording("leave")


class SubEvents(Recorder, SubscriptionEventHandler):
    on_subscribing = recording("subscribing")
    on_subscribed = recording("subscribed")
    on_unsubscribed = recording("unsubscribed")
    on_publication = recording("publication")
    on_join = recording("join")
    on_leave = recording("leave")
    on_error = recording("error")
