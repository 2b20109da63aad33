"""Shared poll coordination over the Redis engine (the contracts: coordination.py): one
polling worker per channel in the whole deployment, its results fanned out through the
broker's PUB/SUB to every worker tracking the channel.

Per shared poll channel, on the shard (and Cluster partition) of its fan-out channel:

    <prefix>.shared_poll.lease.<channel>  the polling lease: SET NX PX by a link's token,
                                          renewed only by its holder (lua/shared_poll_*.lua)
    <prefix>.shared_poll.keys.<channel>   zset key -> unix ms until which some worker tracks it
    <prefix>.shared_poll.meta.<channel>   hash: versionless epoch `e` and version counter `c`

Every worker holding a channel state runs one heartbeat per `tick` (half the refresh
interval, between 0.1 s and 2 s): it refreshes its keys in the zset, learns the epoch,
and renews or takes the lease. The holder gets the union of tracked keys back and polls
it on its refresh interval; the others follow (app/sharedpoll/channel.py). A lease lasts
three ticks (at least 1 s), so a killed leader is replaced within lease ttl + one tick,
and polling resumes at the new leader's next cycle: within about one refresh interval +
the lease ttl. A closing channel state (shutdown or no keys left) releases its lease at
once, and the next heartbeat of another worker takes it.

A join on a follower records its keys at once (the same heartbeat script with just those
keys) and then asks the leader through the fan-out to poll them; if that heartbeat finds
the lease free, this worker takes it and polls them itself. Between a leader's death and
the takeover a forwarded key waits for the new leader's first cycle.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import RedisError

from app.engines.redis.outage import Outage
from app.engines.redis.shard import Shard
from app.errors import ClientError
from app.models import PublishOptions
from app.sharedpoll import fanout
from app.sharedpoll.channel import PollChannel, new_epoch
from app.sharedpoll.coordination import (
    ChannelLink,
    Coordinator,
    LinkedChannel,
    LinkUnavailable,
    ShardedBroker,
)
from app.sharedpoll.frames import PollPub

log = logging.getLogger("centrifugo.sharedpoll")

__all__ = ["RedisChannelLink", "RedisCoordinator", "timings"]

MIN_TICK, MAX_TICK = 0.1, 2.0
MIN_LEASE = 1.0  # below this a busy event loop would lose the lease it holds
META_TTL = 60.0  # epoch and counter survive channel states closing and coming back
_NO_OPTS = PublishOptions()  # fan-out frames keep no history


def timings(refresh_interval: float) -> tuple[float, float]:
    """(tick, lease ttl) in seconds for a channel polled every `refresh_interval`."""
    tick = min(max(refresh_interval / 2, MIN_TICK), MAX_TICK)
    return tick, max(3 * tick, MIN_LEASE)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisCoordinator:
    """A worker's coordinator: `open` a link per channel state, route `shared_poll_publish`
    through the broker, and wait for the links' releases at `close`."""

    def __init__(self, broker: ShardedBroker, node_id: str) -> None:
        self.broker = broker
        self.node_id = node_id
        self.links: dict[str, RedisChannelLink] = {}  # channel -> the open link
        self._tasks: set[asyncio.Task[Any]] = set()

    def open(self, state: LinkedChannel) -> RedisChannelLink:
        link = RedisChannelLink(self, state)
        self.links[state.channel] = link
        return link

    async def publish(self, channel: str, epoch: str, pub: PollPub) -> None:
        await self.broker.publish(
            fanout.fanout_channel(channel),
            fanout.encode_published(self.node_id, epoch, pub),
            _NO_OPTS,
        )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shared poll coordination task failed", exc_info=task.exception())

    async def close(self) -> None:
        for link in list(self.links.values()):
            link.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)


class RedisChannelLink:
    """One channel state's lease, heartbeat and fan-out (see the module docstring)."""

    def __init__(self, coord: RedisCoordinator, state: LinkedChannel) -> None:
        self._coord = coord
        self._state = state
        self.channel = state.channel
        self.fanout = fanout.fanout_channel(state.channel)
        self.ready = asyncio.Event()
        self.leader = False
        # Per link, not per node: a state closing and a new one of the same channel on this
        # worker must not renew or release each other's lease.
        self.token = f"{coord.node_id}:{secrets.token_hex(4)}"
        self.tick, lease = timings(state.opts.refresh_interval)
        self._lease_ms = int(lease * 1000)
        self._meta_ms = int(max(META_TTL, 10 * state.opts.refresh_interval) * 1000)
        self._names: tuple[str, str, str] | None = None
        self._outage = Outage(log, f"shared poll coordination of {self.channel!r}")
        self._closed = False
        self._task = coord.spawn(self._run())

    # ------------------------------------------------------------------ heartbeat

    async def _run(self) -> None:
        broker = self._coord.broker
        while True:
            try:
                await broker.subscribe([self.fanout])
                break
            except ClientError as e:
                await asyncio.sleep(self._outage.failed(e))
        while not self._closed:  # see PollChannel._run: a cancel alone may be swallowed
            await self._beat(list(self._state.entries))
            await asyncio.sleep(self.tick)

    def _keys(self, shard: Shard) -> tuple[str, str, str]:
        """(lease, tracked, meta) in the slot of the fan-out channel."""
        names = self._names
        if names is None:
            keys = shard.require_keys()
            tag = ""
            if keys.cluster:
                tag = "{" + keys.partition_tags[keys.partition(self.fanout)] + "}."
            base = f"{keys.prefix}.shared_poll"
            names = self._names = (
                f"{base}.lease.{tag}{self.channel}",
                f"{base}.keys.{tag}{self.channel}",
                f"{base}.meta.{tag}{self.channel}",
            )
        return names

    async def _beat(self, keys: list[str]) -> bool:
        """One heartbeat refreshing `keys`; False when Redis did not answer (the role is
        kept: a leader that cannot renew loses the lease when it expires anyway)."""
        shard = self._coord.broker.shard_for(self.fanout)
        try:
            reply = await shard.eval(
                "shared_poll_heartbeat",
                list(self._keys(shard)),
                [self.token, self._lease_ms, self._lease_ms, self._meta_ms, new_epoch(), *keys],
            )
        except (RedisError, OSError) as e:
            self._outage.failed(e)
            return False
        self._outage.ended()
        if self._closed:
            return False
        self.leader = int(reply[0]) == 1
        tracked = [_text(k) for k in reply[2]] if self.leader else None
        self._state.on_heartbeat(self.leader, _text(reply[1]), tracked)
        self.ready.set()
        return True

    # ------------------------------------------------------------------ ChannelLink

    def forward(self, keys: list[str]) -> None:
        self._coord.spawn(self._forward(keys))

    async def _forward(self, keys: list[str]) -> None:
        if not await self._beat(keys):
            return  # the leader's next cycle polls them once Redis has them
        if self.leader:
            for key in keys:
                self._state.notify(key)
            return
        try:
            await self._coord.broker.publish(
                self.fanout, fanout.encode_notify(self._coord.node_id, keys), _NO_OPTS
            )
        except ClientError:
            pass  # the broker logged it; the leader's next cycle polls the keys

    def send_results(self, epoch: str, pubs: list[PollPub]) -> None:
        if pubs:
            frame = fanout.encode_results(self._coord.node_id, epoch, pubs)
            self._coord.spawn(self._send(frame))

    async def _send(self, frame: bytes) -> None:
        try:
            await self._coord.broker.publish(self.fanout, frame, _NO_OPTS)
        except ClientError:
            pass  # logged by the broker; followers catch up on the next change

    async def allocate(self, n: int) -> int:
        shard = self._coord.broker.shard_for(self.fanout)
        try:
            meta = self._keys(shard)[2]
            return int(await shard.eval("shared_poll_versions", [meta], [n, self._meta_ms]))
        except (RedisError, OSError) as e:
            raise LinkUnavailable(str(e)) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.leader = False
        self._task.cancel()
        if self._coord.links.get(self.channel) is self:
            del self._coord.links[self.channel]
        self._coord.spawn(self._release())

    async def _release(self) -> None:
        # A new state of the channel may have opened a link meanwhile: it keeps the fan-out.
        if self.channel not in self._coord.links:
            await self._coord.broker.unsubscribe([self.fanout])
        shard = self._coord.broker.shard_for(self.fanout)
        try:
            await shard.eval("shared_poll_release", [self._keys(shard)[0]], [self.token])
        except (RedisError, OSError) as e:
            log.warning("shared poll lease of %r not released: %r", self.channel, e)


# Conformance, checked by mypy.
_coordinator: type[Coordinator] = RedisCoordinator
_link: type[ChannelLink] = RedisChannelLink
_linked: type[LinkedChannel] = PollChannel
