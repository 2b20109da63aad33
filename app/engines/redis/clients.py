"""The redis-py clients of one deployment: standalone, Sentinel-managed or Cluster.

`first_contact` makes the client a shard's other commands go through (and, for a Sentinel
deployment, the Sentinel that finds the master), learning the deployment's mode on the
way: a plain address may point at a Cluster node. The shard's implicit pipelines and
PUB/SUB readers open their own connections (connect.py); these clients make their own
handshake from the same settings (username, password, client_name, db).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.engines.redis.address import ShardSpec
from app.engines.redis.tls import TLSDial, connection_class, sentinel_connection_class

POOL_SIZE = 128  # command connections per Redis node and process


@dataclass(slots=True)
class Contact:
    """A deployment reached: its command client (commands bounded, see _bounded), and the
    Sentinel that found the master (None unless the deployment is Sentinel-managed)."""

    client: Redis | RedisCluster
    sentinel: Sentinel | None = None


def client_kwargs(spec: ShardSpec, connect_timeout: float, io_timeout: float) -> dict[str, Any]:
    """Keyword arguments of every redis-py client a shard makes."""
    common: dict[str, Any] = {
        "username": spec.username or None,
        "password": spec.password or None,
        # CLIENT SETNAME on each connection redis-py opens (standalone, Cluster nodes,
        # Sentinel-managed masters), as rueidis does with ClientName.
        "client_name": spec.client_name or None,
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": io_timeout,
        "decode_responses": False,
        # See _bounded: never more commands in flight than connections.
        "max_connections": POOL_SIZE,
    }
    if spec.kind != "cluster":
        # No client retries (as centrifuge): redis-py's default 10 retries with
        # backoff turn a dead or frozen Redis into a multi-second hang instead of an
        # error within io_timeout. The cluster client keeps its retries: they
        # re-read the slot map after a failover.
        # One immediate retry on a connection error: after a Redis restart every
        # pooled connection fails once ("closed by server"). Refused connects and
        # timeouts still fail fast.
        common["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    return common


async def first_contact(spec: ShardSpec, connect_timeout: float, io_timeout: float) -> Contact:
    """The deployment's client after its first successful call (INFO, the cluster's slot
    map, or a PING to the Sentinel's master). A plain address that points at a Cluster node
    turns `spec` into a cluster spec. Raises what the attempt raised, with nothing left
    open (the clients and Sentinel connections it made are closed)."""
    if spec.kind == "standalone":
        kwargs = client_kwargs(spec, connect_timeout, io_timeout)
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
            return _bound(client)
        # A plain address that points at a cluster node: switch to cluster mode.
        await client.aclose()
        spec.kind = "cluster"
        spec.seeds = [(spec.host, spec.port)]
    sentinel: Sentinel | None = None
    if spec.kind == "cluster":
        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in spec.seeds],
            **client_kwargs(spec, connect_timeout, io_timeout),
        )
        if spec.tls is not None:
            _dial_cluster(client, spec.tls)
        await _or_close(client, client.initialize())
    elif spec.kind == "sentinel":
        common = client_kwargs(spec, connect_timeout, io_timeout)
        if spec.tls is not None:
            common["connection_class"] = sentinel_connection_class(spec.tls)
        sentinel = Sentinel(
            spec.seeds,
            sentinel_kwargs={
                "username": spec.sentinel_username or None,
                "password": spec.sentinel_password or None,
                "client_name": spec.sentinel_client_name or None,
                "socket_connect_timeout": connect_timeout,
                "socket_timeout": io_timeout,
            },
            db=spec.db,
            **common,
        )
        if spec.sentinel_tls is not None:
            sentinel_class = connection_class(spec.sentinel_tls)
            for node in sentinel.sentinels:
                node.connection_pool.connection_class = sentinel_class
        client = sentinel.master_for(spec.master_name)
        try:
            await _or_close(client, client.ping())
        except BaseException:
            await close_sentinels(sentinel)
            raise
    return _bound(client, sentinel)


def _bound(client: Redis | RedisCluster, sentinel: Sentinel | None = None) -> Contact:
    """The contact made: `client`'s commands bounded (see _bounded)."""
    # Wrapping this instance's bound method on purpose (see _bounded); mypy refuses any
    # assignment to a method.
    client.execute_command = _bounded(client.execute_command)  # type: ignore[method-assign]
    return Contact(client, sentinel)


async def close_sentinels(sentinel: Sentinel) -> None:
    """Closes the connections to every Sentinel of `sentinel`."""
    for node in sentinel.sentinels:
        await node.aclose()


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
