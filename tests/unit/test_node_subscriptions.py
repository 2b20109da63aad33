"""app/node_subscriptions.py: one broker subscription per channel however many local
subscribers join at once, a failed one re-raised to every waiter and tried again by the next,
and the unsubscribe `UNSUBSCRIBE_DELAY` after the last one leaves, cancelled by a return."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from app import node_subscriptions
from app.engines.memory import MemoryBroker
from app.hub import Hub
from app.node_subscriptions import BrokerSubscriptions


@dataclass(eq=False)
class Conn:
    uid: str
    user: str = "u"
    session: str = ""

    def deliver_publication(self, *args: object) -> None: ...

    def deliver_join_leave(self, *args: object) -> None: ...

    def tags_filter(self, channel: str) -> None:
        return None

    def delta_subscription(self, channel: str) -> bool:
        return False


class GatedBroker(MemoryBroker):
    """A MemoryBroker whose SUBSCRIBE waits for the test, fails when told, and whose
    UNSUBSCRIBE the test can await; every call recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail: Exception | None = None
        self.calls: list[tuple[str, list[str]]] = []
        self.unsubscribed = asyncio.Event()

    async def subscribe(self, channels: list[str]) -> None:
        self.calls.append(("subscribe", channels))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        await super().subscribe(channels)

    async def unsubscribe(self, channels: list[str]) -> None:
        self.calls.append(("unsubscribe", channels))
        await super().unsubscribe(channels)
        self.unsubscribed.set()


def subscriptions(broker: GatedBroker, hub: Hub) -> BrokerSubscriptions:
    loop = asyncio.get_running_loop()
    return BrokerSubscriptions(hub, lambda ch: broker, lambda: loop, loop.create_task)


async def test_concurrent_subscribers_share_one_broker_subscription() -> None:
    broker, hub = GatedBroker(), Hub()
    subs = subscriptions(broker, hub)
    first = asyncio.ensure_future(subs.add("ch", Conn("a")))
    second = asyncio.ensure_future(subs.add("ch", Conn("b")))
    await asyncio.sleep(0)  # both reach their wait: the first in SUBSCRIBE, the second on it
    assert not first.done() and not second.done()
    broker.gate.set()
    await asyncio.gather(first, second)
    await subs.add("ch", Conn("c"))  # made: no wait, no second SUBSCRIBE
    assert broker.calls == [("subscribe", ["ch"])]
    assert broker.subscribed_channels == {"ch"} and hub.num_subscribers("ch") == 3


async def test_a_failed_subscription_fails_every_waiter_and_is_tried_again() -> None:
    broker, hub = GatedBroker(), Hub()
    subs = subscriptions(broker, hub)
    broker.fail = ConnectionError("down")
    first = asyncio.ensure_future(subs.add("ch", Conn("a")))
    second = asyncio.ensure_future(subs.add("ch", Conn("b")))
    await asyncio.sleep(0)
    broker.gate.set()
    for fut in (first, second):
        with pytest.raises(ConnectionError):
            await fut
    broker.fail = None
    await subs.add("ch", Conn("c"))
    assert broker.calls == [("subscribe", ["ch"]), ("subscribe", ["ch"])]
    assert broker.subscribed_channels == {"ch"}


async def test_unsubscribe_after_the_delay_and_not_when_a_subscriber_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_subscriptions, "UNSUBSCRIBE_DELAY", 0.01)
    broker, hub = GatedBroker(), Hub()
    broker.gate.set()
    subs = subscriptions(broker, hub)
    a, b = Conn("a"), Conn("b")
    await subs.add("ch", a)
    subs.remove("ch", a)
    await subs.add("ch", b)  # back before the delay ran out: the timer is cancelled
    assert not subs._timers
    subs.remove("ch", b)
    await broker.unsubscribed.wait()
    assert broker.calls == [("subscribe", ["ch"]), ("unsubscribe", ["ch"])]
    assert broker.subscribed_channels == frozenset()
    await subs.add("ch", a)  # subscribed anew
    assert broker.calls[-1] == ("subscribe", ["ch"])
