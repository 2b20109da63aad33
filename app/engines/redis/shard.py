"""One Redis deployment the engine talks to, and which pipeline each of its commands takes.

A *shard* is one independent deployment (standalone, Sentinel-managed or a
Cluster). What it is comes from address.py (`ShardSpec`), its redis-py clients from
clients.py, where a channel's keys live from keys.py, its Lua scripts from scripts.py.
`Shard` ties them together once the deployment is first reached, and routes scripts and
SPUBLISH through implicit pipelines (pipeline.py), everything else through redis-py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import RedisConfig
from app.engines.redis.address import ShardSpec
from app.engines.redis.clients import Contact, close_sentinels, first_contact
from app.engines.redis.connect import Endpoint
from app.engines.redis.keys import Keys
from app.engines.redis.pipeline import AutoPipeline, Script
from app.engines.redis.scripts import load_scripts

log = logging.getLogger("centrifugo.redis")


class ShardUnavailable(RedisConnectionError):
    """The shard was never reached yet: its mode (cluster or not), and so its keys, are
    unknown. Callers treat it as any connection error (Centrifugo's internal error)."""


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
            # A failed attempt leaves nothing open (first_contact closes what it made).
            self._set_up(await first_contact(self.spec, self._connect_timeout, self._io_timeout))

    def _set_up(self, contact: Contact) -> None:
        spec = self.spec
        self.client = contact.client
        self._sentinel = contact.sentinel
        self.keys = Keys(self.prefix, self.cluster)
        self.scripts.update(load_scripts())
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

    def eval_packed(self, name: str, nkeys: int, nargs: int, packed: bytes) -> Awaitable[Any]:
        """EVALSHA of script `name` whose `nkeys` keys and `nargs` args are given only as
        RESP bulk strings (`packed`); only where `single_pipeline`."""
        assert self._pipe is not None
        return self._pipe.evalsha_packed(self.scripts[name], nkeys, nargs, packed)

    @property
    def single_pipeline(self) -> bool:
        """Whether one pipeline serves every key, so `spublish_group` and `eval_packed` may
        be used (not a Cluster, whose commands each go to their slot's master and are
        handed over to redis-py, with their plain arguments, on a redirection)."""
        return self._pipe is not None

    def spublish_group(self, parts: list[bytes]) -> asyncio.Future[list[Any]]:
        """SPUBLISH commands already packed, as one group (AutoPipeline.execute_many)."""
        assert self._pipe is not None
        return self._pipe.execute_many(parts)

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
        if self._sentinel is not None:
            await close_sentinels(self._sentinel)
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
