"""Benchmark runner: starts Redis, the app and the raw peer, runs the scenarios, reports.

One run measures every target with the same load-generator processes and publisher, so each
app figure comes with the raw ceiling measured minutes apart on the same (shared, 2-core)
machine: results are read as ratios, not absolute numbers.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
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

from bench.load import ConnSpec, LoadGenerator, Target
from bench.publish import PublishJob, channel_name, run_job

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_PREFIX = "centrifugo"  # the app's default Redis prefix
RAW_PREFIX = "rawbench."


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    channels: Callable[[int], int]  # subscribers -> number of channels (round-robin)
    paced: float  # offered deliveries/s, about half the ceiling in perf-anchors §3.4
    saturate: float  # offered deliveries/s, about twice that ceiling
    api_mode: str  # how the app's HTTP API path publishes


SCENARIOS: dict[str, Scenario] = {
    "fanout": Scenario("fanout", lambda n: 1, 100_000, 400_000, "api"),
    "personal": Scenario("personal", lambda n: n, 25_000, 80_000, "api-batch"),
}

# (target, path) phases of each scenario, in the order run (targets alternate). The raw
# peer's Redis paths (one per reader) give the ceiling that ratios refer to; "local" is its
# fan-out without Redis.
PATHS: tuple[tuple[str, str], ...] = (
    ("raw", "hiredis"),
    ("app", "spublish"),
    ("raw", "redispy"),
    ("app", "api"),
    ("raw", "local"),
)
RAW_REDIS_PATHS = {"redispy": "py.", "hiredis": "hi."}  # path -> raw peer channel prefix


@dataclass
class Options:
    subs: int = 1000
    scenarios: tuple[str, ...] = ("fanout", "personal")
    loads: tuple[str, ...] = ("paced", "saturate")
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> load -> rate
    duration: float = 3.0
    repeat: int = 1
    paths: tuple[str, ...] = tuple(f"{t}/{p}" for t, p in PATHS)  # "target/path" phases to run
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
    smoke: bool = False

    @classmethod
    def smoke_options(cls, out: Path) -> Options:
        return cls(
            subs=20,
            loads=("paced",),
            rates={"fanout": {"paced": 2000}, "personal": {"paced": 1000}},
            duration=1.0,
            procs=1,
            sample_every=2,
            read_delay=0.01,
            idle_timeout=2.0,
            out=out,
            smoke=True,
        )

    def rate(self, sc: Scenario, load: str) -> float:
        given = self.rates.get(sc.name, {}).get(load)
        if given is not None:
            return given
        return sc.paced if load == "paced" else sc.saturate


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def start_redis(workdir: Path) -> tuple[Service, int]:
    port = free_port()
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
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


def app_config(redis_port: int, secret: str, api_key: str, history: bool) -> dict[str, Any]:
    ns: dict[str, Any] = {"allow_subscribe_for_client": True}
    if history:
        ns |= {"history_size": 100, "history_ttl": "300s"}
    return {
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": api_key},
        "http_server": {"address": "127.0.0.1"},
        "health": {"enabled": True},
        "log": {"level": "warn"},
        "engine": {"type": "redis", "redis": {"address": f"redis://127.0.0.1:{redis_port}"}},
        "channel": {"without_namespace": ns},
    }


def start_app(
    workdir: Path, config: dict[str, Any], extra_env: dict[str, str]
) -> tuple[Service, int]:
    port = free_port()
    cfg_path = workdir / "app.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env)
    cmd = [sys.executable, "-m", "app", "-c", str(cfg_path), "--http_server.port", str(port)]
    svc = Service("app", cmd + ["--workers", "1"], workdir / "app.log", env)
    svc.wait_http(f"http://127.0.0.1:{port}/health")
    return svc, port


def start_raw(workdir: Path, redis_port: int, send: str) -> tuple[Service, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.raw_server", "--port", str(port)]
    cmd += ["--redis-port", str(redis_port), "--prefix", RAW_PREFIX]
    cmd += ["--readers", ",".join(RAW_REDIS_PATHS), "--send", send]
    svc = Service("raw peer", cmd, workdir / "raw.log")
    svc.wait_http(f"http://127.0.0.1:{port}/health")
    return svc, port


@contextmanager
def py_spy(pid: int, out: Path | None) -> Iterator[None]:
    """Samples `pid` with py-spy (collapsed stacks) while the block runs, when asked to."""
    exe = shutil.which("py-spy")
    if out is None or exe is None:
        yield
        return
    cmd = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "-o", str(out)]
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


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[k]


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
    api_key: str
    secret: str
    lg: LoadGenerator
    pool: concurrent.futures.ProcessPoolExecutor
    rows: list[dict[str, Any]] = field(default_factory=list)

    def server(self, target: str) -> Service:
        return self.app if target == "app" else self.raw

    def snapshot(self, target: str) -> dict[str, float]:
        return {
            "server": cpu_seconds(self.server(target).pids()),
            "redis": cpu_seconds(self.redis.pids()),
            "loadgen": cpu_seconds(self.lg.pids),
        }

    def job(
        self, target: str, path: str, sc: Scenario, rate: float, base: str, count: int
    ) -> PublishJob:
        o = self.opts
        common = {"rate": rate, "duration": o.duration, "base": base, "count": count}
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
            return PublishJob(
                mode="spublish",
                redis_port=self.redis_port,
                pubsub_prefix=f"{APP_PREFIX}.client.",
                **common,
            )
        return PublishJob(
            mode=sc.api_mode,
            url=f"http://127.0.0.1:{self.app_port}",
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
    ) -> dict[str, Any]:
        o = self.opts
        n = o.subs
        per_channel = n / count
        rate_deliveries = o.rate(sc, load)
        job = self.job(target, path, sc, rate_deliveries / per_channel, base, count)
        self.lg.reset()
        before = self.snapshot(target)
        prof = None
        if o.profile_dir is not None and target == "app":
            prof = o.profile_dir / f"{sc.name}-{path}-{load}.txt"
        worker_pid = self.server(target).pids()[-1]
        with py_spy(worker_pid, prof):
            pub = self.pool.submit(run_job, job).result(timeout=o.duration + 120)
            published = pub["published"]
            expected = [
                sum(share(s.idx % count, published, count) for s in part)
                for part in self.lg.split(specs)
            ]
            # Generous: a starved raw peer drains a saturating fan-out at ~20k deliveries/s.
            hard = max(60.0, o.duration * 10, sum(expected) / 20_000)
            stats = self.lg.collect(expected, o.idle_timeout, hard)
        after = self.snapshot(target)
        return self._row(sc, target, path, load, job, pub, expected, stats, before, after)

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
            "path": path if target == "raw" else (path if path == "spublish" else job.mode),
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
                "p50": round(percentile(lat, 0.50), 2),
                "p99": round(percentile(lat, 0.99), 2),
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
            "server_cpu_s_per_1M": round(cpu["server"] / delivered * 1e6, 2) if delivered else 0,
            "loadgen_cpu_s_per_1M": round(cpu["loadgen"] / delivered * 1e6, 2) if delivered else 0,
        }

    def scenario(self, sc: Scenario) -> None:
        """Both targets hold their subscribers at once and phases alternate between them, so
        each app figure is measured next to a raw one on a machine whose load drifts."""
        o = self.opts
        n = o.subs
        count = sc.channels(n)
        base = f"bench_{sc.name}" if count == 1 else f"bench_{sc.name}_"
        specs = [ConnSpec(i, channel_name(base, count, i % count), self.token(i)) for i in range(n)]
        for target, port in (("raw", self.raw_port), ("app", self.app_port)):
            t = self.lg.connect(
                Target("127.0.0.1", port), specs, o.sample_every, read_delay=o.read_delay
            )
            log(f"{sc.name}: {n} subscribers on {count} channel(s) of {target} in {t:.1f}s")
        time.sleep(0.5)  # let subscribe bookkeeping settle before the first publication
        for rep in range(o.repeat):
            for load in o.loads:
                for target, path in PATHS:
                    if f"{target}/{path}" not in o.paths:
                        continue
                    row = self.phase(sc, target, path, load, base, count, specs)
                    row["run"] = rep + 1
                    self.rows.append(row)
                    log(
                        f"  {target}/{row['path']:<9} {load:<8} {row['deliveries_per_s']:>9,} "
                        f"deliveries/s  ({row['delivered']:,}/{row['expected']:,}, "
                        f"{row['msgs_per_frame']} msgs/frame, "
                        f"server {row['server_cpu_s_per_1M']} CPU s/1M)"
                    )
                    time.sleep(0.3)
        self.lg.disconnect()
        log(f"{sc.name}: clients disconnected")
        time.sleep(1.0)  # the app unsubscribes its node a moment after the last client

    def token(self, i: int) -> str:
        return jwt.encode({"sub": f"u{i}"}, self.secret, algorithm="HS256")


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, load, target, path): the run with the median deliveries/s,
    with the median server CPU per 1M deliveries over the runs and every run's rate."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["load"], r["target"], r["path"]), []).append(r)
    rank = {("raw", "hiredis"): 0, ("raw", "redispy"): 1, ("raw", "local"): 2}
    rank[("app", "spublish")] = 3  # then the app's API path
    out = []
    for rs in groups.values():
        by_rate = sorted(rs, key=lambda r: r["deliveries_per_s"])
        row = dict(by_rate[len(by_rate) // 2])
        row.pop("run", None)
        row["runs"] = len(rs)
        row["runs_deliveries_per_s"] = [r["deliveries_per_s"] for r in rs]
        row["server_cpu_s_per_1M"] = round(
            statistics.median(r["server_cpu_s_per_1M"] for r in rs), 2
        )
        out.append(row)
    scen = list(dict.fromkeys(r["scenario"] for r in runs))
    loads = ["paced", "saturate"]
    out.sort(
        key=lambda r: (
            scen.index(r["scenario"]),
            loads.index(r["load"]),
            rank.get((r["target"], r["path"]), 4),
        )
    )
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the raw ceiling: the best raw Redis path of the same scenario and load."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in rows:
        if r["target"] == "raw" and r["path"] in RAW_REDIS_PATHS and r["deliveries_per_s"]:
            key = (r["scenario"], r["load"])
            rate, cpu = best.get(key, (0.0, float("inf")))
            best[key] = (max(rate, r["deliveries_per_s"]), min(cpu, r["server_cpu_s_per_1M"]))
    for r in rows:
        rate, cpu = best.get((r["scenario"], r["load"]), (0.0, 0.0))
        if cpu == float("inf"):
            cpu = 0.0
        r["ratio_to_raw"] = round(r["deliveries_per_s"] / rate, 3) if rate else None
        r["cpu_vs_raw"] = round(r["server_cpu_s_per_1M"] / cpu, 2) if cpu else None


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<9} {'load':<8} {'target/path':<14} {'offered/s':>10} {'deliveries/s':>12} "
        f"{'ratio':>6} {'msg/frm':>7} {'CPU s/1M':>8} {'xraw':>5} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'lost':>6}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        ratio = "-" if r["ratio_to_raw"] is None else f"{r['ratio_to_raw']:.2f}"
        cpu_x = "-" if r["cpu_vs_raw"] is None else f"{r['cpu_vs_raw']:.2f}"
        out.append(
            f"{r['scenario']:<9} {r['load']:<8} {r['target'] + '/' + r['path']:<14} "
            f"{r['offered_deliveries_per_s']:>10,} {r['deliveries_per_s']:>12,} {ratio:>6} "
            f"{r['msgs_per_frame']:>7} {r['server_cpu_s_per_1M']:>8} {cpu_x:>5} "
            f"{r['latency_ms']['p50']:>7} {r['latency_ms']['p99']:>7} {r['lost']:>6}"
        )
    return "\n".join(out)


def machine_info() -> dict[str, Any]:
    import aiohttp

    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401

        has_uvloop = True
    except ImportError:
        has_uvloop = False
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
        "aiohttp": aiohttp.__version__,
        "uvloop_in_load_generator": has_uvloop,
        "platform": platform.platform(),
    }


def run(opts: Options) -> dict[str, Any]:
    """Runs the benchmark, writes `opts.out` (JSON) and returns the result document."""
    unknown = set(opts.paths) - {f"{t}/{p}" for t, p in PATHS}
    if unknown:
        raise ValueError(f"unknown paths {sorted(unknown)} (have {', '.join(Options().paths)})")
    for name in opts.scenarios:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r} (have {', '.join(SCENARIOS)})")
    started = time.time()
    info = machine_info()
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
        secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
        cfg = app_config(redis_port, secret, api_key, opts.history)
        app_svc, app_port = start_app(workdir, cfg, opts.app_env)
        stack.callback(app_svc.stop)
        log(f"app (1 worker) on port {app_port}")
        raw_svc, raw_port = start_raw(workdir, redis_port, opts.raw_send)
        stack.callback(raw_svc.stop)
        log(f"raw peer on port {raw_port}")
        lg = LoadGenerator(opts.procs)
        stack.callback(lg.close)
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
        stack.callback(pool.shutdown)
        r = Run(
            opts,
            workdir,
            redis_svc,
            redis_port,
            app_svc,
            app_port,
            raw_svc,
            raw_port,
            api_key,
            secret,
            lg,
            pool,
        )
        try:
            for name in opts.scenarios:
                r.scenario(SCENARIOS[name])
        except Exception:
            for svc in (app_svc, raw_svc):
                log(f"--- {svc.name} log tail ---\n{svc.log.read_text(errors='replace')[-3000:]}")
            raise
        runs = r.rows
    rows = summarize(runs)
    add_ratios(rows)
    doc = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "machine": info,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        },
        "rows": rows,
        "runs": runs if opts.repeat > 1 else [],
        "table": table(rows),
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=2))
    return doc
