"""Redis deployments the engine talks to: address parsing, clients, scripts, keys.

A *shard* is one independent deployment (standalone, Sentinel-managed or a
Cluster). Channels spread over shards by jump consistent hash. Inside a Cluster,
channels spread over partitions; every key of a channel and its PUB/SUB channel
carry the partition's hash tag, so one Lua script can XADD and SPUBLISH in one
slot (research/redis-engine.md §2.1, §3.4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import RedisConfig
from app.engines.redis.connect import Endpoint
from app.engines.redis.pipeline import AutoPipeline, Script
from app.engines.redis.resp import bulk
from app.engines.redis.tls import (
    TLSDial,
    TLSSettingError,
    connection_class,
    dial_from_config,
    sentinel_connection_class,
)

log = logging.getLogger("centrifugo.redis")

LUA_DIR = Path(__file__).resolve().parents[3] / "lua"
SCRIPTS = (
    "history_add",
    "history_get",
    "history_remove",
    "publish_idempotent",
    "presence_add",
    "presence_remove",
    "presence_get",
    "presence_stats",
)
CLUSTER_PARTITIONS = 16
POOL_SIZE = 128  # command connections per Redis node and process
REDIS_SLOTS = 16384


class RedisConfigError(ValueError):
    pass


class ShardUnavailable(RedisConnectionError):
    """The shard was never reached yet: its mode (cluster or not), and so its keys, are
    unknown. Callers treat it as any connection error (Centrifugo's internal error)."""


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


# --- addresses ---


@dataclass(slots=True)
class ShardSpec:
    kind: str = "standalone"  # standalone | sentinel | cluster
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    db: int = 0
    username: str = ""
    password: str = ""
    tls: TLSDial | None = None  # data connections (tls.py: `tls`, rediss://)
    sentinel_tls: TLSDial | None = None  # connections to the Sentinels
    client_name: str = ""  # CLIENT SETNAME on every data connection ("": none)
    sentinel_client_name: str = ""  # the same on connections to the Sentinels
    seeds: list[tuple[str, int]] = field(default_factory=list)  # cluster or sentinel nodes
    master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        host, port = text, ""
    try:
        return host.strip("[]") or "127.0.0.1", int(port) if port else default_port
    except ValueError as e:
        raise RedisConfigError(f"invalid redis address {text!r}") from e


def _go_bool(q: dict[str, str], key: str) -> bool:
    """A query option read as Go's strconv.ParseBool does (Centrifugo's address options)."""
    text = q.get(key)
    if text is None:
        return False
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise RedisConfigError(f"invalid {key} value: {text!r}")


def _dials(
    rcfg: RedisConfig, where: str, tls_on: bool = False, sentinel_tls_on: bool = False
) -> tuple[TLSDial | None, TLSDial | None]:
    """(data, Sentinel) dials of a section; the address may turn TLS on with defaults."""
    try:
        return (
            dial_from_config(rcfg.tls, f"{where}.tls", tls_on),
            dial_from_config(rcfg.sentinel_tls, f"{where}.sentinel_tls", sentinel_tls_on),
        )
    except TLSSettingError as e:
        raise RedisConfigError(str(e)) from None


def _client_name(value: str, key: str) -> str:
    """`value` if Redis would take it in CLIENT SETNAME. Redis refuses a name with spaces,
    newlines or any byte outside '!'..'~' (networking.c), so no connection could ever be
    made: start-up refuses with one line naming the key instead (Centrifugo fails creating
    its rueidis client, whose handshake sends the name, the same way)."""
    if any(not "!" <= ch <= "~" for ch in value):
        raise RedisConfigError(
            f"{key}: {value!r} is not a valid Redis client name "
            "(printable ASCII, no spaces or special characters)"
        )
    return value


def _names(rcfg: RedisConfig, where: str) -> tuple[str, str]:
    """The section's (client_name, sentinel_client_name), checked. Only the section's keys name
    connections: Centrifugo's address options know no client_name (redisshard.go
    optionsFromAddress). sentinel_client_name also applies to a redis+sentinel:// address,
    as sentinel_user, sentinel_password and sentinel_tls do here (Centrifugo reads it with
    sentinel_address only, and would drop it silently)."""
    return (
        _client_name(rcfg.client_name, f"{where}.client_name"),
        _client_name(rcfg.sentinel_client_name, f"{where}.sentinel_client_name"),
    )


def parse_address(address: str, rcfg: RedisConfig, where: str = "redis") -> ShardSpec:
    """Centrifugo's address forms: redis://, rediss://, unix://, redis+sentinel://,
    rediss+sentinel://, redis+cluster://, or a bare host:port. `where` names the section in
    error messages ("engine.redis")."""
    if "://" not in address:
        address = "redis://" + address
    u = urlsplit(address)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    extra = parse_qs(u.query).get("addr", [])
    name, sentinel_name = _names(rcfg, where)
    spec = ShardSpec(
        db=rcfg.db,
        username=rcfg.user,
        password=rcfg.password,
        client_name=name,
        sentinel_client_name=sentinel_name,
    )
    if u.username:
        spec.username = unquote(u.username)
    if u.password:
        spec.password = unquote(u.password)
    if "db" in q:
        spec.db = int(q["db"])
    scheme = u.scheme.lower()
    if scheme == "unix":
        # No TLS over a unix socket (Centrifugo dials it plain whatever `tls` says).
        spec.unix_path = u.path
        return spec
    if scheme not in ("redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+sentinel"):
        raise RedisConfigError(f"unsupported redis address scheme {u.scheme!r}")
    # rediss+sentinel:// is TLS to the Sentinels and to the master alike (Centrifugo).
    rediss = scheme.startswith("rediss")
    spec.tls, spec.sentinel_tls = _dials(
        rcfg,
        where,
        tls_on=rediss or _go_bool(q, "tls_enabled"),
        sentinel_tls_on=rediss or _go_bool(q, "sentinel_tls_enabled"),
    )
    default_port = 26379 if "sentinel" in scheme else 6379
    spec.host, spec.port = _host_port(u.netloc.rpartition("@")[2] or "127.0.0.1", default_port)
    if u.path and u.path.strip("/").isdigit():
        spec.db = int(u.path.strip("/"))
    if "sentinel" in scheme:
        spec.kind = "sentinel"
        spec.seeds = [(spec.host, spec.port)] + [_host_port(a, 26379) for a in extra]
        spec.master_name = q.get("sentinel_master_name", rcfg.sentinel_master_name)
        spec.sentinel_username = q.get("sentinel_user", rcfg.sentinel_user)
        spec.sentinel_password = q.get("sentinel_password", rcfg.sentinel_password)
        if not spec.master_name:
            raise RedisConfigError("redis sentinel address needs sentinel_master_name")
    elif scheme == "redis+cluster":
        spec.kind = "cluster"
        spec.seeds = [(spec.host, spec.port)] + [_host_port(a, 6379) for a in extra]
    return spec


def specs_from_config(rcfg: RedisConfig, where: str = "redis") -> list[ShardSpec]:
    """The shards of one Redis section; RedisConfigError (one line naming the key, the
    section being `where`) for an address, a TLS setting or a client name that cannot be used."""
    name, sentinel_name = _names(rcfg, where)
    if rcfg.cluster_address:
        seeds = [_host_port(a.split("://")[-1], 6379) for a in rcfg.cluster_address]
        tls, _ = _dials(rcfg, where)
        return [
            ShardSpec(
                kind="cluster",
                host=seeds[0][0],
                port=seeds[0][1],
                seeds=seeds,
                username=rcfg.user,
                password=rcfg.password,
                tls=tls,
                client_name=name,
            )
        ]
    if rcfg.sentinel_address:
        seeds = [_host_port(a.split("://")[-1], 26379) for a in rcfg.sentinel_address]
        tls, sentinel_tls = _dials(rcfg, where)
        return [
            ShardSpec(
                kind="sentinel",
                seeds=seeds,
                master_name=rcfg.sentinel_master_name,
                sentinel_username=rcfg.sentinel_user,
                sentinel_password=rcfg.sentinel_password,
                username=rcfg.user,
                password=rcfg.password,
                db=rcfg.db,
                tls=tls,
                sentinel_tls=sentinel_tls,
                client_name=name,
                sentinel_client_name=sentinel_name,
            )
        ]
    return [parse_address(a, rcfg, where) for a in rcfg.address]


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

    def stream(self, channel: str) -> str:
        return f"{self.prefix}.stream.{self._t(channel)}{channel}"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}.stream.meta.{self._t(channel)}{channel}"

    def result(self, channel: str, key: str) -> str:
        return f"{self.prefix}.result.{self._t(channel)}{channel}.{key}"

    def client_channel(self, channel: str) -> str:
        return f"{self.prefix}.client.{self._t(channel)}{channel}"

    def channel_from_pubsub(self, name: bytes) -> str:
        """Inverse of client_channel."""
        rest = name.decode()[len(self.prefix) + 8 :]  # strip "<prefix>.client."
        if self.cluster:
            rest = rest[rest.index("}.") + 2 :]
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


# --- one deployment ---


def _bounded(
    execute: Callable[..., Awaitable[Any]],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    """Queue commands beyond POOL_SIZE in flight instead of failing them.

    Without auto-pipelining every in-flight command holds a connection, and
    redis-py 8 fails the command that would exceed a pool's max_connections
    ("Too many connections"); a larger pool instead opens hundreds of sockets at
    once in a burst, and their connects time out. Every command goes through
    execute_command (scripts and PUBLISH included), so waiting here covers all.
    """
    slots = asyncio.Semaphore(POOL_SIZE)

    async def execute_command(*args: Any, **options: Any) -> Any:
        async with slots:
            return await execute(*args, **options)

    return execute_command


def _dial_cluster(client: RedisCluster, dial: TLSDial) -> None:
    """TLS on every node connection of `client`: the seeds it was given and the nodes it
    learns from the slot map later (NodesManager builds them from `connection_kwargs`)."""
    cls = connection_class(dial)
    client.connection_kwargs["connection_class"] = cls
    for node in client.startup_nodes:
        node.connection_class = cls


async def _or_close(client: Redis | RedisCluster, probe: Awaitable[Any]) -> Any:
    """The first call on a new client; the client is closed when it fails (a failed first
    contact leaves nothing open behind it)."""
    try:
        return await probe
    except BaseException:
        await client.aclose()
        raise


class Shard:
    """Command client, scripts and PUB/SUB endpoints of one Redis deployment.

    Scripts and SPUBLISH go through implicit pipelines (`eval`, `spublish`): one per
    standalone/Sentinel deployment, one per master in a Cluster (chosen by the slot of the
    command's first key, falling back to redis-py's cluster client on redirections and
    connection errors). Everything else uses the redis-py `client`.
    """

    def __init__(self, spec: ShardSpec, rcfg: RedisConfig, index: int) -> None:
        """No I/O: the deployment is first contacted by `connect` (a worker must boot and
        serve while Redis is down)."""
        self.spec = spec
        self.index = index
        self._connect_timeout = float(rcfg.connect_timeout)
        self._io_timeout = float(rcfg.io_timeout)
        self.client: Redis | RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self.scripts: dict[str, Script] = {}
        self.keys: Keys | None = None
        self.prefix = rcfg.prefix
        self._pipe: AutoPipeline | None = None  # standalone / Sentinel
        self._node_pipes: dict[str, AutoPipeline] = {}  # cluster: per master node name
        self._connecting = asyncio.Lock()  # one first contact at a time (broker, presence)

    @property
    def cluster(self) -> bool:
        return self.spec.kind == "cluster"

    @property
    def where(self) -> str:
        """The address an operator configured, for log lines."""
        spec = self.spec
        if spec.unix_path:
            return f"{spec.kind} at {spec.unix_path}"
        hosts = spec.seeds or [(spec.host, spec.port)]
        return f"{spec.kind} at " + ",".join(f"{h}:{p}" for h, p in hosts)

    def require_keys(self) -> Keys:
        """The key builder, known once the shard was reached; ShardUnavailable before."""
        keys = self.keys
        if keys is None:
            raise ShardUnavailable(f"redis {self.where} not reached yet")
        return keys

    def _common(self) -> dict[str, Any]:
        """Keyword arguments of every redis-py client this shard makes."""
        common: dict[str, Any] = {
            "username": self.spec.username or None,
            "password": self.spec.password or None,
            # CLIENT SETNAME on each connection redis-py opens (standalone, Cluster nodes,
            # Sentinel-managed masters), as rueidis does with ClientName.
            "client_name": self.spec.client_name or None,
            "socket_connect_timeout": self._connect_timeout,
            "socket_timeout": self._io_timeout,
            "decode_responses": False,
            # See _bounded: never more commands in flight than connections.
            "max_connections": POOL_SIZE,
        }
        if not self.cluster:
            # No client retries (as centrifuge): redis-py's default 10 retries with
            # backoff turn a dead or frozen Redis into a multi-second hang instead of an
            # error within io_timeout. The cluster client keeps its retries: they
            # re-read the slot map after a failover.
            # One immediate retry on a connection error: after a Redis restart every
            # pooled connection fails once ("closed by server"). Refused connects and
            # timeouts still fail fast.
            common["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        return common

    async def connect(self) -> None:
        """First contact: learn the deployment's mode (a plain address may point at a
        Cluster node: INFO tells), then set up clients, keys and pipelines. Raises what the
        attempt raised (redis-py errors; RedisClusterException is not one) and leaves the
        shard as before, so it may be called again; a no-op once it succeeded. Callers that
        arrive while an attempt is under way share its outcome instead of queueing their own
        (a frozen Redis would otherwise hold each for a full timeout in turn)."""
        if self.keys is not None:
            return
        if self._connecting.locked():
            async with self._connecting:
                pass
            self.require_keys()
            return
        async with self._connecting:
            if self.keys is not None:
                return
            try:
                client = await self._first_contact()
            except BaseException:
                await self._close_sentinels()
                raise
            self._set_up(client)

    async def _first_contact(self) -> Redis | RedisCluster:
        spec = self.spec
        if spec.kind == "standalone":
            kwargs = self._common()
            if spec.unix_path:
                client: Redis | RedisCluster = Redis(
                    unix_socket_path=spec.unix_path, db=spec.db, **kwargs
                )
            else:
                client = Redis(host=spec.host, port=spec.port, db=spec.db, **kwargs)
                if spec.tls is not None:
                    # redis-py takes the class of its connections, not a dial.
                    client.connection_pool.connection_class = connection_class(spec.tls)
            info = await _or_close(client, client.info("cluster"))
            if info.get("cluster_enabled") not in (1, "1"):
                return client
            # A plain address that points at a cluster node: switch to cluster mode.
            await client.aclose()
            spec.kind = "cluster"
            spec.seeds = [(spec.host, spec.port)]
        if spec.kind == "cluster":
            client = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in spec.seeds], **self._common()
            )
            if spec.tls is not None:
                _dial_cluster(client, spec.tls)
            await _or_close(client, client.initialize())
        elif spec.kind == "sentinel":
            common = self._common()
            if spec.tls is not None:
                common["connection_class"] = sentinel_connection_class(spec.tls)
            self._sentinel = Sentinel(
                spec.seeds,
                sentinel_kwargs={
                    "username": spec.sentinel_username or None,
                    "password": spec.sentinel_password or None,
                    "client_name": spec.sentinel_client_name or None,
                    "socket_connect_timeout": self._connect_timeout,
                    "socket_timeout": self._io_timeout,
                },
                db=spec.db,
                **common,
            )
            if spec.sentinel_tls is not None:
                sentinel_class = connection_class(spec.sentinel_tls)
                for sentinel in self._sentinel.sentinels:
                    sentinel.connection_pool.connection_class = sentinel_class
            client = self._sentinel.master_for(spec.master_name)
            await _or_close(client, client.ping())
        return client

    def _set_up(self, client: Redis | RedisCluster) -> None:
        spec = self.spec
        # Wrapping this instance's bound method on purpose (see _bounded); mypy refuses any
        # assignment to a method.
        client.execute_command = _bounded(client.execute_command)  # type: ignore[method-assign]
        self.client = client
        self.keys = Keys(self.prefix, self.cluster)
        for name in SCRIPTS:
            self.scripts[name] = Script(name, (LUA_DIR / f"{name}.lua").read_text())
        if not self.cluster:
            self._pipe = AutoPipeline(
                self.endpoint,
                db=spec.db,
                connect_timeout=self._connect_timeout,
                io_timeout=self._io_timeout,
                name=f"shard {self.index}",
                scripts=list(self.scripts.values()),
            )

    # --- pipelined commands ---

    def eval(
        self, name: str, keys: list[str], args: list[Any], packed: bytes | None = None
    ) -> Awaitable[Any]:
        """EVALSHA of script `name`; queued before this returns (issue order is kept).
        `packed`: keys and args already RESP-encoded (AutoPipeline.evalsha)."""
        pipe = self._pipe if self._pipe is not None else self._node_pipe(keys[0])
        if pipe is None:
            script = self.scripts[name]
            return self._cluster_fallback(("EVAL", script.body, len(keys), *keys, *args))
        return pipe.evalsha(self.scripts[name], keys, args, packed)

    def spublish(self, channel: str, payload: bytes) -> Awaitable[Any]:
        pipe = self._pipe if self._pipe is not None else self._node_pipe(channel)
        if pipe is None:
            return self._cluster_fallback(("SPUBLISH", channel, payload))
        return pipe.execute("SPUBLISH", channel, payload)

    def _node_pipe(self, key: str) -> AutoPipeline | None:
        """The pipeline to the master of `key`'s slot, per redis-py's current slot map."""
        assert isinstance(self.client, RedisCluster)
        owners = self.client.nodes_manager.slots_cache.get(key_slot(key.encode()))
        if not owners:
            return None  # slot map being rebuilt: let redis-py route it
        node = owners[0]
        pipe = self._node_pipes.get(node.name)
        if pipe is None:
            spec = self.spec
            ep = Endpoint(
                host=node.host,
                port=int(node.port),  # an int, typed str | int by redis-py
                username=spec.username,
                password=spec.password,
                tls=spec.tls,
                client_name=spec.client_name,
            )

            async def resolve() -> Endpoint:
                return ep

            pipe = AutoPipeline(
                resolve,
                connect_timeout=self._connect_timeout,
                io_timeout=self._io_timeout,
                name=f"shard {self.index} node {node.name}",
                fallback=self._cluster_fallback,
                scripts=list(self.scripts.values()),
            )
            self._node_pipes[node.name] = pipe
        return pipe

    async def _cluster_fallback(self, args: tuple[Any, ...]) -> Any:
        # redis-py's cluster client follows MOVED/ASK and re-reads the slot map itself.
        assert isinstance(self.client, RedisCluster)  # the fallback of cluster pipelines
        return await self.client.execute_command(*args)

    async def close(self) -> None:
        for pipe in [self._pipe, *self._node_pipes.values()]:
            if pipe is not None:
                await pipe.close()
        self._pipe = None
        self._node_pipes.clear()
        if self.client is not None:
            await self.client.aclose()
        await self._close_sentinels()

    async def _close_sentinels(self) -> None:
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                await s.aclose()
            self._sentinel = None

    async def endpoint(self, partition: int = 0) -> Endpoint:
        """Where the PUB/SUB connection for `partition` must go right now."""
        spec = self.spec
        base = Endpoint(
            username=spec.username,
            password=spec.password,
            tls=spec.tls,
            client_name=spec.client_name,
        )
        if spec.kind == "standalone":
            base.host, base.port, base.unix_path = spec.host, spec.port, spec.unix_path
        elif spec.kind == "sentinel":
            assert self._sentinel is not None
            base.host, base.port = await self._sentinel.discover_master(spec.master_name)
        else:
            assert isinstance(self.client, RedisCluster) and self.keys is not None
            # Re-read the slot map: this is called after a reconnect, often a failover.
            try:
                await self.client.nodes_manager.initialize()
            except Exception as e:  # keep the old map; the connect attempt will tell
                log.warning("cluster slots refresh failed: %s", e)
            tag = self.keys.partition_tags[partition]
            node = self.client.get_node_from_key("{" + tag + "}")
            if node is None:  # slot map being rebuilt: the connect attempt retries
                raise ShardUnavailable(f"redis {self.where}: no node for partition {partition}")
            base.host, base.port = node.host, int(node.port)
        return base

    async def control_endpoint(self) -> Endpoint:
        # Classic PUBLISH reaches every node of a cluster; any node will do.
        return await self.endpoint(0)
