"""The map broker's Redis layout: a channel's key names, its PUB/SUB channel, the shape of
a stored state value (pure, no I/O).

Centrifuge's RedisMapBroker layout (map_broker_redis.go buildKey, resultCacheKey,
messageChannelID, cleanupRegistrationKeyForChannel), so an operator finds what Centrifugo
writes: `<prefix>:stream:<ch>`, `<prefix>:meta:<ch>`, `<prefix>:state:<ch>`,
`<prefix>:state:expire:<ch>`, `<prefix>:state:meta:<ch>`, `<prefix>.result.<ch>.<key>`,
`<prefix>:cleanup:channels`, PUB/SUB `<prefix>.client.<ch>`. In a Cluster each name of a
channel carries its partition's hash tag (`{tag}.` before the channel; the cleanup zset one
per partition, `...:channels:{tag}`) so one script touches them all in one slot. The tags
and the partition of a channel are the stream engine's (keys.py), as the PUB/SUB endpoints
of a shard (shard.py `endpoint`) are found by them.

A state value is `<offset>:<epoch>:<payload>` (centrifuge's parseStateValue shape), the
payload codec.py's; the scripts write it, `parse_state_value` reads it.
"""

from __future__ import annotations

from app.engines.redis.keys import Keys


def parse_state_value(value: bytes) -> tuple[int, bytes]:
    """(offset, payload) of a stored `<offset>:<epoch>:<payload>`."""
    c1 = value.index(b":")
    c2 = value.index(b":", c1 + 1)
    return int(value[:c1]), value[c2 + 1 :]


class MapKeys:
    """Key names of the map broker (its own `prefix`) on one shard, once reached (`keys`
    tells whether it is a Cluster and a channel's partition)."""

    __slots__ = ("prefix", "keys", "cleanup_keys", "_client_prefix")

    def __init__(self, prefix: str, keys: Keys) -> None:
        self.prefix = prefix
        self.keys = keys
        self._client_prefix = f"{prefix}.client."
        # The expiry's work lists: one per partition in a Cluster, in partition order.
        if keys.cluster:
            self.cleanup_keys = [
                f"{prefix}:cleanup:channels:{{{tag}}}" for tag in keys.partition_tags
            ]
        else:
            self.cleanup_keys = [f"{prefix}:cleanup:channels"]

    def _t(self, channel: str) -> str:
        if not self.keys.cluster:
            return ""
        return "{" + self.keys.partition_tags[self.keys.partition(channel)] + "}."

    def partition(self, channel: str) -> int:
        return self.keys.partition(channel)

    def _key(self, infix: str, channel: str) -> str:
        return f"{self.prefix}{infix}{self._t(channel)}{channel}"

    def stream(self, channel: str) -> str:
        return self._key(":stream:", channel)

    def meta(self, channel: str) -> str:
        return self._key(":meta:", channel)

    def state(self, channel: str) -> str:
        return self._key(":state:", channel)

    def state_expire(self, channel: str) -> str:
        return self._key(":state:expire:", channel)

    def state_meta(self, channel: str) -> str:
        return self._key(":state:meta:", channel)

    def state_order(self, channel: str) -> str:
        """Centrifuge's ordered state (score order): never written here; cleared."""
        return self._key(":state:order:", channel)

    def cleanup(self, channel: str) -> str:
        return self.cleanup_keys[self.partition(channel)]

    def result(self, channel: str, idempotency_key: str) -> str:
        return f"{self.prefix}.result.{self._t(channel)}{channel}.{idempotency_key}"

    def client_channel(self, channel: str) -> str:
        return f"{self._client_prefix}{self._t(channel)}{channel}"

    def channel_from_pubsub(self, name: bytes) -> str:
        """Inverse of client_channel."""
        rest = name.decode()[len(self._client_prefix) :]
        if self.keys.cluster:
            rest = rest[rest.index("}.") + 2 :]
        return rest

    def write_keys(self, channel: str, idempotency_key: str) -> list[str]:
        """KEYS of lua/map_publish.lua and lua/map_remove.lua, in their order. Without an
        idempotency key the result slot holds the channel's result prefix (same slot in a
        Cluster; the script leaves it alone)."""
        return [
            self.stream(channel),
            self.meta(channel),
            self.result(channel, idempotency_key),
            self.state(channel),
            self.state_expire(channel),
            self.state_meta(channel),
            self.cleanup(channel),
        ]
