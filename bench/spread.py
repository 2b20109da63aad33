"""Connections spread over workers: a burst of WebSocket connects against a 2-worker server.

    python -m bench.spread [--clients 1000] [--workers 2] [--runs 3] [--designs reuseport,shared]

Starts Redis and, per listener design, `python -m app --workers W` (Redis engine). Each run
opens `--clients` WebSocket connections at once from one asyncio process (every TCP connect
issued in the same loop turn; each connection then upgrades and sends its Centrifugo
`connect` with a JWT), waits for every connect reply, and counts the connections each worker
process holds (its established sockets on the server port, read from /proc by psutil). Then
it closes them all and waits until the workers hold none before the next run. Runs of the
designs alternate, so both see the same machine load.

Designs (`CFPY_LISTENERS` in the app's environment, app/hosting/listeners.py):
  reuseport  one SO_REUSEPORT listener per worker slot (the default)
  shared     the gunicorn master's one listening socket, accepted by every worker (before
             issue 15)

Reports per design the median over the runs of the largest worker's share, every run's
shares, and connects/s (clients / time from the first connect to the last connect reply).
Prints one JSON document; `--out` writes it too.
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

import psutil  # type: ignore[import-untyped]

from bench.load import mask_frame
from bench.metrics_scrape import server_config, token
from bench.rawws import RawWsClient
from bench.runner import Service, free_port, start_redis

DESIGNS = ("reuseport", "shared")
LISTENERS_ENV = "CFPY_LISTENERS"


class Conn(RawWsClient):
    """One raw WebSocket client: upgrade, `connect`, then idle until closed."""

    def __init__(self, host: str, port: int, tok: str, done: asyncio.Future[float]) -> None:
        super().__init__(host, port)
        self.connect = mask_frame(json.dumps({"id": 1, "connect": {"token": tok}}).encode())
        self.done = done

    def on_open(self) -> None:
        self.write(self.connect)

    def on_refused(self, head: bytes) -> None:
        self.done.set_exception(RuntimeError(head.decode(errors="replace")))

    def on_frame(self, opcode: int, payload: bytes, head_len: int) -> None:
        if self.done.done() or opcode != 1:
            return  # pings and the like: nothing to answer within a run
        if b'"id":1' in payload:  # the connect reply
            if b'"error"' in payload:
                self.done.set_exception(RuntimeError(payload[:200].decode(errors="replace")))
            else:
                self.done.set_result(time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed before the connect reply: {exc}"))


def worker_counts(master_pid: int, port: int) -> dict[int, int]:
    """Established server-side sockets on `port` per gunicorn worker."""
    counts: dict[int, int] = {}
    for child in psutil.Process(master_pid).children():
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        counts[child.pid] = sum(
            1
            for c in conns
            if c.laddr and c.laddr.port == port and c.raddr and c.status == "ESTABLISHED"
        )
    return counts


async def burst(port: int, tokens: list[str]) -> tuple[float, list[asyncio.Transport]]:
    """Open every connection at once; (seconds until the last connect reply, transports)."""
    loop = asyncio.get_running_loop()
    host = "127.0.0.1"
    dones = [loop.create_future() for _ in tokens]
    started = time.monotonic()
    opened = await asyncio.gather(
        *(
            loop.create_connection(lambda t=t, d=d: Conn(host, port, t, d), host, port)  # type: ignore[misc]
            for t, d in zip(tokens, dones, strict=True)
        )
    )
    last = max(await asyncio.wait_for(asyncio.gather(*dones), 120))
    return last - started, [tr for tr, _ in opened]


async def wait_empty(master_pid: int, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(worker_counts(master_pid, port).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the server still holds connections after the clients closed")
        await asyncio.sleep(0.1)


def one_run(server: Service, port: int, tokens: list[str]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        elapsed, transports = await burst(port, tokens)
        counts = worker_counts(server.proc.pid, port)
        for tr in transports:
            tr.abort()
        await wait_empty(server.proc.pid, port)
        held = sorted(counts.values(), reverse=True)
        if sum(held) != len(tokens):
            raise RuntimeError(f"workers hold {held} connections, expected {len(tokens)} in all")
        return {
            "shares": [round(n / len(tokens), 3) for n in held],
            "connects_per_s": round(len(tokens) / elapsed, 1),
        }

    return asyncio.run(go())


def start_app(
    workdir: Path, cfg: dict[str, Any], workers: int, design: str, tok: str
) -> tuple[Service, int]:
    port = free_port()
    cfg_path = workdir / f"server-{design}.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env[LISTENERS_ENV] = design
    cmd = [sys.executable, "-m", "app", "-c", str(cfg_path), "--http_server.port", str(port)]
    cmd += ["--workers", str(workers)]
    svc = Service(f"app-{design}", cmd, workdir / f"server-{design}.log", env)
    svc.wait_http(f"http://127.0.0.1:{port}/health")
    asyncio.run(warm_up(svc.proc.pid, port, workers, tok))
    return svc, port


async def warm_up(master_pid: int, port: int, workers: int, tok: str, tries: int = 200) -> None:
    """/health answers once one worker is up; a burst must find all of them serving. Opens
    WebSocket connections one at a time until every worker holds one (each answered its
    connect, so its app is up), then closes them."""
    loop = asyncio.get_running_loop()
    held: list[asyncio.Transport] = []
    try:
        for _ in range(tries):
            done = loop.create_future()
            tr, _ = await loop.create_connection(
                lambda d=done: Conn("127.0.0.1", port, tok, d),  # type: ignore[misc]
                "127.0.0.1",
                port,
            )
            held.append(tr)
            await asyncio.wait_for(done, 30)
            counts = worker_counts(master_pid, port)
            if len(counts) == workers and all(counts.values()):
                return
        raise RuntimeError(f"connections reached only {worker_counts(master_pid, port)}")
    finally:
        for tr in held:
            tr.abort()
        await wait_empty(master_pid, port)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    top = [r["shares"][0] for r in runs]
    rates = [r["connects_per_s"] for r in runs]
    return {
        "largest_share_median": statistics.median(top),
        "largest_share_runs": top,
        "shares_runs": [r["shares"] for r in runs],
        "connects_per_s_median": statistics.median(rates),
        "connects_per_s_runs": rates,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--designs", default=",".join(DESIGNS), help="comma list of " + ", ".join(DESIGNS)
    )
    ap.add_argument("--out", type=Path)
    opts = ap.parse_args(argv)
    designs = [d for d in opts.designs.split(",") if d]
    if not designs or not set(designs) <= set(DESIGNS):
        raise SystemExit(f"bad --designs {opts.designs!r}: want some of {','.join(DESIGNS)}")

    secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
    tokens = [token(secret, f"u{i}") for i in range(opts.clients)]
    runs: dict[str, list[dict[str, Any]]] = {d: [] for d in designs}
    with tempfile.TemporaryDirectory(prefix="bench-spread-") as tmp:
        workdir = Path(tmp)
        redis_svc, redis_port = start_redis(workdir)
        servers: dict[str, tuple[Service, int]] = {}
        try:
            for d in designs:
                cfg = server_config(
                    redis_port,
                    secret,
                    api_key,
                    engine={
                        "type": "redis",
                        "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": d},
                    },
                )
                servers[d] = start_app(workdir, cfg, opts.workers, d, tokens[0])
            for i in range(opts.runs):
                for d in designs:
                    svc, port = servers[d]
                    r = one_run(svc, port, tokens)
                    print(f"run {i + 1} {d}: {r}", file=sys.stderr)
                    runs[d].append(r)
        finally:
            for svc, _ in servers.values():
                svc.stop()
            redis_svc.stop()
    doc = {
        "clients": opts.clients,
        "workers": opts.workers,
        "runs": opts.runs,
        "loadavg_at_end": os.getloadavg(),
        "designs": {d: summarize(runs[d]) for d in designs},
    }
    text = json.dumps(doc, indent=1)
    if opts.out:
        opts.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
