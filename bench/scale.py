"""Scale per worker and how cost grows (issue 23 targets 4 and 6): `python -m bench.scale`.

One redis-server; for each repeat, each worker count (`--workers`, default 1,2) and each shape
(`--shapes`) a fresh app (`python -m app --workers W`, Redis engine, no history: a process keeps
the heap earlier connections grew, so every ramp starts from a fresh one). Its connections
ramp through `--steps` (1000, 5000, 18000) connections *per worker*, each a raw WebSocket
client of bench/load.py sending `connect` with an HS256 JWT (user `u<i>`) and one `subscribe`:
- `personal`: channel `sp<i>`, one per connection (the app then holds one Redis subscription
  per connection, the costly case);
- `broadcast`: every connection on channel `sb`.

Every process here may open at most 20,000 files (hard limit), so the clients are spread over
`--procs` load-generator processes (default: 6,000 connections each at the last step; the
poller's dup of each socket makes that 12,000 fds) and `--sources` local addresses 127.0.0.2…
(one source address has ~28k ephemeral ports towards the server's one port).

Per step (new connections `new`, total `conns`):
1. connect + subscribe all new clients, `--concurrency` (100) in flight per process; the rate
   is new ÷ (first connect → last subscribe reply), and per worker that ÷ W; CPU ms per
   connect of the workers, the load generator and Redis, and how busy the workers were (their
   CPU ÷ the burst's wall time: well below 100 % means the clients or the machine set the rate);
2. `--settle` s later (the connect burst's garbage gone), the workers' RSS: KB/conn is
   (RSS − RSS of the fresh workers) ÷ conns, summed over the workers; the connections each
   worker holds (its established sockets, psutil);
3. `--idle-window` s of idle worker CPU (the server's pings every 25 s and their pongs);
4. broadcast shape: `--broadcasts` single publications through `POST /api/publish` to every
   connection: publish → first and → last receipt, first → last, and the worker CPU that one
   fan-out took;
5. per `--paths` a paced load for `--duration` s: 1 × N at `--rate-broadcast` deliveries/s,
   or N × 1 at `--rate-personal`; worker CPU seconds per million deliveries net of the idle
   rate of step 3 (gross in the JSON). Paths (bench/publish.py modes): `spublish`, ready-made
   broker frames SPUBLISHed by a Lua loop (Redis -> worker -> sockets, the part that grows
   with N), and `api-batch`, `POST /api/batch` (the user's path: the worker also parses the
   request and publishes to Redis, a cost per publication).

Rows are medians over `--repeat` runs (every run in `runs`). bench/scale_report.py prints the
Markdown table and projects 100k connections per node from the slopes. Receipts are read by
the load generator's poller every `--read-delay-ms` (5) ms, so receive times are late by up to
that plus the poller's pass; on this 2-core box the clients share the cores with the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import math
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from bench import scale_report
from bench.load import ConnSpec, LoadGenerator, Target
from bench.publish import PublishJob, run_job
from bench.runner import (
    Service,
    app_config,
    cpu_seconds,
    launch_app,
    log,
    machine_info,
    rss_bytes,
    share,
    start_redis,
)
from bench.spread import warm_up, worker_counts

SHAPES = ("personal", "broadcast")
# Paced publishing paths (bench/publish.py modes): `spublish` ready-made broker frames from a
# Lua loop (Redis -> worker -> sockets: the cost that grows with N), `api-batch` the user's
# path (the worker also parses POST /api/batch and publishes to Redis).
PATHS = ("spublish", "api-batch")
PER_PROC = 6000  # connections per load-generator process: 2 fds each (poller dup) < 20,000
PER_SOURCE = 10000  # connections per source address (~28k ephemeral ports each)
BROADCAST_CHANNEL = "sb"
PERSONAL_BASE = "sp"


class ScaleLoad(LoadGenerator):
    """LoadGenerator whose connect reports first connect and last subscribe reply."""

    def connect_window(
        self, target: Target, specs: list[ConnSpec], concurrency: int, read_delay: float
    ) -> tuple[int, float, float]:
        """Connects and subscribes `specs`: (clients whose subscribe reply came, monotonic
        time of the first connect, of the last subscribe reply)."""
        args = [
            {
                "target": target,
                "specs": part,
                "sample_every": 0,
                "concurrency": concurrency,
                "read_delay": read_delay,
            }
            for part in self.split(specs)
        ]
        done = [r for r in self._all("connect", args) if r["connected"]]
        first = min(r["t1"] - r["seconds"] for r in done)
        return sum(r["connected"] for r in done), first, max(r["t1"] for r in done)


@dataclass(frozen=True)
class App:
    """The app a ramp measures: its shape, Redis prefix, port and worker pids."""

    shape: str
    prefix: str
    port: int
    workers: list[int]


@dataclass
class Ctx:
    """What lives for the whole run."""

    o: argparse.Namespace
    workdir: Path
    redis: Service
    redis_port: int
    secret: str
    api_key: str
    tokens: list[str]
    lg: ScaleLoad
    sources: tuple[str, ...]
    pool: concurrent.futures.ProcessPoolExecutor
    runs: list[dict[str, Any]] = field(default_factory=list)


def channel(shape: str, i: int) -> str:
    return BROADCAST_CHANNEL if shape == "broadcast" else f"{PERSONAL_BASE}{i}"


def publish_one(port: int, api_key: str) -> float:
    """One publication to the broadcast channel through the HTTP API; its send time."""
    t = time.monotonic()
    data = {"ts": t, "n": 0, "p": "x" * 40}
    body = json.dumps({"channel": BROADCAST_CHANNEL, "data": data}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/publish",
        data=body,
        headers={"Content-Type": "application/json", "X-API-Key": api_key},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise RuntimeError(f"publish failed: {reply}")
    return t


def single_broadcasts(
    c: Ctx, port: int, workers: list[int], specs: list[ConnSpec]
) -> dict[str, Any]:
    """`--broadcasts` publications to all connections, one at a time; medians."""
    expected = [len(part) for part in c.lg.split(specs)]
    got: dict[str, list[float]] = {"pub_first": [], "pub_last": [], "spread": [], "cpu": []}
    lost = 0
    for _ in range(c.o.broadcasts):
        c.lg.reset()
        cpu0 = cpu_seconds(workers)
        t_pub = publish_one(port, c.api_key)
        res = c.lg.collect(expected, idle=3.0, hard=60.0)
        cpu = cpu_seconds(workers) - cpu0
        lost += sum(expected) - sum(g["msgs"] for g in res)
        first = min(g["first"] for g in res if g["first"])
        last = max(g["last"] for g in res)
        got["pub_first"].append((first - t_pub) * 1e3)
        got["pub_last"].append((last - t_pub) * 1e3)
        got["spread"].append((last - first) * 1e3)
        got["cpu"].append(cpu * 1e3)
    med = {k: round(statistics.median(v), 2) for k, v in got.items()}
    return {
        "publish_to_first_ms": med["pub_first"],
        "publish_to_last_ms": med["pub_last"],
        "first_to_last_ms": med["spread"],
        "worker_cpu_ms": med["cpu"],
        "lost": lost,
    }


def paced(c: Ctx, app: App, path: str, specs: list[ConnSpec], idle_rate: float) -> dict[str, Any]:
    """The paced 1 × N or N × 1 load through `path`; worker CPU per million deliveries."""
    n = len(specs)
    count = 1 if app.shape == "broadcast" else n
    rate = c.o.rate_broadcast / n if app.shape == "broadcast" else c.o.rate_personal
    base = BROADCAST_CHANNEL if app.shape == "broadcast" else PERSONAL_BASE
    common: dict[str, Any] = {"rate": rate, "duration": c.o.duration, "base": base, "count": count}
    if path == "spublish":
        prefix = f"{app.prefix}.client."
        job = PublishJob(mode=path, redis_port=c.redis_port, pubsub_prefix=prefix, **common)
    else:
        url = f"http://127.0.0.1:{app.port}"
        job = PublishJob(mode=path, url=url, api_key=c.api_key, **common)
    workers = app.workers
    c.lg.reset()
    cpu0 = cpu_seconds(workers)
    t0 = time.monotonic()
    res = c.pool.submit(run_job, job).result(timeout=c.o.duration + 120)
    parts = c.lg.split(specs)
    idx = (lambda s: 0) if count == 1 else (lambda s: s.idx)
    expected = [sum(share(idx(s), res["published"], count) for s in p) for p in parts]
    got = c.lg.collect(expected, idle=3.0, hard=120.0)
    window = time.monotonic() - t0
    cpu = cpu_seconds(workers) - cpu0
    delivered = sum(g["msgs"] for g in got)
    net = max(cpu - idle_rate * window, 0.0)
    per_1m = 1e6 / max(delivered, 1)
    return {
        "offered_deliveries_per_s": round(rate * (n if count == 1 else 1)),
        "published": res["published"],
        "publish_errors": res["errors"],
        "delivered": delivered,
        "lost": sum(expected) - delivered,
        "worker_cpu_s": round(cpu, 3),
        "worker_cpu_s_per_1m": round(net * per_1m, 2),
        "worker_cpu_s_per_1m_gross": round(cpu * per_1m, 2),
    }


def ramp(c: Ctx, rep: int, w: int, shape: str) -> None:
    """A fresh app with `w` workers; its connections ramp through the steps (one row each)."""
    o = c.o
    prefix = f"scale{rep}{w}{shape}"  # its own Redis prefix: no two apps share a cluster
    cfg = app_config(c.redis_port, c.secret, c.api_key, False, prefix=prefix)
    svc, port = launch_app(c.workdir, cfg, {}, workers=w, name=f"app-{rep}-{w}-{shape}")
    try:
        svc.wait_http(f"http://127.0.0.1:{port}/health")
        asyncio.run(warm_up(svc.proc.pid, port, w, c.tokens[0]))
        workers = svc.workers()
        app = App(shape, prefix, port, workers)
        target = Target("127.0.0.1", port, sources=c.sources)
        time.sleep(o.settle)
        rss0 = rss_bytes(workers)
        n = 0
        specs: list[ConnSpec] = []
        for step in o.steps:
            total = step * w
            new = [ConnSpec(i, channel(shape, i), c.tokens[i]) for i in range(n, total)]
            groups = {"worker": workers, "loadgen": c.lg.pids, "redis": c.redis.pids()}
            cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
            subscribed, first, last = c.lg.connect_window(
                target, new, o.concurrency, o.read_delay_ms / 1e3
            )
            ms = {k: (cpu_seconds(v) - cpu0[k]) / len(new) * 1e3 for k, v in groups.items()}
            specs += new
            time.sleep(o.settle)  # let the connect burst's garbage go before reading RSS
            rss = rss_bytes(workers)
            held = worker_counts(svc.proc.pid, port)
            if sum(held.values()) != total:
                raise RuntimeError(f"workers hold {held}, expected {total} connections")
            cpu_a = cpu_seconds(workers)
            time.sleep(o.idle_window)
            idle_rate = (cpu_seconds(workers) - cpu_a) / o.idle_window
            row: dict[str, Any] = {
                "run": rep + 1,
                "workers": w,
                "shape": shape,
                "conns": total,
                "conns_per_worker": step,
                "subscribed": n + subscribed,
                "new": len(new),
                "connect_s": round(last - first, 3),
                "connects_per_s": round(len(new) / (last - first)),
                "connects_per_s_per_worker": round(len(new) / (last - first) / w),
                "worker_cpu_ms_per_connect": round(ms["worker"], 3),
                "loadgen_cpu_ms_per_connect": round(ms["loadgen"], 3),
                "redis_cpu_ms_per_connect": round(ms["redis"], 3),
                # Share of one core per worker the burst used: far below 100 means the
                # clients (or the machine's other load) set the rate, not the worker.
                "worker_busy_pct": round(
                    ms["worker"] * len(new) / 1e3 / (last - first) / w * 100, 1
                ),
                "rss_fresh_mb": round(rss0 / 2**20, 1),
                "rss_mb": round(rss / 2**20, 1),
                "rss_kb": rss // 1024,
                "kb_per_conn": round((rss - rss0) / total / 1024, 2),
                "per_worker": sorted(held.values(), reverse=True),
                "largest_share": round(max(held.values()) / total, 3),
                "idle_worker_cpu_pct": round(idle_rate * 100, 2),
            }
            if shape == "broadcast":
                row["broadcast"] = single_broadcasts(c, port, workers, specs)
            row["paced"] = {p: paced(c, app, p, specs, idle_rate) for p in o.paths}
            c.runs.append(row)
            log(scale_report.log_line(row))
            n = total
        c.lg.disconnect()
    finally:
        svc.stop()


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts")
    ap.add_argument("--steps", default="1000,5000,18000", help="connections per worker")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma list of personal,broadcast")
    ap.add_argument("--repeat", type=int, default=3, help="runs; rows are their medians")
    ap.add_argument("--procs", type=int, default=0, help=f"load processes (0: {PER_PROC} each)")
    ap.add_argument("--sources", type=int, default=0, help="127.0.0.x source addresses (0: auto)")
    ap.add_argument("--concurrency", type=int, default=100, help="connects in flight per process")
    ap.add_argument("--settle", type=float, default=2.0, help="s before reading RSS")
    ap.add_argument("--idle-window", type=float, default=3.0, help="s of idle worker CPU")
    ap.add_argument("--broadcasts", type=int, default=3, help="single 1 x N broadcasts per step")
    ap.add_argument("--duration", type=float, default=5.0, help="s of paced publishing")
    ap.add_argument("--rate-broadcast", type=float, default=20_000, help="1 x N deliveries/s")
    ap.add_argument("--rate-personal", type=float, default=10_000, help="N x 1 deliveries/s")
    ap.add_argument("--paths", default=",".join(PATHS), help="paced publishing paths")
    ap.add_argument("--read-delay-ms", type=float, default=5.0, help="load-generator poll period")
    ap.add_argument("--out", type=Path, default=Path("scale-results.json"))
    o = ap.parse_args(argv)
    o.workers = [int(x) for x in o.workers.split(",") if x]
    o.steps = sorted(int(x) for x in o.steps.split(",") if x)
    o.shapes = [s for s in o.shapes.split(",") if s]
    o.paths = [s for s in o.paths.split(",") if s]
    if not set(o.paths) <= set(PATHS):
        ap.error(f"bad --paths: want some of {','.join(PATHS)}")
    if not set(o.shapes) <= set(SHAPES) or not o.steps or not o.workers or o.repeat < 1:
        ap.error("bad --shapes, --steps, --workers or --repeat")
    if o.steps[0] < 2:
        ap.error("--steps: at least 2 connections per worker")
    return o


def main(argv: list[str]) -> int:
    o = parse(argv)
    most = max(o.steps) * max(o.workers)
    procs = o.procs or max(2, math.ceil(most / PER_PROC))
    n_sources = o.sources or max(2, math.ceil(most / PER_SOURCE))
    sources = tuple(f"127.0.0.{2 + i}" for i in range(n_sources))
    loadavg_start = os.getloadavg()
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-scale-"))
    secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
    tokens = [jwt.encode({"sub": f"u{i}"}, secret, algorithm="HS256") for i in range(most)]
    redis_svc, redis_port = start_redis(workdir)
    lg = ScaleLoad(procs)
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    c = Ctx(o, workdir, redis_svc, redis_port, secret, api_key, tokens, lg, sources, pool)
    log(f"scale: {procs} load processes, sources {sources[0]}..{sources[-1]}, up to {most:,}")
    try:
        for rep in range(o.repeat):
            for w in o.workers:
                for shape in o.shapes:
                    ramp(c, rep, w, shape)
    finally:
        lg.close()
        pool.shutdown()
        redis_svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = scale_report.medians(c.runs)
    meta = {
        "argv": argv,
        "machine": machine_info(),
        "loadavg_at_start": loadavg_start,
        "loadavg_at_end": os.getloadavg(),
        "seconds": round(time.time() - started, 1),
        "load_procs": procs,
        "sources": list(sources),
        "options": {k: v for k, v in vars(o).items() if k != "out"},
    }
    projection = scale_report.project(rows)
    table = scale_report.markdown(rows)
    doc = {"meta": meta, "rows": rows, "projection": projection, "table": table, "runs": c.runs}
    o.out.write_text(json.dumps(doc, indent=1))
    print(f"load average at start {loadavg_start}, at end {meta['loadavg_at_end']}")
    print(table)
    print()
    print(scale_report.projection_text(projection))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
