"""Instructions per publication of the PUB/SUB read path alone, counted by valgrind: from the
Redis data link's `data_received` to the frame handed to a connection's transport.

    python -m bench.read_instructions              # metrics off (~2 min)
    python -m bench.read_instructions --metrics    # metrics on, multiprocess mode as a worker
    python -m bench.read_instructions --native     # CPU µs instead, no valgrind (seconds)

One process on the Redis engine (a redis-server on a free port, used only to subscribe) with
1000 Clients, one subscribed to each of 1000 personal channels. A fixed stream of `smessage`
replies, 100-byte bare payloads round-robin over the channels, is fed to the data link's
protocol in 16 KB chunks, the writers flushed after each (as the loop would in that turn);
the transports drop the frames. Nothing in the fed part depends on timing: no publisher, no
Redis traffic, no socket reads or writes, and the loop does not turn while messages are fed. (The
e2e shape of `bench.instructions` also counts what the loop does per wall-clock second,
keepalives, upkeep, and the chunking of the Redis stream, which follow the machine's load:
on this shared box, two trees one Python call per message apart read 105.0k and 134.8k.)

The count is (instructions of a run of ROUNDS + EXTRA_ROUNDS rounds of 1000 messages) minus
(one of ROUNDS rounds), over the messages between: start-up and connects cancel out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.ports import free_port

if TYPE_CHECKING:
    from app.protocol import Codec

CHANNELS = 1000
ROUNDS = 2  # of CHANNELS messages, in the short run
# More in the long one: the 1000 connects take minutes under valgrind, and what the loop does
# per wall-clock second meanwhile (upkeep, heartbeats) varies by tens of millions of
# instructions from run to run on a loaded machine; over 40,000 messages that is ~1k each.
EXTRA_ROUNDS = 40
PAYLOAD = b'\n{"i":1,"p":"' + b"x" * 80 + b'"}'  # a bare payload (codec.py), 100 bytes
CHUNK = 16384


class _DropTransport:
    """A SyncTransport (app/transport.py), JSON protocol, that drops what it is given."""

    name = "websocket"
    unidirectional = False
    disconnect_push = False
    write_timeout = 1.0

    def __init__(self) -> None:
        from app.protocol.json import JSON

        self.codec: Codec = JSON

    def write_now(self, frame: bytes) -> int:
        return 0

    def write_many_now(self, frames: list[bytes]) -> int:
        return 0

    def unsent(self) -> int:
        return 0

    async def write(self, frame: bytes) -> None:
        pass

    async def close(self, disconnect: Any) -> None:
        pass


def _stream() -> list[bytes]:
    """One round: an smessage per channel, as Redis writes them, cut into CHUNK bytes."""
    parts = []
    for i in range(CHANNELS):
        name = f"centrifugo.client.user_{i}".encode()
        items = (b"smessage", name, PAYLOAD)
        parts.append(b"*3\r\n" + b"".join(b"$%d\r\n%b\r\n" % (len(x), x) for x in items))
    buf = b"".join(parts)
    return [buf[i : i + CHUNK] for i in range(0, len(buf), CHUNK)]


async def _run(rounds: int, redis_port: int, metrics_on: bool, workdir: Path) -> float:
    """Feeds `rounds` rounds after a warm-up; returns the process CPU seconds they took."""
    from app import metrics
    from app.client import Client
    from app.config import load_config
    from app.engines.build import build_engines
    from app.engines.redis.broker import RedisBroker
    from app.node import Node
    from app.web import tune_gc
    from app.writer import _flusher

    timeouts = {"io_timeout": "60s", "connect_timeout": "60s"}  # valgrind is ~50x slower
    config = {
        "client": {"insecure": True, "ping_interval": "-1s"},  # no timers per connection
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", **timeouts},
        },
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    cfg = load_config(str(path), env={})
    metrics.enable(metrics_on)
    e = build_engines(cfg)
    node = Node(cfg, e.broker, e.presence, controller=e.controller, map_broker=e.map_broker)
    await node.start()
    for i in range(CHANNELS):
        client = Client(node, _DropTransport())
        await client.handle_frame(b'{"id":1,"connect":{}}')
        await client.handle_frame(orjson.dumps({"id": 2, "subscribe": {"channel": f"user_{i}"}}))
    assert isinstance(e.broker, RedisBroker)
    (link,) = e.broker._data.values()  # one shard, no cluster: one data link
    proto = link._proto
    assert proto is not None
    chunks = _stream()
    # The writers' flush, run after each chunk as the loop would run it in the same turn;
    # called here so that the loop never turns while messages are fed: its timers
    # (keepalives, upkeep, heartbeats) fire per wall-clock second, and under valgrind a
    # second is long and its length follows the machine's load.
    flusher = _flusher(asyncio.get_running_loop())

    def feed(n: int) -> None:
        for _ in range(n):
            for chunk in chunks:
                proto.data_received(chunk)
                flusher._run()

    feed(1)
    tune_gc()
    before = node.hub.deliveries
    started = time.process_time()
    feed(rounds)
    spent = time.process_time() - started
    if node.hub.deliveries - before != rounds * CHANNELS:
        raise SystemExit(f"delivered {node.hub.deliveries - before}, not {rounds * CHANNELS}")
    await node.shutdown()
    return spent


def _child(rounds: int, redis_port: int, metrics_on: bool) -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="cfpy-read-") as tmp:
        spent = uvloop.run(_run(rounds, redis_port, metrics_on, Path(tmp)))
    print(json.dumps({"cpu_s": spent}))


def _count(rounds: int, redis_port: int, metrics_on: bool, valgrind: bool) -> float:
    """Instructions (valgrind) or CPU seconds (native) of one child run."""
    cmd = [sys.executable, "-m", "bench.read_instructions", "--child", str(rounds)]
    cmd += [str(redis_port), "1" if metrics_on else "0"]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if metrics_on:  # as a gunicorn worker counts: prometheus-client's multiprocess mode
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
        if not valgrind:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            return float(json.loads(out.stdout.splitlines()[-1])["cpu_s"])
        cg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"]
        proc = subprocess.run(cg + cmd, check=True, capture_output=True, text=True, env=env)
    for line in proc.stderr.splitlines():
        if "Collected :" in line:
            return float(line.rsplit(":", 1)[1])
    raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")


def measure(metrics_on: bool, valgrind: bool) -> dict[str, Any]:
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    server = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        low = _count(ROUNDS, port, metrics_on, valgrind)
        high = _count(ROUNDS + EXTRA_ROUNDS, port, metrics_on, valgrind)
    finally:
        server.terminate()
        server.wait()
    result: dict[str, Any] = {"shape": "read", "metrics": metrics_on}
    if valgrind:
        result["instructions_per_publication"] = round((high - low) / (EXTRA_ROUNDS * CHANNELS))
    else:
        result["cpu_us_per_publication"] = round((high - low) / (EXTRA_ROUNDS * CHANNELS) * 1e6, 2)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
        return
    ap = argparse.ArgumentParser(
        prog="python -m bench.read_instructions", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--metrics", action="store_true", help="metrics on, as the server runs")
    ap.add_argument("--native", action="store_true", help="CPU time instead of valgrind counts")
    o = ap.parse_args()
    if not o.native and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind), or use --native")
    print(json.dumps(measure(o.metrics, not o.native)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
