"""Where a channel lives in Redis: its shard, its Cluster partition, its key names.

Channels spread over shards by jump consistent hash. Inside a Cluster, channels spread
over partitions; every key of a channel and its PUB/SUB channel carry the partition's
hash tag, so one Lua script can XADD and SPUBLISH in one slot (research/redis-engine.md
§2.1, §3.4). Pure: no I/O, no redis-py client.
"""

from __future__ import annotations

from redis.crc import key_slot

from app.engines.redis.resp import bulk

CLUSTER_PARTITIONS = 16
REDIS_SLOTS = 16384


# --- hashing ---


def fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach): adding a bucket moves ~1/n of keys."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def balanced_partition_tags(n: int) -> list[str]:
    """One short hash tag per partition whose slot falls in the partition's own
    1/n of the slot space, so partitions spread evenly over cluster nodes (the
    naive tags "0".."n-1" cluster badly under CRC16)."""
    tags = []
    for i in range(n):
        lo, hi = i * REDIS_SLOTS // n, (i + 1) * REDIS_SLOTS // n
        j = 0
        while True:
            tag = f"{i}.{j}"
            if lo <= key_slot(tag.encode()) < hi:
                tags.append(tag)
                break
            j += 1
    return tags


# --- keys ---


class Keys:
    """Key and channel names; operators recognise Centrifugo's layout."""

    def __init__(self, prefix: str, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.partition_tags = balanced_partition_tags(CLUSTER_PARTITIONS) if cluster else [""]
        p = prefix
        self.control = f"{p}.control".encode()
        self._publish_keys: dict[str, tuple[str, str, str, str]] = {}
        self._history_resp: dict[str, tuple[tuple[bytes, bytes], bytes]] = {}
        self._spublish_heads: dict[str, bytes] = {}
        # PUB/SUB channel name as Redis sends it -> channel (channel_from_pubsub).
        self.channels_by_pubsub: dict[bytes, str] = {}

    def partition(self, channel: str) -> int:
        if not self.cluster:
            return 0
        return jump_hash(fnv64a(channel.encode()), CLUSTER_PARTITIONS)

    def _t(self, channel: str) -> str:
        """The `{tag}.` that keeps a channel's keys and PUB/SUB channel in one slot."""
        if not self.cluster:
            return ""
        return "{" + self.partition_tags[self.partition(channel)] + "}."

    def publish_keys(self, channel: str) -> tuple[str, str, str, str]:
        """(stream, meta, PUB/SUB channel, result key prefix) of `channel`, cached: every
        publish needs them, and in a cluster each costs a partition hash."""
        names = self._publish_keys.get(channel)
        if names is None:
            names = (
                self.stream(channel),
                self.meta(channel),
                self.client_channel(channel),
                self.result(channel, ""),
            )
            if len(self._publish_keys) >= 16384:
                self._publish_keys.clear()
            self._publish_keys[channel] = names
        return names

    def history_resp(self, channel: str) -> tuple[tuple[bytes, bytes], bytes]:
        """`channel`'s history_add keys as RESP bulk strings, cached like publish_keys:
        ((stream + meta, stream + meta + result key without idempotency key), PUB/SUB
        channel). A batch's history_add call is built from them."""
        resp = self._history_resp.get(channel)
        if resp is None:
            stream, meta, pubsub_channel, result_prefix = self.publish_keys(channel)
            head = bulk(stream.encode()) + bulk(meta.encode())
            resp = ((head, head + bulk(result_prefix.encode())), bulk(pubsub_channel.encode()))
            if len(self._history_resp) >= 16384:
                self._history_resp.clear()
            self._history_resp[channel] = resp
        return resp

    def spublish_head(self, channel: str) -> bytes:
        """An SPUBLISH to `channel`'s PUB/SUB channel as RESP, up to its payload argument
        (the array header, the command name and the channel name), cached like
        publish_keys: the payload's bulk string completes it."""
        head = self._spublish_heads.get(channel)
        if head is None:
            name = self.publish_keys(channel)[2].encode()
            head = b"*3\r\n$8\r\nSPUBLISH\r\n" + bulk(name)
            if len(self._spublish_heads) >= 16384:
                self._spublish_heads.clear()
            self._spublish_heads[channel] = head
        return head

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{self._t(channel)}{channel}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.stream.meta.{self._t(channel)}{channel}"

    def result(self, channel: str, key: str) -> str:
        return f"{self.prefix}.result.{self._t(channel)}{channel}.{key}"

    def client_channel(self, channel: str) -> str:
        return f"{self.prefix}.client.{self._t(channel)}{channel}"

    def channel_from_pubsub(self, name: bytes) -> str:
        """Inverse of client_channel, cached in `channels_by_pubsub` (bounded like
        publish_keys): every PUB/SUB message names its channel, and the reader looks the
        name up there first (app/engines/redis/broker.py), saving the decode and slices
        (measured with the reader's other shortcuts: app/engines/redis/pubsub.py)."""
        rest = name.decode()[len(self.prefix) + 8 :]  # strip "<prefix>.client."
        if self.cluster:
            rest = rest[rest.index("}.") + 2 :]
        cache = self.channels_by_pubsub
        if len(cache) >= 16384:
            cache.clear()
        cache[name] = rest
        return rest

    def presence_data(self, channel: str) -> str:
        tag = "{" + channel + "}" if self.cluster else channel
        return f"{self.prefix}.presence.data.{tag}"

    def presence_expire(self, channel: str) -> str:
        tag = "{" + channel + "}" if self.cluster else channel
        return f"{self.prefix}.presence.expire.{tag}"

    def presence_user_expire(self, channel: str) -> str:
        tag = "{" + channel + "}" if self.cluster else channel
        return f"{self.prefix}.presence.user.expire.{tag}"

    def presence_user_clients(self, channel: str) -> str:
        tag = "{" + channel + "}" if self.cluster else channel
        return f"{self.prefix}.presence.user.clients.{tag}"

    def node_channel(self, node_id: str) -> bytes:
        return f"{self.prefix}.node.{node_id}".encode()
