"""The contracts that let the workers of a deployment share the polling of a shared poll
channel, and the choice of an implementation for a node's broker.

Centrifuge polls on every node for that node's subscribers (shared_poll.go: nothing is
deduplicated across nodes; only `shared_poll_publish` crosses them, through the broker).
Here, with the Redis engine, one worker polls each channel for the whole deployment:

- the *lease*: the worker holding a channel's lease in Redis polls the backend for the
  union of the keys every worker tracks (each worker keeps its keys in a Redis set);
- the *fan-out*: the leader publishes each reply's changes through the broker to every
  worker tracking the channel (app/sharedpoll/fanout.py); followers adopt its versions
  and ask it to poll keys a new subscriber lacks at once;
- a leader that stops renewing loses its lease after the lease ttl; the next heartbeat of
  another worker tracking the channel takes it.

With the memory engine (one worker) there is nothing to coordinate: `coordinator_for`
answers None and each `PollChannel` polls on its own, as before.

`ChannelLink` is what a `PollChannel` holds (one per channel state), `LinkedChannel` what
a link needs of its channel, `Coordinator` the per-worker factory of links and the route
of `shared_poll_publish`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from app.models import PublishOptions, PublishResult
from app.sharedpoll.frames import PollPub
from app.sharedpoll.options import PollOptions

if TYPE_CHECKING:
    from app.engines.redis.shard import Shard
    from app.sharedpoll.channel import Entry

__all__ = [
    "ChannelLink",
    "Coordinator",
    "LinkUnavailable",
    "LinkedChannel",
    "ShardedBroker",
    "coordinator_for",
]


class LinkUnavailable(Exception):
    """Redis could not answer a link's call (versions for a versionless reply): the reply is
    dropped and the next poll tries again."""


class ChannelLink(Protocol):
    """One channel state's part in the deployment-wide polling."""

    ready: asyncio.Event  # set once the fan-out is subscribed and the role known
    leader: bool  # this worker holds the lease: it polls, the others follow

    def forward(self, keys: list[str]) -> None:
        """Follower: record `keys` as tracked here, then ask the leader to poll them now
        (or poll them here if the lease turns out to be free)."""

    def send_results(self, epoch: str, pubs: list[PollPub]) -> None:
        """Leader: hand a reply's changes (and removals) to the other workers."""

    async def allocate(self, n: int) -> int:
        """Versionless leader: `n` new versions; returns the last. Raises LinkUnavailable."""

    def close(self) -> None:
        """Release the lease (if held) and the fan-out subscription, in the background."""


class LinkedChannel(Protocol):
    """What a link needs of its channel (app/sharedpoll/channel.py PollChannel)."""

    channel: str
    opts: PollOptions
    entries: dict[str, Entry]

    def on_heartbeat(self, leader: bool, epoch: str, tracked: list[str] | None) -> None:
        """The role this worker holds now, the channel's shared epoch, and (leader only)
        every key some worker tracks."""

    def notify(self, key: str) -> None:
        """Poll `key` now (a forwarded key when the lease turned out to be free)."""


class Coordinator(Protocol):
    """A worker's side of the coordination: links for its channel states, the route of
    `shared_poll_publish` and of the fan-out frames coming back."""

    node_id: str

    def open(self, state: LinkedChannel) -> ChannelLink:
        """Start coordinating `state` (subscribe the fan-out, first heartbeat)."""

    async def publish(self, channel: str, epoch: str, pub: PollPub) -> None:
        """shared_poll_publish to every worker tracking `channel`, this one included.
        Raises ClientError(100) when the broker cannot publish."""

    async def close(self) -> None:
        """Wait for the lease releases and unsubscribes the links started (at shutdown,
        before the broker closes)."""


@runtime_checkable
class ShardedBroker(Protocol):
    """The capability coordination needs of a broker: Redis shards beside PUB/SUB (the
    Redis engine's RedisBroker). A broker without `shard_for` is not coordinated."""

    def shard_for(self, channel: str) -> Shard: ...

    async def subscribe(self, channels: list[str]) -> None: ...

    async def unsubscribe(self, channels: list[str]) -> None: ...

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult: ...


def coordinator_for(broker: object, node_id: str) -> Coordinator | None:
    """The Redis coordinator over `broker`'s shards, or None for a broker without any (the
    memory engine: one worker, nothing to coordinate). The Redis side is imported only
    here, so the memory engine never loads it."""
    if not isinstance(broker, ShardedBroker):
        return None
    from app.sharedpoll.redis_link import RedisCoordinator

    return RedisCoordinator(broker, node_id)
