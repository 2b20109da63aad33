"""Drain time: SIGTERM to a server holding N WebSocket clients.

    python -m bench.drain [--clients 1000] [--workers 2] [--channels 100]

Starts Redis and `python -m app --workers W` (Redis engine), connects N raw aiohttp WebSocket
clients (each connected with a token and subscribed to one of `--channels` channels), sends
SIGTERM to the gunicorn master and reports how long until every client had its close frame
with code 3001 (the median and the last one), and until the process had exited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.metrics_scrape import server_config, start_server, token
from bench.runner import start_redis


class Conn:
    def __init__(self) -> None:
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.code: int | None = None
        self.closed_at = 0.0
        self.reader: asyncio.Task[None] | None = None

    async def open(self, session: aiohttp.ClientSession, url: str, tok: str, channel: str) -> None:
        self.ws = ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
        cmds = [{"id": 1, "connect": {"token": tok}}, {"id": 2, "subscribe": {"channel": channel}}]
        await ws.send_str("\n".join(json.dumps(c) for c in cmds))
        got = 0
        while got < 2:
            msg = await ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"setup failed: {msg}")
            for line in msg.data.split("\n"):
                if '"error"' in line:
                    raise RuntimeError(f"setup failed: {line}")
                got += '"id"' in line
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "{}":
                    await self.ws.send_str("{}")  # pong
                continue
            self.closed_at = time.monotonic()
            self.code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else self.ws.close_code
            return


async def run(
    port: int, proc_wait: object, send_term: object, opts: argparse.Namespace, secret: str
) -> dict[str, object]:
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    conns = [Conn() for _ in range(opts.clients)]
    sem = asyncio.Semaphore(100)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def open_one(i: int, c: Conn) -> None:
            async with sem:
                await c.open(session, url, token(secret, f"u{i}"), f"ch{i % opts.channels}")

        t = time.monotonic()
        await asyncio.gather(*(open_one(i, c) for i, c in enumerate(conns)))
        connect_s = time.monotonic() - t

        started = time.monotonic()
        send_term()  # type: ignore[operator]
        exit_wait = asyncio.ensure_future(asyncio.to_thread(proc_wait))  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(c.reader for c in conns if c.reader)), 60)
        rc = await asyncio.wait_for(exit_wait, 60)
        exited = time.monotonic() - started
    closes = sorted(c.closed_at - started for c in conns)
    codes: dict[str, int] = {}
    for c in conns:
        codes[str(c.code)] = codes.get(str(c.code), 0) + 1
    return {
        "clients": opts.clients,
        "workers": opts.workers,
        "connect_s": round(connect_s, 2),
        "close_codes": codes,
        "all_closed_s": round(closes[-1], 3),
        "median_close_s": round(statistics.median(closes), 3),
        "process_exit_s": round(exited, 3),
        "exit_code": rc,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--channels", type=int, default=100)
    ap.add_argument("--shutdown-timeout", default="30s")
    opts = ap.parse_args(argv)

    secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        workdir = Path(tmp)
        redis_svc, redis_port = start_redis(workdir)
        server = None
        try:
            cfg = server_config(
                redis_port,
                secret,
                api_key,
                shutdown={"timeout": opts.shutdown_timeout},
                channel={"without_namespace": {"allow_subscribe_for_client": True}},
            )
            server, port = start_server(workdir, cfg, opts.workers)
            proc = server.proc
            result = asyncio.run(
                run(port, proc.wait, lambda: proc.send_signal(signal.SIGTERM), opts, secret)
            )
        finally:
            if server is not None:
                server.stop()
            redis_svc.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
