"""Redis broker: history and offsets in Lua, fan-out by Redis 7 sharded PUB/SUB.

Workers hold no channel state: a publication goes through one script that
appends to the stream, bumps the offset and SPUBLISHes, and comes back to every
node subscribed to the channel. This node SSUBSCRIBEs exactly the channels with
local subscribers, over one connection per (shard, partition).

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
import os
import string
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple

from redis.exceptions import RedisError, ResponseError

from app.broker import (
    BatchPublisher,
    Broker,
    BrokerEventHandler,
    ControlEventHandler,
    Controller,
    HealthReporter,
)
from app.engines.redis import codec
from app.engines.redis.keys import fnv64a, jump_hash
from app.engines.redis.outage import Outage
from app.engines.redis.pubsub import PubSubConnection, PubSubUnavailable
from app.engines.redis.resp import bulk, bulk_header
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

DEFAULT_META_TTL = 720 * 3600


_LETTERS = string.ascii_letters.encode()


_EPOCH_LETTERS = bytes(_LETTERS[i % 52] for i in range(256))


def _epoch_bytes() -> bytes:
    """A fresh candidate epoch for every call (8 letters): the scripts adopt it only
    when the stream meta is missing. Cheap, since it runs on every publish."""
    return os.urandom(8).translate(_EPOCH_LETTERS)


_TTLS: dict[float, str] = {}


def _ttl(seconds: float) -> str:
    """Whole seconds for EXPIRE, never rounding a positive TTL down to 'forever'."""
    text = _TTLS.get(seconds)
    if text is None:
        text = str(max(int(seconds + 0.999), 1)) if seconds > 0 else "0"
        if len(_TTLS) < 1024:  # a handful of namespace settings in practice
            _TTLS[seconds] = text
    return text


_WITH_HISTORY, _IDEMPOTENT, _PLAIN = range(3)  # what a publish command answers

# Publications per history_add call in a batch: enough to spread the cost of entering the
# script, few enough that one call holds Redis for about a millisecond at most.
HISTORY_ITEMS_PER_CALL = 50


def _keeps_history(opts: PublishOptions) -> bool:
    return opts.history_size > 0 and opts.history_ttl > 0


# history_add's flag of a publication it did not store -> PublishResult.suppress_reason
_SUPPRESS_REASONS = {b"1": "idempotency", b"v": "version"}

# An unversioned publication's ARGV[8], ARGV[9] (version '0', version epoch '').
_NO_VERSION = ("0", "")
_NO_VERSION_RESP = bulk(b"0") + bulk(b"")


def _version_args(opts: PublishOptions) -> tuple[tuple[str, str], bytes]:
    """history_add's version arguments, plain and as RESP."""
    if not opts.version:
        return _NO_VERSION, _NO_VERSION_RESP
    version, epoch = str(opts.version), opts.version_epoch
    return (version, epoch), bulk(version.encode()) + bulk(epoch.encode())


def _publish_result(kind: int, reply: Any, item: int = 0) -> PublishResult:
    """`reply` of a publish command; `item` picks one publication of a history_add call."""
    if kind == _WITH_HISTORY:
        offset, epoch, flag = reply[3 * item : 3 * item + 3]
        if flag == b"0":
            return PublishResult(StreamPosition(int(offset), epoch.decode()))
        if flag == b"e":  # this item's command failed inside the script
            raise ResponseError(epoch.decode(errors="replace"))
        reason = _SUPPRESS_REASONS[flag]
        return PublishResult(StreamPosition(int(offset), epoch.decode()), True, reason)
    if kind == _IDEMPOTENT:
        if reply:
            return PublishResult(StreamPosition())
        return PublishResult(StreamPosition(), True, "idempotency")  # 0: key seen before
    return PublishResult(StreamPosition())


class _ItemOptions(NamedTuple):
    """A history_add item's option arguments: as RESP (the command) and plain (kept for
    re-encoding), shared by every publication with the same values."""

    after_payload: bytes  # the payload's closing CRLF, then history size and ttl
    meta_ttl_resp: bytes
    result_ttl_resp: bytes
    size: int
    ttl: str
    meta_ttl: str
    result_ttl: str


_ITEM_OPTIONS: dict[tuple[int, float, float, float], _ItemOptions] = {}


def _item_options(opts: PublishOptions) -> _ItemOptions:
    result_ttl = opts.idempotent_result_ttl if opts.idempotency_key else 0.0
    key = (opts.history_size, opts.history_ttl, opts.history_meta_ttl, result_ttl)
    item = _ITEM_OPTIONS.get(key)
    if item is None:
        ttl = _ttl(opts.history_ttl)
        meta_ttl = _ttl(opts.history_meta_ttl or DEFAULT_META_TTL)
        result = _ttl(result_ttl) if opts.idempotency_key else "0"
        item = _ItemOptions(
            b"\r\n" + bulk(str(opts.history_size).encode()) + bulk(ttl.encode()),
            bulk(meta_ttl.encode()),
            bulk(result.encode()),
            opts.history_size,
            ttl,
            meta_ttl,
            result,
        )
        if len(_ITEM_OPTIONS) < 1024:  # a handful of namespace settings in practice
            _ITEM_OPTIONS[key] = item
    return item


class _HistoryCall:
    """Publications with history bound for one (shard, partition), added by one
    history_add call (one for a single publish, up to HISTORY_ITEMS_PER_CALL for a
    batch); every item's result comes from its one reply.

    The command is built from RESP pieces cached per channel and per options, so only
    the payload is encoded per publication: packing every argument (twelve per item) was
    a fifth of a batch publish's CPU. The plain keys and args are kept for the paths
    that re-encode the command (NOSCRIPT, the cluster fallback)."""

    __slots__ = ("shard", "epoch", "_epoch_resp", "keys", "args", "_rkeys", "_rargs", "reply")

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        # One candidate epoch serves the call: channels are told apart by their keys, and
        # a channel's meta cannot vanish between two of its items in one script.
        self.epoch = _epoch_bytes()
        self._epoch_resp = bulk(self.epoch)
        self.keys: list[Any] = []
        self.args: list[Any] = []
        self._rkeys: list[bytes] = []
        self._rargs: list[bytes] = []
        self.reply: asyncio.Future[Any] | None = None

    def __len__(self) -> int:
        return len(self._rkeys)  # one entry per publication

    def add(self, channel: str, data: bytes, opts: PublishOptions) -> int:
        """Appends one publication (KEYS and ARGV as lua/history_add.lua documents them);
        returns its index in the call's reply."""
        keys = self.shard.require_keys()
        stream, meta, pubsub_channel, result_prefix = keys.publish_keys(channel)
        keys_resp, channel_resp = keys.history_resp(channel)
        o = _item_options(opts)
        version, version_resp = _version_args(opts)
        payload = codec.encode_payload(data, opts.client_info, opts.tags, 0, opts.delta)
        index = len(self._rkeys)
        if opts.idempotency_key:
            result_key = result_prefix + opts.idempotency_key
            self._rkeys.append(keys_resp[0] + bulk(result_key.encode()))
        else:
            result_key = result_prefix
            self._rkeys.append(keys_resp[1])
        # Pieces, joined once per call: a bulk string's header, then the payload, then
        # the cached rest (formatting each item anew cost more than the join).
        self._rargs.extend(
            (
                bulk_header(len(payload)),
                payload,
                o.after_payload,
                channel_resp,
                o.meta_ttl_resp,
                self._epoch_resp,
                o.result_ttl_resp,
                version_resp,
            )
        )
        self.keys += (stream, meta, result_key)
        self.args += (payload, o.size, o.ttl, pubsub_channel, o.meta_ttl, self.epoch, o.result_ttl)
        self.args += version
        return index

    def issue(self) -> None:
        try:
            packed = b"".join(self._rkeys) + b"".join(self._rargs)
            self.reply = asyncio.ensure_future(
                self.shard.eval("history_add", self.keys, self.args, packed)
            )
        except (RedisError, OSError) as e:  # every item of the call fails alike
            self.reply = asyncio.get_running_loop().create_future()
            self.reply.set_exception(e)


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
            keys = shard.require_keys()

            def on_message(name: bytes, frame: bytes) -> None:
                self._dispatch(keys.channel_from_pubsub(name), frame)

            conn = PubSubConnection(
                lambda: shard.endpoint(partition),
                on_message,
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

    def _dispatch(self, channel: str, frame: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
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
            kind, reply = self._issue_publish(channel, data, opts)
            return _publish_result(kind, await reply)
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
        # per item: (kind, reply, index in a shared history_add reply) or its error
        issued: list[tuple[int, Any, int] | Exception] = []
        open_calls: dict[tuple[int, int], _HistoryCall] = {}
        for channel, data, opts in items:
            try:
                if _keeps_history(opts):
                    shard = self.shard_for(channel)
                    group = (shard.index, shard.require_keys().partition(channel))
                    call = open_calls.get(group)
                    if call is None:
                        call = open_calls[group] = _HistoryCall(shard)
                    issued.append((_WITH_HISTORY, call, call.add(channel, data, opts)))
                    if len(call) >= HISTORY_ITEMS_PER_CALL:
                        del open_calls[group]
                        call.issue()
                    continue
                # Calls still open would apply after this: issue them first, so that a
                # channel's publications keep their order whatever their options.
                for call in open_calls.values():
                    call.issue()
                open_calls.clear()
                kind, reply = self._issue_publish(channel, data, opts)
                issued.append((kind, reply, 0))
            except (RedisError, OSError) as e:
                issued.append(e)
        for call in open_calls.values():
            call.issue()
        results: list[PublishResult | ClientError] = []
        failed: list[tuple[str, Exception]] = []
        for (channel, _, _), entry in zip(items, issued, strict=True):
            try:
                if isinstance(entry, Exception):
                    raise entry
                kind, pending, item = entry
                if isinstance(pending, _HistoryCall):
                    pending = pending.reply
                results.append(_publish_result(kind, await pending, item))
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

    def _issue_publish(
        self, channel: str, data: bytes, opts: PublishOptions
    ) -> tuple[int, Awaitable[Any]]:
        """Queues the publication's one command; returns (kind, its reply)."""
        shard = self.shard_for(channel)
        if _keeps_history(opts):
            call = _HistoryCall(shard)
            call.add(channel, data, opts)
            call.issue()
            assert call.reply is not None
            return _WITH_HISTORY, call.reply
        keys = shard.require_keys()
        payload = codec.encode_payload(data, opts.client_info, opts.tags, 0, opts.delta)
        _, _, pubsub_channel, result_prefix = keys.publish_keys(channel)
        if opts.idempotency_key:
            reply = shard.eval(
                "publish_idempotent",
                [result_prefix + opts.idempotency_key],
                [pubsub_channel, payload, _ttl(opts.idempotent_result_ttl)],
            )
            return _IDEMPOTENT, reply
        return _PLAIN, shard.spublish(pubsub_channel, payload)

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
                    _ttl(flt.meta_ttl or DEFAULT_META_TTL),
                    _epoch_bytes(),
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
