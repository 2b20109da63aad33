"""Scrape time of /metrics with ~10k series under gunicorn's multiprocess mode.

    python -m bench.metrics_scrape [--namespaces 250] [--workers 2] [--scrapes 30]

Real traffic creates the series: a server (Redis engine, `prometheus.enabled`) with N channel
namespaces; on every worker one WebSocket client subscribes to a channel of each namespace and
makes one refused publish there, so each namespace brings about 40 series (subscription
counters and gauges, command duration summaries and histograms, reply errors) into every
worker's metric files. Then /metrics is fetched over new connections (any worker answers, it
merges all workers' files) and the latency is reported with the number of series.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import psutil

from bench.runner import Service, free_port, start_redis


def server_config(redis_port: int, secret: str, api_key: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client": {"token": {"hmac_secret_key": secret}},
        "http_api": {"key": api_key},
        "http_server": {"address": "127.0.0.1"},
        "health": {"enabled": True},
        "log": {"level": "warn"},
        "engine": {"type": "redis", "redis": {"address": f"redis://127.0.0.1:{redis_port}"}},
    }
    cfg.update(extra)
    return cfg


def start_server(
    workdir: Path, config: dict[str, Any], workers: int, args: tuple[str, ...] = ()
) -> tuple[Service, int]:
    """`python -m app` with `workers` gunicorn workers; returns once /health answers."""
    port = free_port()
    cfg_path = workdir / "server.json"
    cfg_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "app", "-c", str(cfg_path), "--http_server.port", str(port)]
    svc = Service("app", [*cmd, "--workers", str(workers), *args], workdir / "server.log", env)
    svc.wait_http(f"http://127.0.0.1:{port}/health")
    return svc, port


def worker_of(master_pid: int, port: int, local_port: int) -> int | None:
    """The gunicorn worker holding the server side of the connection from `local_port`."""
    for child in psutil.Process(master_pid).children():
        try:
            for c in child.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == local_port and c.laddr.port == port:
                    return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user}, secret, algorithm="HS256")


async def make_series(
    port: int, master_pid: int, workers: int, secret: str, namespaces: int
) -> None:
    """One client per worker: subscribe to one channel per namespace and publish there
    (refused with 103: clients may not publish), all commands in one frame."""
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    seen: set[int] = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(workers * 30):
            ws = await session.ws_connect(url, max_msg_size=0)
            pid = worker_of(master_pid, port, ws.get_extra_info("sockname")[1])
            if pid in seen or pid is None:
                await ws.close()
                continue
            seen.add(pid)
            await ws.send_str(json.dumps({"id": 1, "connect": {"token": token(secret, "u")}}))
            await ws.receive(timeout=10)
            cmds = []
            for i in range(namespaces):
                ch = f"ns{i}:bench"
                cmds.append({"id": 2 + 2 * i, "subscribe": {"channel": ch}})
                cmds.append({"id": 3 + 2 * i, "publish": {"channel": ch, "data": {}}})
            await ws.send_str("\n".join(json.dumps(c) for c in cmds))
            replies = 0
            while replies < len(cmds):
                msg = await ws.receive(timeout=30)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"connection closed: {msg}")
                replies += sum(1 for ln in msg.data.split("\n") if '"id"' in ln)
            await ws.close()
            if len(seen) == workers:
                return
        raise RuntimeError(f"connections reached only workers {seen}")


async def probe(port: int, secret: str, stop: asyncio.Event) -> list[float]:
    """Round trips of a cheap command (a refused subscribe) on one connection while the
    scrapes run: shows how much a scrape stalls the clients of the worker rendering it."""
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    rtts: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"id": 1, "connect": {"token": token(secret, "p")}}))
            await ws.receive(timeout=10)
            n = 1
            while not stop.is_set():
                n += 1
                t = time.perf_counter()
                await ws.send_str(json.dumps({"id": n, "subscribe": {"channel": "nope:x"}}))
                while True:
                    msg = await ws.receive(timeout=30)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        raise RuntimeError(f"probe connection closed: {msg} {ws.close_code}")
                    if msg.data != "{}":
                        break
                    await ws.send_str("{}")  # server ping: pong
                rtts.append(time.perf_counter() - t)
                await asyncio.sleep(0.005)  # probe pacing
    return rtts


async def scrape_times(
    port: int, secret: str, scrapes: int
) -> tuple[list[float], int, int, list[float]]:
    url = f"http://127.0.0.1:{port}/metrics"
    times: list[float] = []
    series = size = 0
    stop = asyncio.Event()
    prober = asyncio.ensure_future(probe(port, secret, stop))
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(scrapes):
            t = time.perf_counter()
            async with session.get(url) as resp:
                body = await resp.read()
            times.append(time.perf_counter() - t)
            size = len(body)
            series = sum(1 for ln in body.split(b"\n") if ln and not ln.startswith(b"#"))
    stop.set()
    return times, series, size, await prober


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.metrics_scrape", description=__doc__)
    ap.add_argument("--namespaces", type=int, default=250)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scrapes", type=int, default=30)
    opts = ap.parse_args(argv)

    secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        workdir = Path(tmp)
        redis_svc, redis_port = start_redis(workdir)
        server = None
        try:
            namespaces = [
                {"name": f"ns{i}", "allow_subscribe_for_client": True}
                for i in range(opts.namespaces)
            ]
            cfg = server_config(
                redis_port,
                secret,
                api_key,
                prometheus={"enabled": True},
                channel={"namespaces": namespaces},
            )
            server, port = start_server(workdir, cfg, opts.workers)
            asyncio.run(make_series(port, server.proc.pid, opts.workers, secret, opts.namespaces))
            times, series, size, rtts = asyncio.run(scrape_times(port, secret, opts.scrapes))
        finally:
            if server is not None:
                server.stop()
            redis_svc.stop()
    ms = sorted(t * 1000 for t in times)
    result = {
        "workers": opts.workers,
        "namespaces": opts.namespaces,
        "series": series,
        "body_bytes": size,
        "scrapes": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 1),
        "max_ms": round(ms[-1], 1),
        # Command round trips on one client connection meanwhile (its worker renders about
        # every other scrape).
        "client_rtt_median_ms": round(statistics.median(rtts) * 1000, 2),
        "client_rtt_max_ms": round(max(rtts) * 1000, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
