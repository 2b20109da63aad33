"""The peers stage: this server against the servers a user would pick instead, in one run.

`python -m bench.peers` (bench/README.md "Peers a user would pick") starts one redis-server and,
on it, every target whose toolchain is here:

| target | server | publications |
|---|---|---|
| `app` | `python -m app --workers 1` (Redis engine) | path `api-batch`: `POST /api/batch` (bench/publish.py); path `spublish`: ready-made broker frames, Lua SPUBLISH |
| `raw` | bench/raw_server.py, hiredis reader: the ceiling | Lua SPUBLISH of the finished push |
| `node` | Node.js socket.io 4.8 + `@socket.io/redis-adapter` (bench/peers/socketio/server.js) | the `@socket.io/redis-emitter` protocol (publishers.py `emitter`) |
| `channels` | Django Channels + `channels_redis` under daphne (channels_site.py) | `channel_layer.group_send` from the publisher process |
| `sio` | python-socketio + AsyncRedisManager (bench/socketio_server.py) | its manager's Redis messages (bench/publish.py `sio`) |

A target whose toolchain is missing (node or the npm packages, the pip packages of the `bench`
extra) is skipped with one line saying why; `node` runs `npm ci` first when its node_modules
is missing and npm is here. Every target gets the same load-generator clients (bench/load.py:
the Centrifugo JSON subset for app, raw and channels, Engine.IO 4 / Socket.IO 5 for node and
sio) and the same publisher process.

Two shapes, each with `--subs` (1000) connections per target, all targets connected at once and
phases alternating between targets (so each figure is measured minutes from its peers'):
- `personal`: one room/channel/group per connection, `--rate-personal` (160,000) deliveries/s
  offered: publication s goes to channel s % 1000, each becomes one delivery;
- `broadcast`: one room of all connections, `--rate-broadcast` (600,000) deliveries/s offered.
Data is ~100 bytes (`{"ts":..,"n":..,"p":"<63 x>"}`). The offered rates are above what any
target drains, so deliveries/s is each target's drain rate. Slow targets (channels, sio) are
offered at most `--slow-max-rate` deliveries/s and `--slow-max-deliveries` per phase, so a
phase does not take minutes to drain.

Per row: deliveries/s (delivered / (last receipt - first publication)), messages per frame,
CPU seconds per million deliveries of the serving process (the app's one worker, not its idle
gunicorn master), of redis-server, of the load generator and of the publisher, p50/p99 publish
-> receive on the sampled connections, and the ratios to the raw peer and to Node socket.io of
the same run (`--repeat`: the run with the median deliveries/s of each row).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import multiprocessing as mp
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from bench import report
from bench.load import ConnSpec, LoadGenerator, Target
from bench.ports import free_port
from bench.publish import PublishJob
from bench.runner import (
    APP_PREFIX,
    RAW_PREFIX,
    SIO_CHANNEL,
    Service,
    cpu_seconds,
    launch_app,
    launch_raw,
    launch_sio,
    log,
    share,
    socketio_installed,
    start_redis,
)

from .publishers import PeerJob, run_peer_job

NODE_DIR = Path(__file__).resolve().parent / "socketio"
TARGETS = ("app", "raw", "node", "channels", "sio")
SLOW = ("channels", "sio")  # offered at most slow_max_rate / slow_max_deliveries per phase
SHAPES = ("personal", "broadcast")
CHANNELS_MODULES = ("django", "channels", "channels_redis", "daphne")


@dataclass
class Options:
    targets: tuple[str, ...] = TARGETS
    shapes: tuple[str, ...] = SHAPES
    subs: int = 1000
    duration: float = 3.0
    repeat: int = 1
    procs: int = 2
    sample_every: int = 50
    read_delay: float = 0.05
    idle_timeout: float = 3.0
    rate_personal: float = 160_000
    rate_broadcast: float = 600_000
    slow_max_rate: float = 50_000
    slow_max_deliveries: int = 30_000
    pad: int = 63  # ~100 B of data
    history_size: int = 0  # app channels' history_size (0: none, as the peers keep none)
    npm_install: bool = True  # npm ci when bench/peers/socketio/node_modules is missing
    app_env: dict[str, str] = field(default_factory=dict)
    keep_workdir: bool = False
    out: Path = Path("bench-peers.json")


# ------------------------------------------------------------------------------ toolchains


def node_missing(npm_install: bool) -> str | None:
    """Why the Node socket.io peer cannot run here, or None (after `npm ci` if needed)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        npm = shutil.which("npm")
        if not npm_install or npm is None:
            return "its npm packages are not installed (cd bench/peers/socketio && npm ci)"
        log("node socket.io peer: npm ci in bench/peers/socketio")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            return f"npm ci failed: {proc.stderr.strip()[-300:]}"
    return None


def channels_missing() -> str | None:
    absent = [m for m in CHANNELS_MODULES if importlib.util.find_spec(m) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e '.[bench]')"
    return None


def missing(target: str, o: Options) -> str | None:
    if target == "node":
        return node_missing(o.npm_install)
    if target == "channels":
        return channels_missing()
    if target == "sio" and not socketio_installed():
        return "python-socketio is not installed (pip install -e '.[bench]')"
    return None


# ------------------------------------------------------------------------------ servers


def launch_node(workdir: Path, redis_port: int) -> tuple[Service, int]:
    port = free_port()
    node = shutil.which("node") or "node"
    cmd = [node, str(NODE_DIR / "server.js"), "--port", str(port), "--redis-port", str(redis_port)]
    return Service("node socket.io peer", cmd, workdir / "node.log"), port


def launch_channels(workdir: Path, redis_port: int) -> tuple[Service, int]:
    port = free_port()
    env = dict(os.environ, BENCH_REDIS_PORT=str(redis_port), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0"]
    cmd.append("bench.peers.channels_site:application")
    return Service("channels peer", cmd, workdir / "channels.log", env), port


def app_config(redis_port: int, secret: str, key: str, history_size: int) -> dict[str, Any]:
    ns: dict[str, Any] = {"allow_subscribe_for_client": True}
    if history_size:
        ns |= {"history_size": history_size, "history_ttl": "300s"}
    return {
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": key},
        "http_server": {"address": "127.0.0.1"},
        "health": {"enabled": True},
        "log": {"level": "warn"},
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": APP_PREFIX},
        },
        "channel": {"without_namespace": ns},
    }


@dataclass
class Server:
    """One running target: its process, how clients reach it, how it is published to."""

    name: str
    service: Service
    port: int
    client: Target
    # path -> (pubs/s, seconds, base, count) -> job; phases run every path of every server
    paths: dict[str, Callable[[float, float, str, int], PeerJob]]


def start_servers(
    o: Options, stack: ExitStack, workdir: Path, redis_port: int, secret: str, key: str
) -> dict[str, Server]:
    """Starts every target that can run (in parallel), waits until each answers /health."""
    servers: dict[str, Server] = {}
    pad = o.pad
    for name in o.targets:
        why = missing(name, o)
        if why is not None:
            log(f"{name} peer skipped: {why}")
            continue
        if name == "app":
            cfg = app_config(redis_port, secret, key, o.history_size)
            svc, port = launch_app(workdir, cfg, o.app_env)
            url = f"http://127.0.0.1:{port}"

            def app_job(rate: float, dur: float, base: str, n: int, url: str = url) -> PeerJob:
                job = PublishJob("api-batch", rate, dur, base, n, pad=pad, url=url, api_key=key)
                return PeerJob("publish", rate, dur, base, n, redis_port, job=job)

            def app_spublish(rate: float, dur: float, base: str, n: int) -> PeerJob:
                job = PublishJob(
                    "spublish", rate, dur, base, n, pad=pad, redis_port=redis_port,
                    pubsub_prefix=f"{APP_PREFIX}.client.",
                )  # fmt: skip
                return PeerJob("publish", rate, dur, base, n, redis_port, job=job)

            # api-batch: the user's path (the worker also parses the API and publishes);
            # spublish: ready-made broker frames SPUBLISHed by a Lua loop, as the peers'
            # publications arrive ready-made from Redis (Redis -> worker -> sockets only).
            paths: dict[str, Callable[[float, float, str, int], PeerJob]] = {
                "api-batch": app_job,
                "spublish": app_spublish,
            }
            servers[name] = Server(name, svc, port, Target("127.0.0.1", port), paths)
        elif name == "raw":
            svc, port = launch_raw(workdir, redis_port, "frame")

            def raw_job(rate: float, dur: float, base: str, n: int) -> PeerJob:
                job = PublishJob(
                    "redis", rate, dur, base, n, pad=pad, redis_port=redis_port,
                    pubsub_prefix=RAW_PREFIX + "hi.",
                )  # fmt: skip
                return PeerJob("publish", rate, dur, base, n, redis_port, job=job)

            servers[name] = Server(name, svc, port, Target("127.0.0.1", port), {"hiredis": raw_job})
        elif name == "node":
            svc, port = launch_node(workdir, redis_port)

            def node_job(rate: float, dur: float, base: str, n: int) -> PeerJob:
                return PeerJob("emitter", rate, dur, base, n, redis_port, pad=pad)

            servers[name] = Server(
                name, svc, port, Target.socketio("127.0.0.1", port), {"emitter": node_job}
            )
        elif name == "channels":
            svc, port = launch_channels(workdir, redis_port)

            def ch_job(rate: float, dur: float, base: str, n: int) -> PeerJob:
                return PeerJob("group_send", rate, dur, base, n, redis_port, pad=pad)

            servers[name] = Server(
                name, svc, port, Target("127.0.0.1", port), {"group_send": ch_job}
            )
        elif name == "sio":
            svc, port = launch_sio(workdir, redis_port)

            def sio_job(rate: float, dur: float, base: str, n: int) -> PeerJob:
                job = PublishJob(
                    "sio", rate, dur, base, n, pad=pad, redis_port=redis_port,
                    pubsub_prefix=SIO_CHANNEL,
                )  # fmt: skip
                return PeerJob("publish", rate, dur, base, n, redis_port, job=job)

            servers[name] = Server(
                name, svc, port, Target.socketio("127.0.0.1", port), {"redis": sio_job}
            )
        else:
            raise ValueError(f"unknown target {name!r} (have {', '.join(TARGETS)})")
        stack.callback(svc.stop)
    for s in servers.values():
        s.service.wait_http(f"http://127.0.0.1:{s.port}/health", timeout=60)
        log(f"{s.name} on port {s.port}")
    return servers


def connected(s: Server, key: str) -> int:
    """Connections the server still holds (the app: clients over its nodes)."""
    import urllib.request

    if s.name == "app":
        req = urllib.request.Request(
            f"http://127.0.0.1:{s.port}/api/info",
            data=b"{}",
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            nodes = json.loads(resp.read())["result"]["nodes"]
        return sum(int(n.get("num_clients", 0)) for n in nodes)
    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/health", timeout=10) as resp:
        return int(json.loads(resp.read())["subscribers"])


def wait_drained(s: Server, key: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        try:
            n = connected(s, key)
        except (OSError, KeyError, ValueError):
            n = -1
        if n == 0:
            return
        time.sleep(0.2)  # a poll: the peers announce nothing when they let go
    log(f"{s.name}: still {n} connections {timeout:.0f}s after disconnecting")


# ------------------------------------------------------------------------------ phases


def phase(
    o: Options,
    s: Server,
    path: str,
    shape: str,
    base: str,
    count: int,
    specs: list[ConnSpec],
    lg: LoadGenerator,
    redis: Service,
    pool: concurrent.futures.ProcessPoolExecutor,
) -> dict[str, Any]:
    per_channel = o.subs / count
    rate = o.rate_personal if shape == "personal" else o.rate_broadcast
    duration = o.duration
    if s.name in SLOW:
        rate = min(rate, o.slow_max_rate)
        duration = min(duration, max(1.0, o.slow_max_deliveries / rate))
    job = s.paths[path](rate / per_channel, duration, base, count)
    groups = {"worker": s.service.workers(), "redis": redis.pids(), "loadgen": lg.pids}
    lg.reset()
    cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
    pub = pool.submit(run_peer_job, job).result(timeout=duration + 120)
    published = pub["published"]
    expected = [
        sum(share(c.idx % count, published, count) for c in part) for part in lg.split(specs)
    ]
    # Generous: Channels drains a broadcast at ~1.5k deliveries/s.
    hard = max(60.0, sum(expected) / 1_000)
    stats = lg.collect(expected, o.idle_timeout, hard)
    cpu = {k: round(cpu_seconds(v) - cpu0[k], 3) for k, v in groups.items()}
    cpu["publisher"] = round(pub["cpu_s"], 3)
    delivered = sum(x["msgs"] for x in stats)
    frames = sum(x["frames"] for x in stats)
    last = max((x["last"] for x in stats if x["last"]), default=0.0)
    window = last - pub["t0"] if last else 0.0
    lat = sorted(v * 1000 for x in stats for v in x["lat"])
    exp = sum(expected)
    publish_s = pub["t1"] - pub["t0"]
    row = {
        "shape": shape,
        "target": s.name,
        "path": path,
        "subs": o.subs,
        "channels": count,
        "published": published,
        "publish_errors": pub["errors"],
        "offered_deliveries_per_s": round(published * per_channel / publish_s)
        if publish_s > 0
        else 0,
        "expected": exp,
        "delivered": delivered,
        "lost": max(exp - delivered, 0),
        "msgs_per_frame": round(delivered / frames, 2) if frames else 0.0,
        "deliveries_per_s": round(delivered / window) if window > 0 else 0,
        "cpu_s": cpu,
        "cpu_s_per_1M": {k: report.per_million(v, delivered) for k, v in cpu.items()},
        "latency_ms": {
            "p50": round(report.percentile(lat, 0.50), 2),
            "p99": round(report.percentile(lat, 0.99), 2),
        },
        "closed_by_server": sum(x["closed"] for x in stats),
    }
    log(
        f"  {shape:9} {s.name + '/' + path:19} {row['deliveries_per_s']:>9,} deliveries/s "
        f"({delivered:,}/{exp:,}, {row['msgs_per_frame']} msgs/frame, worker "
        f"{row['cpu_s_per_1M']['worker']} CPU s/1M, p99 {row['latency_ms']['p99']} ms)"
    )
    return row


def run_shape(
    o: Options,
    shape: str,
    servers: dict[str, Server],
    key: str,
    secret: str,
    lg: LoadGenerator,
    redis: Service,
    pool: concurrent.futures.ProcessPoolExecutor,
) -> list[dict[str, Any]]:
    count = o.subs if shape == "personal" else 1
    base = f"peers_{shape}_" if count > 1 else f"peers_{shape}"
    specs = []
    for i in range(o.subs):
        channel = base if count == 1 else f"{base}{i}"
        specs.append(ConnSpec(i, channel, jwt.encode({"sub": f"u{i}"}, secret, algorithm="HS256")))
    for s in servers.values():
        t = lg.connect(s.client, specs, o.sample_every, read_delay=o.read_delay)
        log(f"{shape}: {o.subs} subscribers on {count} channel(s) of {s.name} in {t:.1f}s")
    time.sleep(0.5)  # let subscribe bookkeeping settle before the first publication
    rows = []
    for rep in range(o.repeat):
        for s in servers.values():
            for path in s.paths:
                row = phase(o, s, path, shape, base, count, specs, lg, redis, pool)
                row["run"] = rep + 1
                rows.append(row)
                time.sleep(0.3)
    lg.disconnect()
    for s in servers.values():
        wait_drained(s, key)
    time.sleep(1.0)  # the app unsubscribes its node a moment after the last client
    return rows


# ------------------------------------------------------------------------------ report


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median run of each (shape, target) by deliveries/s, with ratios to raw and node."""
    out = report.median_rows(
        rows, lambda r: (r["shape"], r["target"], r["path"]), "deliveries_per_s"
    )
    for r in out:
        for peer in ("raw", "node"):
            ref = next((x for x in out if (x["shape"], x["target"]) == (r["shape"], peer)), None)
            dps = ref["deliveries_per_s"] if ref else 0
            cpu = ref["cpu_s_per_1M"]["worker"] if ref else 0
            r[f"ratio_to_{peer}"] = round(r["deliveries_per_s"] / dps, 3) if dps else None
            mine = r["cpu_s_per_1M"]["worker"]
            r[f"cpu_vs_{peer}"] = round(mine / cpu, 3) if cpu and mine is not None else None
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'shape':9} {'target/path':19} {'offered/s':>10} {'deliv/s':>9} {'xraw':>6} {'xnode':>6} "
        f"{'msg/frm':>7} {'wrk s/1M':>8} {'cpu/raw':>7} {'cpu/node':>8} {'redis':>6} "
        f"{'lg':>6} {'pub':>6} {'p50 ms':>7} {'p99 ms':>7} {'lost':>6}"
    )
    lines = [head]

    def f(x: Any) -> str:
        return "-" if x is None else str(x)

    for r in rows:
        c = r["cpu_s_per_1M"]
        lines.append(
            f"{r['shape']:9} {r['target'] + '/' + r['path']:19} {r['offered_deliveries_per_s']:>10,} "
            f"{r['deliveries_per_s']:>9,} {f(r['ratio_to_raw']):>6} {f(r['ratio_to_node']):>6} "
            f"{r['msgs_per_frame']:>7} {f(c['worker']):>8} {f(r['cpu_vs_raw']):>7} "
            f"{f(r['cpu_vs_node']):>8} {f(c['redis']):>6} {f(c['loadgen']):>6} "
            f"{f(c['publisher']):>6} {r['latency_ms']['p50']:>7} {r['latency_ms']['p99']:>7} "
            f"{r['lost']:>6}"
        )
    return "\n".join(lines)


def run(o: Options) -> dict[str, Any]:
    """Runs the stage, writes `o.out` (JSON) and returns the document."""
    for name in (*o.targets, *o.shapes):
        if name not in (*TARGETS, *SHAPES):
            raise ValueError(f"unknown target or shape {name!r}")
    started = time.time()
    load0 = os.getloadavg()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="cfpy-peers-"))
        if o.keep_workdir:
            log(f"logs and configs stay in {workdir}")
        else:
            stack.callback(shutil.rmtree, workdir, True)
        redis_svc, redis_port = start_redis(workdir)
        stack.callback(redis_svc.stop)
        log(f"redis-server on port {redis_port}")
        secret, key = secrets.token_hex(16), secrets.token_hex(16)
        servers = start_servers(o, stack, workdir, redis_port, secret, key)
        skipped = {t: missing(t, o) or "" for t in o.targets if t not in servers}
        lg = LoadGenerator(o.procs, o.sample_every)
        stack.callback(lg.close)
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
        stack.callback(pool.shutdown)
        try:
            for shape in o.shapes:
                rows += run_shape(o, shape, servers, key, secret, lg, redis_svc, pool)
        except Exception:
            for s in servers.values():
                tail = s.service.log.read_text(errors="replace")[-3000:]
                log(f"--- {s.name} log tail ---\n{tail}")
            raise
    summary = summarize(rows)
    doc: dict[str, Any] = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, "-m", "bench.peers", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "loadavg_at_start": [round(x, 2) for x in load0],
            "cpus": os.cpu_count(),
            "skipped": skipped,
            "versions": versions(),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(o).items()},
        },
        "rows": summary,
        "runs": rows,
    }
    doc["table"] = table(summary)
    o.out.parent.mkdir(parents=True, exist_ok=True)
    o.out.write_text(json.dumps(doc, indent=2))
    return doc


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("aiohttp", "python-socketio", "channels", "channels-redis", "daphne", "Django"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    for pkg in ("socket.io", "@socket.io/redis-adapter", "@socket.io/redis-emitter", "redis"):
        meta = NODE_DIR / "node_modules" / pkg / "package.json"
        out[f"npm:{pkg}"] = json.loads(meta.read_text())["version"] if meta.is_file() else None
    node = shutil.which("node")
    out["node"] = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else None
    )
    return out
