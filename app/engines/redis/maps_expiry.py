"""The expiry of map keys with a TTL: centrifuge's cleanup worker (map_broker_redis.go
runCleanupWorker), for the Redis map broker (maps.py).

Every `interval` (Centrifugo's `cleanup_interval`, 1 s) each node reads, per shard and
partition, the cleanup zset (channel -> its earliest key expiry) for channels whose expiry
passed; per channel, lua/map_find_expired.lua lists up to `batch_size` expired keys with
their stored values, a removal publication is built for each (codec.py, with the key's own
tags, as centrifuge builds it in Go), and lua/map_remove_expired.lua removes them like
`remove` does: stream entry with the next offset, SPUBLISH, so subscribers see the removal.

Every node runs this, and none coordinates: the removal script removes a key only while its
expiry score is still the one found, so of two nodes racing for a key one removes it (one
removal publication) and the other's call is a no-op; a key refreshed meanwhile stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from app import metrics
from app.engines.redis import codec
from app.engines.redis.maps_keys import MapKeys, parse_state_value
from app.engines.redis.publish import epoch_bytes
from app.engines.redis.shard import Shard

log = logging.getLogger("centrifugo.redis.maps")

# Channels read from a cleanup zset per sweep, and handled at once (centrifuge's
# cleanupChannelBatchSize, cleanupChannelConcurrency); batches of keys per channel per sweep
# (its maxBatchesPerCall): a channel with more expired keys continues at the next sweep.
CHANNELS_PER_SWEEP = 10000
CHANNELS_AT_ONCE = 64
BATCHES_PER_CHANNEL = 10


class ReachedShards(Protocol):
    """What the expiry needs of its broker: the shards reached so far, where removals go."""

    def reached(self) -> list[tuple[Shard, MapKeys]]: ...

    def pubsub_of(self, keys: MapKeys, channel: str) -> str:
        """The PUB/SUB channel removals go to ('' = none)."""
        ...


class MapExpiry:
    def __init__(self, owner: ReachedShards, interval: float, batch_size: int) -> None:
        self._owner = owner
        self.interval = interval
        self.batch_size = batch_size
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweeps every `interval` from now on; no-op when the interval is <= 0 (off)."""
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                removed = await self.sweep()
            except Exception as e:  # Redis away: logged once per outage, tried next sweep
                metrics.child(metrics.MAP_CLEANUP_ERRORS, "redis").inc()
                if not failing:
                    log.warning("map key expiry failed, retrying: %r", e)
                failing = True
            else:
                if removed:
                    metrics.child(metrics.MAP_CLEANUP_REMOVED, "redis").inc(removed)
                if failing:
                    log.info("map key expiry works again")
                failing = False

    async def sweep(self, now: int = 0) -> int:
        """One pass over every reached shard for keys expired at `now` (unix ms; 0: the
        current time); returns the number of keys removed. Raises the first Redis error
        (the pass stops there; the next one starts over)."""
        now = now or int(time.time() * 1000)
        removed = 0
        for shard, keys in self._owner.reached():
            assert shard.client is not None  # set once reached
            for cleanup_key in keys.cleanup_keys:
                due: list[Any] = await shard.client.zrangebyscore(
                    cleanup_key, 0, now, start=0, num=CHANNELS_PER_SWEEP
                )
                for i in range(0, len(due), CHANNELS_AT_ONCE):
                    counts = await asyncio.gather(
                        *(
                            self._expire(shard, keys, ch.decode(), now)
                            for ch in due[i : i + CHANNELS_AT_ONCE]
                        )
                    )
                    removed += sum(counts)
        return removed

    async def _expire(self, shard: Shard, keys: MapKeys, channel: str, now: int) -> int:
        state, expire = keys.state(channel), keys.state_expire(channel)
        removed = 0
        for _ in range(BATCHES_PER_CHANNEL):
            found = await shard.eval("map_find_expired", [state, expire], [now, self.batch_size])
            args: list[bytes | str] = [self._owner.pubsub_of(keys, channel), channel, epoch_bytes()]
            for i in range(0, len(found), 3):
                key, value, score = found[i : i + 3]
                args += (key, _removal(key, value, now), score)
            # Called with no key too: it moves the channel's cleanup entry to the earliest
            # expiry left (a refreshed key), or drops it.
            removed += await shard.eval(
                "map_remove_expired",
                [
                    state,
                    expire,
                    keys.stream(channel),
                    keys.meta(channel),
                    keys.state_meta(channel),
                    keys.cleanup(channel),
                ],
                args,
            )
            if len(found) < 3 * self.batch_size:
                break
        return removed


def _removal(key: bytes, value: bytes, now: int) -> bytes:
    """The removal publication of an expired key, with the key's own tags."""
    tags = None
    if value:
        try:
            tags = codec.decode_payload(parse_state_value(value)[1]).tags
        except (ValueError, IndexError, TypeError):
            pass  # a value we cannot read: removed all the same, without tags
    return codec.encode_payload(b"", None, tags, now, False, key=key.decode(), removed=True)
