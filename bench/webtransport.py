"""WebTransport beside WebSocket: `python -m bench.webtransport`.

One redis-server and two apps of `--workers` workers each on it (own key prefixes), started
side by side for the whole run:
- `websocket`: the app as every other stage runs it (plain TCP, no TLS);
- `webtransport`: `http_server.tls` (an ECDSA P-256 certificate made for the run),
  `http_server.http3` and `webtransport.enabled`; its API and health answer in plain HTTP on an
  internal port (`internal_port` + `tls_external`), so the publisher is the same.
QUIC always encrypts (TLS 1.3 inside QUIC), so the WebTransport rows include that cost; the
WebSocket rows have none (bench/load.py's clients speak no TLS).

Per transport and repeat, two phases with `--subs` clients (JSON protocol, HS256 JWT) spread
over `--procs` load-generator processes (bench/load.py's WebSocket clients; bench/wt_load.py's
aioquic WebTransport clients), plus a probe process holding every 50th connection:
- connect: every client connects and subscribes to one channel (`--concurrency` at a time per
  process); connections+subscriptions per second, and CPU milliseconds per connection of the app
  and of the load generator;
- fanout (1 x subs): one publisher process (bench/publish.py `api-batch`: POST /api/batch, one
  request per 5 ms tick) offers `--rate` deliveries/s for `--duration` s; the stage waits for
  every delivery (3 s without progress: the rest is lost). deliveries/s = delivered / (last
  receipt - first publish); CPU seconds per million deliveries of the app (master + workers),
  redis-server, the publisher and the load generator; p50/p99 publish -> receive latency on the
  sampled connections (the probe process).
The phases alternate between transports within a repeat; with `--repeat N` the summary rows
are the medians of the N repeats. Absolute rates drift on a shared 2-core machine: compare the
two transports' rows of one run, and the CPU per delivery more than the rates.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import multiprocessing as mp
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.fanout_phase import run_fanout_phase
from bench.load import ConnSpec, LoadGenerator, Target
from bench.ports import free_port
from bench.publish import PublishJob
from bench.runner import Service, cpu_seconds, launch_app, log, start_redis
from bench.wt_load import WtLoadGenerator, WtTarget

TRANSPORTS = ("websocket", "webtransport")


def make_cert(workdir: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (CA: it verifies itself)."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "bench.crt", workdir / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def app_config(
    transport: str, redis_port: int, secret: str, key: str, cert: tuple[Path, Path], internal: int
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": key},
        "http_server": {"address": "127.0.0.1"},
        "health": {"enabled": True},
        "log": {"level": "warn"},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": f"b{transport}"},
        },
    }
    if transport == "webtransport":
        cfg["http_server"] |= {
            "tls": {"enabled": True, "cert_pem": str(cert[0]), "key_pem": str(cert[1])},
            "http3": {"enabled": True},
            "internal_port": internal,
            "tls_external": True,
        }
        cfg["webtransport"] = {"enabled": True}
    return cfg


class Side:
    """One transport's app, its load generator and how to reach both."""

    def __init__(
        self,
        transport: str,
        app: Service,
        port: int,
        api_port: int,
        lg: LoadGenerator,
        cafile: Path,
    ) -> None:
        self.transport = transport
        self.app = app
        self.port = port
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.lg = lg
        self.cafile = cafile

    def connect(self, specs: list[ConnSpec], concurrency: int) -> float:
        if isinstance(self.lg, WtLoadGenerator):
            target = WtTarget("127.0.0.1", self.port, str(self.cafile))
            return self.lg.connect_wt(target, specs, sample_every=50, concurrency=concurrency)
        return self.lg.connect(
            Target("127.0.0.1", self.port), specs, sample_every=50, concurrency=concurrency
        )


def run_phases(
    o: argparse.Namespace,
    side: Side,
    rep: int,
    redis: Service,
    key: str,
    secret: str,
    pool: concurrent.futures.ProcessPoolExecutor,
) -> dict[str, Any]:
    base = f"{side.transport}{rep}-fan"
    specs = [
        ConnSpec(i, base, jwt.encode({"sub": f"u{i}"}, secret, algorithm="HS256"))
        for i in range(o.subs)
    ]
    lg = side.lg
    app_pids = side.app.pids()
    cpu0 = {"app": cpu_seconds(app_pids), "loadgen": cpu_seconds(lg.pids)}
    seconds = side.connect(specs, o.concurrency)
    connect = {
        "seconds": round(seconds, 3),
        "per_s": round(o.subs / seconds),
        "cpu_ms_per_conn": {
            "app": round((cpu_seconds(app_pids) - cpu0["app"]) / o.subs * 1e3, 3),
            "loadgen": round((cpu_seconds(lg.pids) - cpu0["loadgen"]) / o.subs * 1e3, 3),
        },
    }
    time.sleep(0.5)  # let the subscribe burst's work finish before measuring the fan-out
    job = PublishJob(
        mode="api-batch",
        rate=o.rate / o.subs,  # publications/s
        duration=o.duration,
        base=base,
        count=1,
        url=side.api_url,
        api_key=key,
    )
    groups = {"app": app_pids, "redis": redis.pids(), "loadgen": lg.pids}
    parts = lg.split(specs)

    def expected_for(published: int) -> list[int]:
        return [published * len(part) for part in parts]  # one channel: everyone gets all

    common, got = run_fanout_phase(lg, groups, pool, job, expected_for, hard=180.0)
    lg.disconnect()
    fanout = {
        **common,
        "offered_deliveries_per_s": round(o.rate),
        "gaps": sum(g["gaps"] for g in got),
        "closed_by_server": sum(g["closed"] for g in got),
        "close_codes": _sum_codes(g["close_codes"] for g in got),
        "ends": _sum_codes(g.get("ends", {}) for g in got),
    }
    log(
        f"{side.transport} #{rep}: connect+subscribe {connect['per_s']:,}/s; fan-out "
        f"{fanout['deliveries_per_s']:,} deliveries/s, lost {fanout['lost']}, "
        f"CPU s/1M {fanout['cpu_s_per_1m']}"
    )
    return {"transport": side.transport, "repeat": rep, "connect": connect, "fanout": fanout}


def _sum_codes(parts: Iterable[dict[Any, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for codes in parts:
        for code, n in codes.items():
            out[str(code)] = out.get(str(code), 0) + n
    return out


def warm_publisher() -> None:
    """Runs in the publisher process before any phase: its first job would otherwise pay for
    importing aiohttp in its CPU figure."""
    import aiohttp  # noqa: F401


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    m = statistics.median(present)
    return round(m, 3) if isinstance(m, float) else m


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of one transport's repeats, field by field."""

    def walk(parts: list[Any]) -> Any:
        if isinstance(parts[0], dict):
            return {k: walk([p[k] for p in parts]) for k in parts[0]}
        return _median(parts)

    out = walk([{"connect": r["connect"], "fanout": r["fanout"]} for r in rows])
    return {"transport": rows[0]["transport"], "repeats": len(rows), **out}


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'transport':12} {'conn/s':>7} {'app ms/conn':>11} {'lg ms/conn':>10} "
        f"{'offered/s':>9} {'deliv/s':>8} {'lost':>5} {'app s/1M':>8} {'redis s/1M':>10} "
        f"{'pub s/1M':>8} {'lg s/1M':>8} {'p50 ms':>7} {'p99 ms':>7} {'closed':>6}"
    )
    lines = [head]
    for r in rows:
        c, f = r["connect"], r["fanout"]
        cpu = f["cpu_s_per_1m"]
        lines.append(
            f"{r['transport']:12} {c['per_s']:>7,} {c['cpu_ms_per_conn']['app']:>11} "
            f"{c['cpu_ms_per_conn']['loadgen']:>10} {f['offered_deliveries_per_s']:>9,} "
            f"{f['deliveries_per_s']:>8,} {f['lost']:>5} {cpu['app']:>8} {cpu['redis']:>10} "
            f"{cpu['publisher']:>8} {cpu['loadgen']:>8} {f['p50_ms'] or '-':>7} "
            f"{f['p99_ms'] or '-':>7} {f['closed_by_server']:>6}"
        )
    return "\n".join(lines)


def start_side(
    o: argparse.Namespace,
    transport: str,
    workdir: Path,
    redis_port: int,
    secret: str,
    key: str,
    cert: tuple[Path, Path],
) -> Side:
    internal = free_port()
    cfg = app_config(transport, redis_port, secret, key, cert, internal)
    app, port = launch_app(workdir, cfg, {}, workers=o.workers, name=f"app-{transport}")
    api_port = internal if transport == "webtransport" else port
    lg: LoadGenerator
    if transport == "webtransport":
        lg = WtLoadGenerator(o.procs, sample_every=50)
    else:
        lg = LoadGenerator(o.procs, sample_every=50)
    side = Side(transport, app, port, api_port, lg, cert[0])
    app.wait_http(f"{side.api_url}/health")
    return side


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.webtransport", description=__doc__)
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="comma list")
    ap.add_argument("--subs", type=int, default=1000, help="clients (one channel)")
    ap.add_argument("--workers", type=int, default=1, help="app workers")
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--concurrency", type=int, default=50, help="connects in flight per process")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of publishing")
    ap.add_argument("--rate", type=float, default=5_000, help="offered deliveries/s")
    ap.add_argument("--repeat", type=int, default=1, help="repeats; the summary is the median")
    ap.add_argument("--out", type=Path, default=Path("webtransport-results.json"))
    ap.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    o = ap.parse_args(argv)
    transports = [t for t in o.transports.split(",") if t]
    unknown = set(transports) - set(TRANSPORTS)
    if unknown:
        ap.error(f"unknown transports: {sorted(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-wtbench-"))
    secret, key = secrets.token_hex(16), secrets.token_hex(16)
    cert = make_cert(workdir)
    redis_svc, redis_port = start_redis(workdir)
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    sides: list[Side] = []
    runs: list[dict[str, Any]] = []
    try:
        pool.submit(warm_publisher).result()
        for t in transports:
            sides.append(start_side(o, t, workdir, redis_port, secret, key, cert))
        for rep in range(o.repeat):
            for side in sides:
                runs.append(run_phases(o, side, rep, redis_svc, key, secret, pool))
    finally:
        for side in sides:
            side.lg.close()
            side.app.stop()
        pool.shutdown()
        redis_svc.stop()
        if o.keep_workdir:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = [median_row([r for r in runs if r["transport"] == t]) for t in transports]
    meta = {"loadavg_at_end": os.getloadavg(), "argv": argv, "cpus": os.cpu_count()}
    o.out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
