"""The engine contracts of a node: Broker (fan-out between nodes plus per-channel history
streams), Controller (node-to-node control messages), and the optional capabilities a
Broker may add (batched publish, health).

Modelled on centrifuge's `broker.go` and `controller.go`. Implementations:
`engines/memory.py` (one process) and `engines/redis/` (many workers and hosts); both are
Broker and Controller at once, as centrifuge's RedisBroker is, and each states its
conformance in one typed line. `node.py` and the client only ever talk to these
contracts, so engines swap without touching them.

Optional capabilities are their own small runtime-checkable Protocols, checked once with
`isinstance` when the Node is built (centrifuge checks its optional interfaces with a type
assertion): never looked up by attribute name on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from app.errors import ClientError
from app.models import (
    ClientInfo,
    HistoryFilter,
    HistoryResult,
    Publication,
    PublishOptions,
    PublishResult,
)


class BrokerEventHandler(Protocol):
    """Implemented by the Node: what a broker delivers to this process.

    Handlers are called from the broker's reader in publication order per channel
    and must not block (they hand bytes to per-connection queues and return).
    """

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        """A publication reached a channel this node is subscribed to.

        `pub.offset` is 0 when the channel keeps no history; `epoch` is then "".
        """

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        """A join message of a channel this node is subscribed to."""

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        """A leave message of a channel this node is subscribed to."""


class Broker(Protocol):
    """PUB/SUB between nodes and the channels' history streams (centrifuge's Broker)."""

    async def run(self, handler: BrokerEventHandler) -> None:
        """Start delivering to `handler`. Returns once the broker is ready (an engine whose
        backend is away returns once it was tried, and keeps trying: see HealthReporter).
        Called once, after the Controller's `run_control` when one object is both."""

    async def close(self) -> None:
        """Stop delivering and release every connection. Called once, at shutdown."""

    async def subscribe(self, channels: list[str]) -> None:
        """Make this node receive publications of `channels`.

        Returns only when delivery is guaranteed for everything published after the
        return (for Redis: once SSUBSCRIBE is confirmed). Idempotent per channel.
        """

    async def unsubscribe(self, channels: list[str]) -> None:
        """Stop receiving `channels` (without waiting for a confirmation)."""

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        """Store (if opts asks for history) and fan out one publication atomically.

        With history the returned position has the new offset and the stream epoch;
        without it the position is zero. A repeated idempotency key inside its window
        returns the first result with `suppressed=True` and delivers nothing.

        With history and `opts.version` > 0, a publication whose version is not greater
        than the channel's last stored version in the same `opts.version_epoch` ("" matches
        any) is dropped in the same atomic step: nothing stored or delivered, its
        idempotency key not remembered, and the stream's current top returned with
        `suppressed=True, suppress_reason="version"`. A stored versioned publication
        becomes the channel's last version; an unversioned one is not checked and leaves
        it as it is. Without history versions are ignored (centrifuge's WithVersion).
        """

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Deliver a join message to every node subscribed to `channel` (no history)."""

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Deliver a leave message to every node subscribed to `channel` (no history)."""

    async def history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        """Read a channel's stream. Creates the stream meta (epoch) if absent, so a
        position is always returned. Publications are oldest first unless reverse."""

    async def remove_history(self, channel: str) -> None:
        """Drop stored publications but keep the meta (epoch and top offset)."""


class ControlEventHandler(Protocol):
    """Implemented by the node's control handling (app/node_control.py): what a Controller
    delivers to this process."""

    @property
    def id(self) -> str:
        """This node's id: messages sent to it by id (`publish_control(data, id)`) reach it."""

    def handle_control(self, data: bytes) -> None:
        """A node-to-node control message (API actions by user, heartbeats, surveys,
        emulation commands), in the form of app/control.py. Must not block."""


@runtime_checkable
class Controller(Protocol):
    """Node-to-node control messages (centrifuge's Controller)."""

    async def run_control(self, handler: ControlEventHandler) -> None:
        """Start delivering control messages to `handler`: those sent to every node and
        those sent to `handler.id`. Called once at start, before the Broker's `run`."""

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        """Send a control message to one node (`node_id`) or to all nodes (""), this one
        included (a node ignores its own broadcasts itself)."""

    async def close(self) -> None:
        """Stop delivering and release every connection. Called once, at shutdown, after
        the Broker's `close`; a Controller that is the Broker too is closed as the Broker."""


@runtime_checkable
class BatchPublisher(Protocol):
    """Optional capability of a Broker that publishes many items in one round trip
    (Redis: pipelined, history_add calls shared per partition). Without it the Node
    publishes each item with `Broker.publish`."""

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, PublishOptions]]
    ) -> list[PublishResult | ClientError]:
        """`publish` of every (channel, data, opts) item, a channel's publications applied
        in item order; a failed item gets its ClientError in its place, nothing raised."""


@runtime_checkable
class HealthReporter(Protocol):
    """Optional capability of a broker whose backend can be away (Redis): /health answers
    500 while `healthy` is false. A broker without it is always healthy (memory)."""

    @property
    def healthy(self) -> bool: ...
