"""Redis broker: history and offsets in Lua, fan-out by Redis 7 sharded PUB/SUB.

Workers hold no channel state: a publication goes through one script that
appends to the stream, bumps the offset and SPUBLISHes, and comes back to every
node subscribed to the channel. This node SSUBSCRIBEs exactly the channels with
local subscribers, over one connection per (shard, partition). How a publication
becomes that one command, and its reply a PublishResult: publish.py.

Redis may be away when a worker boots, or go away at any time: `run` never fails because
of it. Each shard is brought up in the background (first contact, then its control
PUB/SUB link), retried with backoff until Redis answers; until then every command fails
with ClientError(100) at once, /health answers 500 (`healthy`), and a shard's mode
(standalone or Cluster, from INFO) is learnt at that first contact, not at boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from app.broker import (
    BatchPublisher,
    Broker,
    BrokerEventHandler,
    ControlEventHandler,
    Controller,
    HealthReporter,
)
from app.engines.redis import codec
from app.engines.redis.keys import Keys, fnv64a, jump_hash
from app.engines.redis.outage import Outage
from app.engines.redis.publish import (
    DEFAULT_META_TTL,
    HISTORY_ITEMS_PER_CALL,
    PLAIN_GROUP,
    WITH_HISTORY,
    HistoryCall,
    PlainGroup,
    epoch_bytes,
    expire_seconds,
    group_result,
    issue_publish,
    keeps_history,
    publish_result,
)
from app.engines.redis.pubsub import PubSubConnection, PubSubUnavailable
from app.engines.redis.shard import Shard, ShardUnavailable
from app.errors import ERROR_INTERNAL, ClientError
from app.models import (
    ClientInfo,
    HistoryFilter,
    HistoryResult,
    PublishOptions,
    PublishResult,
    StreamPosition,
)

log = logging.getLogger("centrifugo.redis.broker")


class RedisBroker:
    """Broker and Controller over Redis shards, with batched publish (`publish_many`) and
    health (`healthy`): see the conformance lines at the end of this module."""

    def __init__(self, shards: list[Shard], io_timeout: float = 4.0) -> None:
        self.shards = shards
        self._io_timeout = io_timeout
        self._handler: BrokerEventHandler | None = None
        self._control_handler: ControlEventHandler | None = None
        self._data: dict[tuple[int, int], PubSubConnection] = {}
        self._control: dict[int, PubSubConnection] = {}  # shard index -> link, once reached
        self._bring_up: list[asyncio.Task[None]] = []
        self._tried: list[asyncio.Future[None]] = []  # per shard: tried once
        self._control_rr = itertools.count()
        self._node_id = ""

    # --- routing ---

    def shard_for(self, channel: str) -> Shard:
        if len(self.shards) == 1:
            return self.shards[0]
        return self.shards[jump_hash(fnv64a(channel.encode()), len(self.shards))]

    def _conn_for(self, shard: Shard, partition: int) -> PubSubConnection:
        key = (shard.index, partition)
        conn = self._data.get(key)
        if conn is None:
            conn = PubSubConnection(
                lambda: shard.endpoint(partition),
                # A partial, not a closure calling _dispatch: one Python call per message.
                partial(self._dispatch, shard.require_keys()),
                sharded=True,
                connect_timeout=shard._connect_timeout,
                io_timeout=shard._io_timeout,
                name=f"shard {shard.index} partition {partition}",
            )
            conn.start()
            self._data[key] = conn
        return conn

    # --- lifecycle ---

    async def run(self, handler: BrokerEventHandler) -> None:
        """Starts bringing every shard up in the background. Returns once each shard was
        tried once: ready if Redis answered (as a test or a first request expects), else
        unhealthy and still trying. Never raises because Redis is away."""
        self._handler = handler
        await asyncio.gather(*self._start())

    async def run_control(self, handler: ControlEventHandler) -> None:
        """Control messages to every node and to `handler.id` go to `handler`. Starts
        bringing the shards up as `run` does (whichever comes first); a control link
        already up is told the node's own channel."""
        self._control_handler = handler
        self._node_id = handler.id
        for index, conn in self._control.items():
            conn.keep([self.shards[index].require_keys().node_channel(self._node_id)])
        await asyncio.gather(*self._start())

    def _start(self) -> list[asyncio.Future[None]]:
        """Bring every shard up in the background, once; the futures of its first try."""
        if not self._tried:
            loop = asyncio.get_running_loop()
            self._tried = [loop.create_future() for _ in self.shards]
            self._bring_up = [
                loop.create_task(self._bring_up_shard(shard, first))
                for shard, first in zip(self.shards, self._tried, strict=True)
            ]
        return self._tried

    async def _bring_up_shard(self, shard: Shard, tried: asyncio.Future[None]) -> None:
        """First contact with `shard` (retried with backoff, logged once per outage), then
        its control link; the link resubscribes by itself after every later loss."""
        outage = Outage(log, f"redis {shard.where}")
        while True:
            try:
                await shard.connect()
                break
            except Exception as e:  # redis-py's errors, RedisClusterException, OSError
                delay = outage.failed(e)
                if not tried.done():
                    tried.set_result(None)
                await asyncio.sleep(delay)
        outage.ended()
        keys = shard.require_keys()
        conn = PubSubConnection(
            shard.control_endpoint,
            self._on_control,
            sharded=False,
            connect_timeout=shard._connect_timeout,
            io_timeout=shard._io_timeout,
            name=f"shard {shard.index} control",
        )
        # The control link is also the shard's liveness probe (`healthy`): it exists
        # even before a control handler is registered.
        channels = [keys.control]
        if self._control_handler is not None:
            channels.append(keys.node_channel(self._node_id))
        conn.keep(channels)
        conn.start()
        self._control[shard.index] = conn
        if not tried.done():
            with contextlib.suppress(TimeoutError):
                await conn.wait_ready(max(self._io_timeout, 5.0))
            tried.set_result(None)

    async def close(self) -> None:
        for task in self._bring_up:
            task.cancel()
        await asyncio.gather(*self._bring_up, return_exceptions=True)
        for conn in [*self._data.values(), *self._control.values()]:
            await conn.close()
        for shard in self.shards:
            await shard.close()

    @property
    def healthy(self) -> bool:
        """Every shard reached with its control link up (which a keepalive PING checks),
        and every data link that carries channels up."""
        return (
            len(self._control) == len(self.shards)
            and all(c.ready for c in self._control.values())
            and all(c.ready for c in self._data.values() if c.has_channels)
        )

    # --- PUB/SUB delivery ---

    def _dispatch(self, keys: Keys, name: bytes, frame: bytes) -> None:
        """A message of a data link: `name` is its PUB/SUB channel, `frame` the payload."""
        handler = self._handler
        if handler is None:
            return
        # A name seen before is one dict lookup (keys.py's cache), not a decode and slices.
        channel = keys.channels_by_pubsub.get(name)
        if channel is None:
            channel = keys.channel_from_pubsub(name)
        try:
            kind, obj, epoch = codec.decode_frame(frame)
        except (ValueError, IndexError, TypeError):
            log.warning("dropping undecodable publication on %r", channel)
            return
        if kind == "pub":
            handler.handle_publication(channel, obj, epoch)  # type: ignore[arg-type]
        elif kind == "join":
            handler.handle_join(channel, obj)  # type: ignore[arg-type]
        else:
            handler.handle_leave(channel, obj)  # type: ignore[arg-type]

    def _on_control(self, name: bytes, data: bytes) -> None:
        if self._control_handler is not None:
            self._control_handler.handle_control(data)

    async def subscribe(self, channels: list[str]) -> None:
        groups: dict[PubSubConnection, list[bytes]] = {}
        try:
            for ch in channels:
                shard = self.shard_for(ch)
                keys = shard.require_keys()
                conn = self._conn_for(shard, keys.partition(ch))
                name = keys.client_channel(ch).encode()
                names = groups.get(conn)
                if names is None:
                    groups[conn] = [name]
                else:
                    names.append(name)
            if len(groups) == 1:  # one client's channel: no task for a gather
                ((conn, names),) = groups.items()
                await conn.subscribe(names, self._io_timeout)
            else:
                await asyncio.gather(
                    *(conn.subscribe(names, self._io_timeout) for conn, names in groups.items())
                )
        except (PubSubUnavailable, ShardUnavailable) as e:
            log.warning("subscribe failed: %s", e)
            raise ClientError(ERROR_INTERNAL) from None

    async def unsubscribe(self, channels: list[str]) -> None:
        for ch in channels:
            shard = self.shard_for(ch)
            if shard.keys is None:
                continue  # never reached: nothing was subscribed
            conn = self._data.get((shard.index, shard.keys.partition(ch)))
            if conn is not None:
                conn.unsubscribe([shard.keys.client_channel(ch).encode()])

    # --- commands ---

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        try:
            kind, reply = issue_publish(self.shard_for(channel), channel, data, opts)
            return publish_result(kind, await reply)
        except (RedisError, OSError) as e:
            log.warning("publish to %r failed: %s", channel, e)
            raise ClientError(ERROR_INTERNAL) from None

    async def publish_many(
        self, items: Sequence[tuple[str, bytes, PublishOptions]]
    ) -> list[PublishResult | ClientError]:
        """`publish` of every item, issued in order before any reply is awaited (so a
        channel's publications apply in item order, in one round trip), with one wait for
        all of them. Publications with history bound for the same (shard, partition) share
        history_add calls. A failed item gets ClientError(100) in its place; nothing is
        raised.
        """
        # per item: (kind, reply, index in a shared history_add reply or SPUBLISH group)
        # or its error
        issued: list[tuple[int, Any, int] | Exception] = []
        open_calls: dict[tuple[int, int], HistoryCall] = {}
        open_groups: dict[int, PlainGroup] = {}  # shard index -> plain publications

        def issue_open(opened: dict[Any, Any]) -> None:
            # Whatever is still open applies before the item at hand is issued, so that a
            # channel's publications keep their order whatever their options.
            for pending in opened.values():
                pending.issue()
            opened.clear()

        for channel, data, opts in items:
            try:
                shard = self.shard_for(channel)
                if keeps_history(opts):
                    if open_groups:
                        issue_open(open_groups)
                    group = (shard.index, shard.require_keys().partition(channel))
                    call = open_calls.get(group)
                    if call is None:
                        call = open_calls[group] = HistoryCall(shard)
                    index = call.add(channel, data, opts)
                    issued.append((WITH_HISTORY, call, index))
                    if index + 1 >= HISTORY_ITEMS_PER_CALL:
                        del open_calls[group]
                        call.issue()
                    continue
                if open_calls:
                    issue_open(open_calls)
                if not opts.idempotency_key and shard.single_pipeline:
                    plain = open_groups.get(shard.index)
                    if plain is None:
                        plain = open_groups[shard.index] = PlainGroup(shard)
                    issued.append((PLAIN_GROUP, plain, plain.add(channel, data, opts)))
                    continue
                if open_groups:
                    issue_open(open_groups)
                kind, reply = issue_publish(shard, channel, data, opts)
                issued.append((kind, reply, 0))
            except (RedisError, OSError) as e:
                issued.append(e)
        issue_open(open_calls)
        issue_open(open_groups)
        results: list[PublishResult | ClientError] = []
        failed: list[tuple[str, Exception]] = []
        for (channel, _, _), entry in zip(items, issued, strict=True):
            try:
                if isinstance(entry, Exception):
                    raise entry
                kind, pending, item = entry
                if type(pending) is PlainGroup or type(pending) is HistoryCall:
                    # One await per group or history_add call, not per item (a coroutine
                    # each cost ~6 % of a batch publish's CPU); items read their places.
                    answers = pending.answers
                    if answers is None:
                        assert pending.reply is not None  # issued above
                        answers = pending.answers = await pending.reply
                    if kind == PLAIN_GROUP:
                        results.append(group_result(answers[item]))
                    else:
                        results.append(publish_result(kind, answers, item))
                    continue
                results.append(publish_result(kind, await pending, item))
            except (RedisError, OSError) as e:
                failed.append((channel, e))
                results.append(ClientError(ERROR_INTERNAL))
        if failed:
            first_channel, first_error = failed[0]
            log.warning(
                "publish of %d publication(s) failed, first to %r: %s",
                len(failed),
                first_channel,
                first_error,
            )
        return results

    async def _publish_info(self, channel: str, prefix: bytes, info: ClientInfo) -> None:
        shard = self.shard_for(channel)
        try:
            await shard.spublish(
                shard.require_keys().client_channel(channel), prefix + codec.encode_info(info)
            )
        except (RedisError, OSError) as e:
            log.warning("join/leave to %r failed: %s", channel, e)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_info(channel, codec.JOIN, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_info(channel, codec.LEAVE, info)

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        shard = self.shards[next(self._control_rr) % len(self.shards)]
        try:
            keys = shard.require_keys()
            target = keys.node_channel(node_id) if node_id else keys.control
            await shard.client.publish(target, data)  # type: ignore[union-attr]
        except (RedisError, OSError) as e:
            log.warning("control publish failed: %s", e)
            raise ClientError(ERROR_INTERNAL) from None

    async def history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        shard = self.shard_for(channel)
        include = flt.limit != 0
        if flt.reverse:
            start = "+" if flt.since is None else f"{flt.since.offset - 1}-0"
            if flt.since is not None and flt.since.offset <= 1:
                include = False  # nothing lies before offset 1
        else:
            start = "-" if flt.since is None else f"{flt.since.offset + 1}-0"
        limit = flt.limit if flt.limit > 0 else 0
        try:
            keys = shard.require_keys()
            top, epoch, entries = await shard.eval(
                "history_get",
                [keys.stream(channel), keys.meta(channel)],
                [
                    "1" if include else "0",
                    start,
                    limit,
                    "1" if flt.reverse else "0",
                    expire_seconds(flt.meta_ttl or DEFAULT_META_TTL),
                    epoch_bytes(),
                ],
            )
        except (RedisError, OSError) as e:
            log.warning("history of %r failed: %s", channel, e)
            raise ClientError(ERROR_INTERNAL) from None
        pubs = []
        for entry_id, fields in entries or ():
            offset = int(entry_id.split(b"-", 1)[0])
            # fields is a flat [name, value] list; the payload is field "d".
            pub = codec.decode_payload(fields[1], offset)
            # Stored "dl" is the publisher's "may use delta", for the live fan-out only; a
            # publication read from history is never a patch (as the memory engine).
            pub.delta = False
            pubs.append(pub)
        return HistoryResult(pubs, StreamPosition(int(top), epoch.decode()))

    async def remove_history(self, channel: str) -> None:
        shard = self.shard_for(channel)
        try:
            await shard.eval("history_remove", [shard.require_keys().stream(channel)], [])
        except (RedisError, OSError) as e:
            log.warning("history remove of %r failed: %s", channel, e)
            raise ClientError(ERROR_INTERNAL) from None


# Conformance, checked by mypy (centrifuge's `var _ Broker = (*RedisBroker)(nil)`).
_broker: type[Broker] = RedisBroker
_controller: type[Controller] = RedisBroker
_batch: type[BatchPublisher] = RedisBroker
_health: type[HealthReporter] = RedisBroker
