"""Redis map broker: keyed channel state, its change stream and PUB/SUB, one Lua script per
operation (centrifuge's map_broker_redis.go; the contract is app/maps/broker.py).

Each change of a key is one script (lua/map_publish.lua, lua/map_remove.lua): the state
hash, the per-key expiry zset, the stream with offsets and the epoch in the meta hash, the
idempotency result and the SPUBLISH of the change, atomically; so offsets are dense and
PUB/SUB order is offset order, as for streams. The key layout is centrifuge's
(maps_keys.py). Keys with a TTL are removed by the expiry (maps_expiry.py) like `remove`
does, so subscribers see a removal publication.

Stored and published payloads are codec.py's (`<meta JSON>\\n<data>`): a state value is
`<offset>:<epoch>:<payload>` (centrifuge's state value shape), a stream entry has the
payload in field `d`, a PUB/SUB message is `__p1:<offset>:<epoch>__<payload>`, for an
ephemeral channel (no stream) `__p1:0:__<payload>`, which the handler receives with offset 0
and epoch "". A delta write publishes the key's previous data in the payload's meta ("pd"),
spliced in by the script, which alone sees the previous value atomically.

The broker is independent of the node's Broker: its own shards (Centrifugo's
`map_broker.redis` section), prefix and PUB/SUB connections, one per (shard, partition),
SSUBSCRIBEd to exactly the map channels this node has subscribers for. Redis may be away
when it starts or at any time: shards are brought up in the background, retried with
backoff, and every command fails with ClientError(100) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from app.broker import BrokerEventHandler, HealthReporter
from app.engines.redis import codec
from app.engines.redis.keys import fnv64a, jump_hash
from app.engines.redis.maps_expiry import MapExpiry
from app.engines.redis.maps_keys import MapKeys, parse_state_value
from app.engines.redis.outage import Outage
from app.engines.redis.publish import epoch_bytes
from app.engines.redis.pubsub import PubSubConnection, PubSubUnavailable
from app.engines.redis.shard import Shard
from app.errors import ERROR_INTERNAL, ERROR_UNRECOVERABLE_POSITION, ClientError
from app.maps.broker import (
    SUPPRESS_POSITION_MISMATCH,
    MapBroker,
    MapChannelOptions,
    MapCurrentEntry,
    MapPublishOptions,
    MapRemoveOptions,
    MapStateResult,
    MapStreamResult,
    MapUpdateResult,
    check_stream_features,
)
from app.models import Publication, StreamPosition

log = logging.getLogger("centrifugo.redis.maps")

# The errors a Redis command may end in: redis-py's (ShardUnavailable is one), the Cluster
# client's own, and socket errors.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


def ms(seconds: float) -> str:
    """Milliseconds for PEXPIRE and scores; a positive duration never becomes '0' (never)."""
    return str(max(round(seconds * 1000), 1)) if seconds > 0 else "0"


def state_publication(key: bytes, value: bytes) -> Publication:
    offset, payload = parse_state_value(value)
    pub = codec.decode_payload(payload, offset)
    pub.key = key.decode()
    return pub


class RedisMapBroker:
    """MapBroker over Redis shards, with health (`healthy`): see the conformance lines at
    the end of this module."""

    def __init__(
        self,
        shards: list[Shard],
        *,
        prefix: str = "centrifugo",
        cleanup_interval: float = 1.0,
        cleanup_batch_size: int = 100,
        idempotent_result_ttl: float = 300.0,
        skip_pub_sub: bool = False,
        io_timeout: float = 4.0,
    ) -> None:
        """`shards`: not yet connected (built from the section's addresses, address.py and
        shard.py). `cleanup_interval` <= 0 turns the expiry of keys off (Centrifugo's -1).
        `idempotent_result_ttl` applies when a write's own is 0. `skip_pub_sub`: changes
        are stored, never published (Centrifugo's option, for PUB/SUB done elsewhere).
        No I/O until `run`."""
        self.shards = shards
        self.prefix = prefix
        self._skip_pub_sub = skip_pub_sub
        self._io_timeout = io_timeout
        self._result_ttl = idempotent_result_ttl
        self._handler: BrokerEventHandler | None = None
        self._keys: dict[int, MapKeys] = {}
        self._links: dict[tuple[int, int], PubSubConnection] = {}
        self._bring_up: list[asyncio.Task[None]] = []
        self.expiry = MapExpiry(self, cleanup_interval, cleanup_batch_size)

    # --- routing ---

    def shard_for(self, channel: str) -> Shard:
        if len(self.shards) == 1:
            return self.shards[0]
        return self.shards[jump_hash(fnv64a(channel.encode()), len(self.shards))]

    def reached(self) -> list[tuple[Shard, MapKeys]]:
        """The shards reached so far, with their key names (the expiry's work list)."""
        return [(s, self._keys[s.index]) for s in self.shards if s.index in self._keys]

    async def keys_of(self, shard: Shard) -> MapKeys:
        """The shard's key names; first contact with it if it was not reached yet (raises
        what the attempt raised while Redis is away)."""
        keys = self._keys.get(shard.index)
        if keys is None:
            await shard.connect()
            keys = self._keys[shard.index] = MapKeys(self.prefix, shard.require_keys())
        return keys

    # --- lifecycle ---

    async def run(self, handler: BrokerEventHandler) -> None:
        """Brings every shard up in the background (returns once each was tried once) and
        starts the expiry. Never raises because Redis is away."""
        self._handler = handler
        loop = asyncio.get_running_loop()
        tried = [loop.create_future() for _ in self.shards]
        self._bring_up = [
            loop.create_task(self._bring_up_shard(shard, first))
            for shard, first in zip(self.shards, tried, strict=True)
        ]
        await asyncio.gather(*tried)
        self.expiry.start()

    async def _bring_up_shard(self, shard: Shard, tried: asyncio.Future[None]) -> None:
        outage = Outage(log, f"map broker redis {shard.where}")
        while True:
            try:
                await self.keys_of(shard)
                break
            except Exception as e:  # redis-py's errors, RedisClusterException, OSError
                delay = outage.failed(e)
                if not tried.done():
                    tried.set_result(None)
                await asyncio.sleep(delay)
        outage.ended()
        if not tried.done():
            tried.set_result(None)

    async def close(self) -> None:
        await self.expiry.close()
        for task in self._bring_up:
            task.cancel()
        await asyncio.gather(*self._bring_up, return_exceptions=True)
        for conn in self._links.values():
            await conn.close()
        for shard in self.shards:
            await shard.close()

    @property
    def healthy(self) -> bool:
        """Every shard reached, and every PUB/SUB link that carries channels up."""
        return len(self._keys) == len(self.shards) and all(
            c.ready for c in self._links.values() if c.has_channels
        )

    # --- PUB/SUB ---

    def _link(self, shard: Shard, keys: MapKeys, partition: int) -> PubSubConnection:
        conn = self._links.get((shard.index, partition))
        if conn is None:

            def on_message(name: bytes, frame: bytes) -> None:
                self._dispatch(keys.channel_from_pubsub(name), frame)

            conn = PubSubConnection(
                lambda: shard.endpoint(partition),
                on_message,
                sharded=True,
                connect_timeout=shard._connect_timeout,
                io_timeout=shard._io_timeout,
                name=f"map shard {shard.index} partition {partition}",
            )
            conn.start()
            self._links[(shard.index, partition)] = conn
        return conn

    def _dispatch(self, channel: str, frame: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            kind, pub, epoch = codec.decode_frame(frame)
        except (ValueError, IndexError, TypeError):
            log.warning("dropping undecodable map publication on %r", channel)
            return
        if isinstance(pub, Publication):  # the scripts publish nothing else
            handler.handle_publication(channel, pub, epoch)

    async def subscribe(self, channels: list[str]) -> None:
        groups: dict[PubSubConnection, list[bytes]] = {}
        try:
            for ch in channels:
                shard = self.shard_for(ch)
                keys = await self.keys_of(shard)
                conn = self._link(shard, keys, keys.partition(ch))
                groups.setdefault(conn, []).append(keys.client_channel(ch).encode())
            await asyncio.gather(
                *(conn.subscribe(names, self._io_timeout) for conn, names in groups.items())
            )
        except (PubSubUnavailable, *REDIS_ERRORS) as e:
            log.warning("map subscribe failed: %s", e)
            raise ClientError(ERROR_INTERNAL) from None

    async def unsubscribe(self, channels: list[str]) -> None:
        for ch in channels:
            shard = self.shard_for(ch)
            keys = self._keys.get(shard.index)
            if keys is None:
                continue  # never reached: nothing was subscribed
            conn = self._links.get((shard.index, keys.partition(ch)))
            if conn is not None:
                conn.unsubscribe([keys.client_channel(ch).encode()])

    # --- commands ---

    async def _eval(
        self, what: str, channel: str, script: str, keys: list[str], args: list[Any]
    ) -> Any:
        """The script's reply; ClientError(100) and one log line when Redis fails."""
        shard = self.shard_for(channel)
        try:
            return await shard.eval(script, keys, args)
        except REDIS_ERRORS as e:
            log.warning("map %s of %r failed: %s", what, channel, e)
            raise ClientError(ERROR_INTERNAL) from None

    async def _channel_keys(self, channel: str) -> MapKeys:
        try:
            return await self.keys_of(self.shard_for(channel))
        except REDIS_ERRORS as e:
            log.warning("map broker redis for %r unreachable: %s", channel, e)
            raise ClientError(ERROR_INTERNAL) from None

    def _stream_args(self, chopts: MapChannelOptions) -> list[str]:
        """streamless, stream size, stream ttl, meta ttl: the scripts' common arguments."""
        streamless = not chopts.mode.has_stream
        return [
            "1" if streamless else "0",
            str(chopts.stream_size),
            ms(chopts.stream_ttl),
            ms(chopts.meta_ttl),
        ]

    def pubsub_of(self, keys: MapKeys, channel: str) -> str:
        """The scripts' PUB/SUB channel argument ('' = publish nothing)."""
        return "" if self._skip_pub_sub else keys.client_channel(channel)

    def _result_ttl_of(self, idempotency_key: str, ttl: float) -> str:
        if not idempotency_key:
            return "0"
        return ms(ttl if ttl > 0 else self._result_ttl)

    async def publish(
        self, channel: str, key: str, opts: MapPublishOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        check_stream_features(channel, chopts, opts.expected_position, opts.version)
        keys = await self._channel_keys(channel)
        now = int(time.time() * 1000)
        payload = codec.encode_payload(opts.data, opts.client_info, opts.tags, now, False, key=key)
        expected = opts.expected_position
        streamless, size, stream_ttl, meta_ttl = self._stream_args(chopts)
        reply = await self._eval(
            "publish",
            channel,
            "map_publish",
            keys.write_keys(channel, opts.idempotency_key),
            [
                key,
                payload,
                self.pubsub_of(keys, channel),
                streamless,
                size,
                stream_ttl,
                meta_ttl,
                epoch_bytes(),
                self._result_ttl_of(opts.idempotency_key, opts.idempotent_result_ttl),
                "1" if opts.delta else "0",
                str(opts.version) if opts.version and chopts.mode.has_stream else "0",
                opts.version_epoch,
                ms(chopts.key_ttl) if chopts.mode.has_expiry else "0",
                channel,
                opts.key_mode.value,
                "1" if opts.refresh_ttl_on_suppress else "0",
                "" if expected is None else str(expected.offset),
                "" if expected is None else expected.epoch,
                str(now),
            ],
        )
        return update_result(reply)

    async def remove(
        self, channel: str, key: str, opts: MapRemoveOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        check_stream_features(channel, chopts, opts.expected_position)
        keys = await self._channel_keys(channel)
        now = int(time.time() * 1000)
        payload = codec.encode_payload(b"", None, opts.tags, now, False, key=key, removed=True)
        expected = opts.expected_position
        reply = await self._eval(
            "remove",
            channel,
            "map_remove",
            keys.write_keys(channel, opts.idempotency_key),
            [
                key,
                payload,
                self.pubsub_of(keys, channel),
                *self._stream_args(chopts),
                epoch_bytes(),
                self._result_ttl_of(opts.idempotency_key, opts.idempotent_result_ttl),
                channel,
                "" if expected is None else str(expected.offset),
                "" if expected is None else expected.epoch,
                "1" if opts.tags is None else "0",
            ],
        )
        return update_result(reply)

    async def read_state(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        cursor: str = "",
        limit: int = -1,
        key: str = "",
        revision: StreamPosition | None = None,
    ) -> MapStateResult:
        """Pages in HSCAN order, not by key: the cursor is Redis's, and a page may hold more
        than `limit` keys (small hashes come whole), as centrifuge's unordered state."""
        keys = await self._channel_keys(channel)
        top, epoch, next_cursor, flat = await self._eval(
            "read_state",
            channel,
            "map_read_state",
            [
                keys.state(channel),
                keys.meta(channel),
                keys.state_meta(channel),
                keys.state_expire(channel),
            ],
            [
                "0" if chopts.mode.has_stream else "1",
                cursor or "0",
                str(max(limit, -1)),
                key,
                ms(chopts.meta_ttl),
                epoch_bytes(),
            ],
        )
        position = StreamPosition(int(top), epoch.decode())
        if revision is not None and revision.epoch != position.epoch:
            raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        it = iter(flat)
        pubs = [state_publication(k, v) for k, v in zip(it, it, strict=True)]
        return MapStateResult(pubs, position, "" if next_cursor == b"0" else next_cursor.decode())

    async def read_stream(
        self,
        channel: str,
        chopts: MapChannelOptions,
        *,
        since: StreamPosition | None = None,
        limit: int = -1,
        reverse: bool = False,
    ) -> MapStreamResult:
        if not chopts.mode.has_stream:
            return MapStreamResult()  # an ephemeral channel has no stream: position 0, ""
        keys = await self._channel_keys(channel)
        top, epoch, flag, entries = await self._eval(
            "read_stream",
            channel,
            "map_read_stream",
            [keys.stream(channel), keys.meta(channel)],
            [
                "" if since is None else str(since.offset),
                "" if since is None else since.epoch,
                str(max(limit, -1)),
                "1" if reverse else "0",
                ms(chopts.meta_ttl),
                epoch_bytes(),
            ],
        )
        if flag == b"u":
            raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        pubs = []
        for entry_id, fields in entries:
            # fields: [b"e", epoch, b"d", payload]
            payload = fields[fields.index(b"d") + 1]
            pubs.append(codec.decode_payload(payload, int(entry_id.split(b"-", 1)[0])))
        return MapStreamResult(pubs, StreamPosition(int(top), epoch.decode()))

    async def stats(self, channel: str) -> int:
        keys = await self._channel_keys(channel)
        shard = self.shard_for(channel)
        try:
            return int(await shard.client.hlen(keys.state(channel)))  # type: ignore[union-attr]
        except REDIS_ERRORS as e:
            log.warning("map stats of %r failed: %s", channel, e)
            raise ClientError(ERROR_INTERNAL) from None

    async def clear(self, channel: str) -> None:
        keys = await self._channel_keys(channel)
        await self._eval(
            "clear",
            channel,
            "map_clear",
            [
                keys.stream(channel),
                keys.meta(channel),
                keys.state(channel),
                keys.state_expire(channel),
                keys.state_meta(channel),
                keys.state_order(channel),
                keys.cleanup(channel),
            ],
            [channel],
        )


def update_result(reply: Any) -> MapUpdateResult:
    """map_publish.lua / map_remove.lua's {offset, epoch, reason, current}."""
    offset, epoch, reason, current = reply
    result = MapUpdateResult(StreamPosition(int(offset), epoch.decode()))
    if reason:
        result.suppressed = True
        result.suppress_reason = reason.decode()
        if result.suppress_reason == SUPPRESS_POSITION_MISMATCH and current:
            entry_offset, payload = parse_state_value(current)
            result.current_entry = MapCurrentEntry(entry_offset, codec.decode_payload(payload).data)
    return result


# Conformance, checked by mypy (centrifuge's `var _ MapBroker = (*RedisMapBroker)(nil)`).
_map_broker: type[MapBroker] = RedisMapBroker
_health: type[HealthReporter] = RedisMapBroker
