"""Redis presence: a hash of client id -> info plus a zset of per-entry expiry.

Entries of a crashed node vanish after `presence_ttl` because nobody refreshes
them; the whole-key EXPIRE removes channels nobody is in.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from app.engines.redis import codec
from app.engines.redis.broker import RedisBroker
from app.errors import ERROR_INTERNAL, ClientError
from app.models import ClientInfo, PresenceStats
from app.presence import PresenceManager

log = logging.getLogger("centrifugo.redis.presence")


class RedisPresenceManager:
    """PresenceManager over the broker's shards (one Lua script per operation)."""

    def __init__(self, broker: RedisBroker, presence_ttl: float = 60.0) -> None:
        # Shares the broker's shards: a channel's presence lives beside its stream.
        self._broker = broker
        self._ttl = presence_ttl

    async def _call(self, script: str, channel: str, args: list[Any]) -> Any:
        """The script's reply (the shape its lua/ header names)."""
        shard = self._broker.shard_for(channel)
        try:
            if shard.keys is None:
                # A presence-only engine (nobody runs its broker), or Redis not reached yet:
                # first contact here, failing like any command while Redis is away.
                await shard.connect()
            keys = shard.require_keys()
            return await shard.eval(
                script,
                [
                    keys.presence_data(channel),
                    keys.presence_expire(channel),
                    keys.presence_user_expire(channel),
                    keys.presence_user_clients(channel),
                ],
                args,
            )
        except (RedisError, RedisClusterException, OSError) as e:
            log.warning("presence %s on %r failed: %s", script, channel, e)
            raise ClientError(ERROR_INTERNAL) from None

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._call("presence_get", channel, [int(time.time())])
        out = {}
        it = iter(flat)
        for client_id, raw in zip(it, it, strict=True):
            out[client_id.decode()] = codec.decode_info(raw)
        return out

    async def presence_stats(self, channel: str) -> PresenceStats:
        clients, users = await self._call("presence_stats", channel, [int(time.time())])
        return PresenceStats(int(clients), int(users))

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        ttl = int(self._ttl)
        await self._call(
            "presence_add",
            channel,
            [ttl, int(time.time()) + ttl, client_id, codec.encode_info(info), info.user],
        )

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None:
        await self._call("presence_remove", channel, [client_id, user])

    async def close(self) -> None:
        pass


# Conformance, checked by mypy (centrifuge's `var _ PresenceManager = ...`).
_presence: type[PresenceManager] = RedisPresenceManager
