"""The Broker contract: fan-out between nodes plus per-channel history streams.

Modelled on centrifuge's `broker.go`. Implementations: `engines/memory.py` (one
process) and `engines/redis/` (many workers and hosts). `client.py` and `node.py`
only ever talk to this contract, so engines swap without touching them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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

    def handle_join(self, channel: str, info: ClientInfo) -> None: ...

    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...

    def handle_control(self, data: bytes) -> None:
        """A node-to-node control message (API disconnect by user, heartbeats...)."""


class Broker(Protocol):
    async def run(self, handler: BrokerEventHandler) -> None:
        """Start delivering to `handler`. Returns once the broker is ready."""

    async def close(self) -> None: ...

    async def subscribe(self, channels: list[str]) -> None:
        """Make this node receive publications of `channels`.

        Returns only when delivery is guaranteed for everything published after the
        return (for Redis: once SSUBSCRIBE is confirmed). Idempotent per channel.
        """

    async def unsubscribe(self, channels: list[str]) -> None: ...

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

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        """Send a control message to one node (`node_id`) or to all nodes ("")."""

    async def history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        """Read a channel's stream. Creates the stream meta (epoch) if absent, so a
        position is always returned. Publications are oldest first unless reverse."""

    async def remove_history(self, channel: str) -> None:
        """Drop stored publications but keep the meta (epoch and top offset)."""


@runtime_checkable
class HealthReporter(Protocol):
    """Optional capability of a broker whose backend can be away (Redis): /health answers
    500 while `healthy` is false. A broker without it is always healthy (memory)."""

    @property
    def healthy(self) -> bool: ...
