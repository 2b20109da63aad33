"""Instructions per publication of the hot paths, counted by valgrind: a figure that does not
drift with the machine's load, for judging a change to the per-publication code (CPU time on
this shared 2-core box moves by 2x from one minute to the next; instruction counts repeat to
within 0.1 %).

    python -m bench.instructions                 # both shapes, valgrind (~4 min)
    python -m bench.instructions --shape api     # /api/batch publishing only (~1 min)
    python -m bench.instructions --native        # CPU µs instead, no valgrind (seconds)
    python -m bench.instructions --history 10    # channels keep history_size 10

Shapes, run in one process on the Redis engine (a redis-server on a free port) with the
worker's GC settings and metrics off, as `python -m bench` runs the app:

* `api`: batches of 500 plain publishes to 1000 channels, each decoded from its JSON body
  and run by `ApiExecutor.batch` (the POST /api/batch path without HTTP), replies encoded.
* `e2e`: the same batches with 1000 connected Clients, one subscribed to each channel,
  writing to real socket pairs drained in the same process: publish, Redis SPUBLISH, PUB/SUB
  read, hub fan-out, frame and write.

The count of a shape is (instructions of a run with `--iters` batches) minus (one with a
third of them), over the publications between: start-up, connects and warm-up cancel out.
valgrind counts user-space instructions only: system calls (the socket writes) are not in
the figure, the Python and C work around them is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import callgrind

BATCH = 500
CHANNELS = 1000
WARMUP = 5


def _body(k: int) -> bytes:
    commands = [
        {
            "publish": {
                "channel": f"user_{(k * BATCH + i) % CHANNELS}",
                "data": {"i": i, "p": "x" * 80},
            }
        }
        for i in range(BATCH)
    ]
    return orjson.dumps({"commands": commands, "parallel": True})


class _SocketTransport:
    """A SyncTransport (app/transport.py) over one end of a socket pair, JSON protocol."""

    name = "websocket"
    unidirectional = False
    disconnect_push = False
    write_timeout = 60.0  # valgrind runs ~50x slower: a 1 s bound dropped clients (3009)

    def __init__(self, transport: asyncio.Transport) -> None:
        from app.protocol.json import JSON

        self.codec = JSON
        self._t = transport

    def write_now(self, frame: bytes) -> int:
        self._t.write(frame)
        return self._t.get_write_buffer_size()

    def write_many_now(self, frames: list[bytes]) -> int:
        self._t.writelines(frames)
        return self._t.get_write_buffer_size()

    def unsent(self) -> int:
        return self._t.get_write_buffer_size()

    async def write(self, frame: bytes) -> None:
        self.write_now(frame)

    async def close(self, disconnect: Any) -> None:
        self._t.close()


class _Sink(asyncio.Protocol):
    """The far end of every socket pair: counts publication pushes."""

    received = 0
    want = 0
    done: asyncio.Future[None] | None = None

    tail = b""  # the last bytes of the previous read: a push may straddle two reads

    def data_received(self, data: bytes) -> None:
        cls = type(self)
        seen = self.tail + data
        cls.received += seen.count(b'"pub"')
        self.tail = seen[-4:]  # shorter than the marker: never counted twice
        if cls.done is not None and cls.received >= cls.want and not cls.done.done():
            cls.done.set_result(None)


async def _run(shape: str, iters: int, redis_port: int, workdir: Path, history: int) -> float:
    """Runs `iters` batches after the warm-up; returns the process CPU seconds they took."""
    from app import metrics
    from app.api import request as api_request
    from app.api.executor import ApiExecutor
    from app.api.http import batch_decoder
    from app.client import Client
    from app.config import load_config
    from app.engines.build import build_engines
    from app.node import Node
    from app.web import tune_gc

    timeouts = {"io_timeout": "60s", "connect_timeout": "60s"}  # valgrind is ~50x slower
    config = {
        # No pings: the sinks never answer them, and a valgrind run on a loaded box outlasts
        # ping_interval + pong_timeout (every client was then closed with 3012).
        "client": {"insecure": True, "ping_interval": "-1s", "pong_timeout": "-1s"},
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", **timeouts},
        },
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                **({"history_size": history, "history_ttl": "300s"} if history else {}),
            }
        },
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    cfg = load_config(str(path), env={})
    metrics.enable(False)
    e = build_engines(cfg)
    node = Node(cfg, e.broker, e.presence, controller=e.controller, map_broker=e.map_broker)
    await node.start()
    loop = asyncio.get_running_loop()
    if shape == "e2e":
        for i in range(CHANNELS):
            a, b = socket.socketpair()
            ta, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock=a)
            await loop.connect_accepted_socket(_Sink, sock=b)
            client = Client(node, _SocketTransport(ta))
            await client.handle_frame(b'{"id":1,"connect":{}}')
            await client.handle_frame(
                orjson.dumps({"id": 2, "subscribe": {"channel": f"user_{i}"}})
            )
    executor = ApiExecutor(node)
    bodies = [_body(k) for k in range(20)]

    async def batches(n: int) -> None:
        _Sink.want = _Sink.received + n * BATCH
        _Sink.done = loop.create_future()
        for k in range(n):
            body = bodies[k % len(bodies)]
            spans, parallel = api_request.batch(body)
            replies = [
                r
                async for chunk in executor.batch(spans, batch_decoder(body), parallel)
                for r in chunk
            ]
            orjson.dumps({"replies": replies})
        if shape == "e2e":
            await _Sink.done

    await batches(WARMUP)
    tune_gc()
    started = time.process_time()
    await batches(iters)
    spent = time.process_time() - started
    await node.shutdown()
    return spent


def _child(shape: str, iters: int, redis_port: int, history: int) -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="cfpy-instr-") as tmp:
        spent = uvloop.run(_run(shape, iters, redis_port, Path(tmp), history))
    print(json.dumps({"cpu_s": spent}))


def _count(shape: str, iters: int, redis_port: int, valgrind: bool, history: int) -> float:
    """Instructions (valgrind) or CPU seconds (native) of one child run."""
    cmd = [
        sys.executable,
        "-m",
        "bench.instructions",
        "--child",
        shape,
        str(iters),
        str(redis_port),
        str(history),
    ]
    return callgrind.count(cmd, valgrind)


def measure(shape: str, iters: int, valgrind: bool, history: int = 0) -> dict[str, Any]:
    few = max(iters // 3, 1)
    with callgrind.redis_server() as port:
        low = _count(shape, few, port, valgrind, history)
        high = _count(shape, iters, port, valgrind, history)
    publications = (iters - few) * BATCH
    if valgrind:
        per = round((high - low) / publications)
        return {"shape": shape, "history": history, "instructions_per_publication": per}
    per_us = round(high / (iters * BATCH) * 1e6, 2)
    return {"shape": shape, "history": history, "cpu_us_per_publication": per_us}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--shape", choices=("api", "e2e", "both"), default="both")
    ap.add_argument(
        "--iters", type=int, default=12, help="batches of 500 in the long run (default 12)"
    )
    ap.add_argument("--native", action="store_true", help="CPU time instead of valgrind counts")
    ap.add_argument("--history", type=int, default=0, help="history_size of the channels")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    o = ap.parse_args()
    valgrind = not o.native
    if valgrind and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind), or use --native")
    shapes = ("api", "e2e") if o.shape == "both" else (o.shape,)
    results = [measure(shape, o.iters, valgrind, o.history) for shape in shapes]
    for r in results:
        print(json.dumps(r))
    if o.out is not None:
        o.out.write_text(json.dumps({"results": results, "argv": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
