"""Real Redis Cluster and Sentinel deployments for tests, as redis-server processes.

Each process is started by tests/support/redis_server.py's `start_redis` (a free 127.0.0.1
port, no persistence, its files in the deployment's temporary directory) and stopped (SIGTERM,
then SIGKILL) with its deployment; `redis-cli --cluster create` and the sentinel binary come
from tests/support/redis_binary.py. Waiting is always for a state Redis reports (PING answered,
`cluster_state:ok`, a replica's link up, the sentinel seeing the replica, a new master
address), polled with a deadline.

- `start_cluster(workdir)`: 3 masters, no replicas (`ClusterTopology`).
- `start_sentinel(workdir)`: a master, one replica and one sentinel monitoring them as
  `mymaster` (`SentinelTopology`).

The fixtures `redis_cluster`, `redis_sentinel` and `fresh_redis_sentinel` (tests/conftest.py)
are built on them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.crc import key_slot

from . import redis_binary
from .ports import free_port
from .redis_server import START_TIMEOUT, RedisProc, start_redis

MASTER_NAME = "mymaster"
T = TypeVar("T")


class TopologyError(RuntimeError):
    pass


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = START_TIMEOUT, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns something other than None/False; return that value.

    Redis state changes (cluster ok, replica linked, failover done) have no push notification
    we can subscribe to from a test, so they are polled; the deadline makes a hang a failure.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except (redis.RedisError, OSError) as e:
            last_error = e
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout}s waiting for {what} ({last_error})")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Cluster


@dataclass
class ClusterTopology:
    nodes: list[RedisProc]
    workdir: Path

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def address(self) -> str:
        """`redis+cluster://` with the first node and the second as an extra seed."""
        p = self.ports
        return f"redis+cluster://127.0.0.1:{p[0]}?addr=127.0.0.1:{p[1]}"

    @property
    def plain_address(self) -> str:
        """A plain `redis://` address of one node: the engine must detect the cluster itself."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def slot_owners(self) -> dict[int, int]:
        """Slot -> port of the master serving it (from CLUSTER SLOTS)."""
        with self.nodes[0].client() as c:
            ranges = c.execute_command("CLUSTER SLOTS")
        owners: dict[int, int] = {}
        for entry in ranges:
            lo, hi, master = int(entry[0]), int(entry[1]), entry[2]
            for slot in range(lo, hi + 1):
                owners[slot] = int(master[1])
        return owners

    def owner_of(self, key: str | bytes) -> int:
        """Port of the master that serves `key`'s slot."""
        raw = key.encode() if isinstance(key, str) else key
        return self.slot_owners()[key_slot(raw)]

    def node(self, port: int) -> RedisProc:
        return next(n for n in self.nodes if n.port == port)

    def local_keys(self, pattern: str) -> dict[int, set[bytes]]:
        """Port -> keys matching `pattern` stored on that very node (SCAN is node-local)."""
        out: dict[int, set[bytes]] = {}
        for n in self.nodes:
            with n.client() as c:
                out[n.port] = set(c.scan_iter(match=pattern, count=1000))
        return out

    def local_shard_channels(self, pattern: str) -> dict[int, set[bytes]]:
        """Port -> sharded PUB/SUB channels with a subscriber on that node."""
        out: dict[int, set[bytes]] = {}
        for n in self.nodes:
            with n.client() as c:
                out[n.port] = set(c.execute_command("PUBSUB SHARDCHANNELS", pattern))
        return out

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def start_cluster(workdir: Path, masters: int = 3) -> ClusterTopology:
    """`masters` cluster-enabled redis-servers joined by `redis-cli --cluster create`."""
    nodes: list[RedisProc] = []
    try:
        for i in range(masters):
            bus = free_port()
            nodes.append(
                start_redis(
                    workdir,
                    f"cluster{i}",
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes-{port}.conf",
                        # Explicit bus port: port+10000 may be out of range or taken.
                        "--cluster-port",
                        str(bus),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            )
        done = subprocess.run(
            [
                redis_binary.cli_path(),
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            cwd=workdir,
            capture_output=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise TopologyError(
                f"redis-cli --cluster create failed: {done.stdout.decode()} {done.stderr.decode()}"
            )
        for n in nodes:
            with n.client() as c:

                def ok(c: redis.Redis = c) -> bool:
                    info = c.execute_command("CLUSTER INFO")  # parsed into a dict
                    return (
                        info["cluster_state"] == "ok"
                        and int(info["cluster_known_nodes"]) == masters
                    )

                wait_for(f"cluster_state:ok on {n.port}", ok, timeout=20)
        topo = ClusterTopology(nodes, workdir)
        # Every node must agree on the full slot map before tests route by it.
        wait_for("all slots assigned", lambda: len(topo.slot_owners()) == 16384)
        return topo
    except BaseException:
        for n in nodes:
            n.stop()
        raise


# --------------------------------------------------------------------------------------------
# Sentinel


@dataclass
class SentinelTopology:
    master: RedisProc
    replica: RedisProc
    sentinel: RedisProc
    workdir: Path
    master_name: str = MASTER_NAME
    extra: list[RedisProc] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}?sentinel_master_name={self.master_name}"

    def sentinel_client(self) -> redis.Redis:
        return self.sentinel.client(decode_responses=True)

    def master_port(self) -> int:
        """The master port the sentinel currently reports."""
        with self.sentinel_client() as s:
            _host, port = s.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def current_master(self) -> RedisProc:
        port = self.master_port()
        return next(p for p in (self.master, self.replica) if p.port == port)

    def kill_master_and_await_failover(self, timeout: float = 20.0) -> RedisProc:
        """Crash the master (SIGKILL) after the replica acknowledged every write, then wait
        until the sentinel has finished the failover to the replica and the replica agrees.
        Returns the new master."""
        old = self.current_master()
        new = self.replica if old is self.master else self.master
        with old.client() as c:
            acked = c.execute_command("WAIT", 1, 5000)
        if int(acked) < 1:
            raise TopologyError("replica did not acknowledge the master's writes")
        old.kill()

        def promoted() -> bool:
            # GET-MASTER-ADDR-BY-NAME names the promoted replica while the failover is still
            # in progress; clients that discover the master with SENTINEL MASTERS (redis-py)
            # see the old, o_down entry until the sentinel switches. The failover is over
            # when the sentinel's own record is the new master and flagged only "master".
            with self.sentinel_client() as s:
                record = s.sentinel_master(self.master_name)
            if int(record["port"]) != new.port or record["flags"] != "master":
                return False
            with new.client(decode_responses=True) as c:
                return c.info("replication")["role"] == "master"

        wait_for("sentinel failover to the replica", promoted, timeout=timeout, interval=0.05)
        return new

    def stop(self) -> None:
        for p in (self.sentinel, self.replica, self.master, *self.extra):
            p.stop()


def start_sentinel(workdir: Path, master_name: str = MASTER_NAME) -> SentinelTopology:
    """A master, a replica of it and one sentinel (quorum 1, down after 1 s)."""
    started: list[RedisProc] = []
    try:
        # No 5 s wait for more replicas before a diskless full sync.
        master = start_redis(workdir, "master", ["--repl-diskless-sync-delay", "0"])
        started.append(master)
        replica = start_redis(workdir, "replica", ["--replicaof", "127.0.0.1", str(master.port)])
        started.append(replica)
        with replica.client(decode_responses=True) as r:
            wait_for(
                "replica link up",
                lambda: r.info("replication").get("master_link_status") == "up",
            )
        with master.client(decode_responses=True) as m:
            wait_for("master sees replica", lambda: m.info("replication")["connected_slaves"] == 1)

        sentinel = start_redis(
            workdir,
            "sentinel",
            [
                f"sentinel monitor {master_name} 127.0.0.1 {master.port} 1",
                f"sentinel down-after-milliseconds {master_name} 1000",
                f"sentinel failover-timeout {master_name} 5000",
                f"sentinel parallel-syncs {master_name} 1",
            ],
            sentinel=True,
        )
        started.append(sentinel)

        topo = SentinelTopology(master, replica, sentinel, workdir, master_name)
        with topo.sentinel_client() as s:

            def knows_replica() -> bool:
                state = _pairs(s.execute_command("SENTINEL MASTER", master_name))
                if "s_down" in state["flags"] or int(state["num-slaves"]) != 1:
                    return False
                rep = _pairs(s.execute_command("SENTINEL REPLICAS", master_name)[0])
                # `master-link-status` appears once the sentinel has INFO from the replica
                # itself: only then may it promote it.
                return (
                    int(rep["port"]) == replica.port
                    and rep["flags"] == "slave"
                    and rep.get("master-link-status") == "ok"
                )

            wait_for("sentinel knowing master and replica", knows_replica, timeout=15)
        return topo
    except BaseException:
        for p in started:
            p.stop()
        raise


def _pairs(flat: list[Any] | dict[str, Any]) -> dict[str, str]:
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    it = iter(flat)
    return {str(k): str(v) for k, v in zip(it, it, strict=True)}
