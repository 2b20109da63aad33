"""Instructions per connect + subscribe of a worker, counted by valgrind: the figure for judging
a change to the connect path (issue 23 target 4). bench.scale's worker CPU ms per connect moves
by 2x from one run to the next on this shared 2-core box (0.15 to 0.44 ms for the same code);
an instruction count drifts far less: two counts of the same code, run side by side on a
loaded box (load average 8), were 951.8k and 963.6k per connect (1.2 % apart; what remains
is timing: how many subscribes one SSUBSCRIBE carries, how replies split across reads).

    python -m bench.connect_instructions            # valgrind, Redis engine (~10 min loaded)
    python -m bench.connect_instructions --native   # CPU µs instead, no valgrind (seconds)
    python -m bench.connect_instructions --engine memory

One process builds the server a worker runs (`app.hosting.server.build_server`: the lean
WebSocket path, the Node, the engine) on uvloop, as a gunicorn worker does, and connects
clients to it in batches of 100: each client is a socketpair whose server end the worker's
`LeanServer` accepts; the client sends the upgrade head and one frame holding `connect`
(an HS256 JWT, user `u<i>`) and `subscribe` (channel `sp<i>`: the personal shape, one Redis
subscription per connection), as bench/load.py's clients do, and reads until the subscribe
reply came. The count is (instructions of a run with `--connections`) minus (one with a third
of them), over the connections between: start-up and warm-up cancel out. It includes the
clients' side (socketpair, send, reads: a fixed part, the same for every version of the
code); valgrind counts user-space instructions only, so the system calls (accept, the socket
writes) are not in it, the Python and C work around them is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import callgrind

BATCH = 100
WARMUP = 20
SECRET = "connect-instructions-secret-0123456789"


def masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (RFC 6455: masked); payloads under 64 KB."""
    mask = secrets.token_bytes(4)
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


def client_bytes(i: int) -> bytes:
    """What client `i` sends: the upgrade head, then connect + subscribe in one frame."""
    import jwt
    import orjson

    key = base64.b64encode(secrets.token_bytes(16)).decode()
    head = (
        "GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    token = jwt.encode({"sub": f"u{i}"}, SECRET, algorithm="HS256")
    commands = (
        orjson.dumps({"id": 1, "connect": {"token": token, "name": "bench"}})
        + b"\n"
        + orjson.dumps({"id": 2, "subscribe": {"channel": f"sp{i}"}})
    )
    return head + masked_text_frame(commands)


async def _reply(loop: asyncio.AbstractEventLoop, client: socket.socket) -> None:
    """Reads until the subscribe reply (id 2) came: each read awaits readability, so the
    reads a connection costs do not depend on how long the replies take."""
    data = b""
    while b'"id":2' not in data:
        chunk = await loop.sock_recv(client, 65536)
        if not chunk:
            raise RuntimeError("the server closed a connection")
        data += chunk
    if b'"error"' in data:
        raise RuntimeError(f"a command failed: {data[-300:]!r}")


async def _batch(lean: Any, sends: list[bytes], keep: list[socket.socket]) -> None:
    """Connects one batch of clients; returns once each has its subscribe reply."""
    loop = asyncio.get_running_loop()
    clients = []
    for data in sends:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        await loop.connect_accepted_socket(lean, ours)
        theirs.send(data)
        clients.append(theirs)
    keep.extend(clients)
    await asyncio.wait_for(asyncio.gather(*(_reply(loop, c) for c in clients)), 30)


async def _run(connections: int, engine: str, redis_port: int, workdir: Path) -> float:
    """The child's work; returns the CPU seconds the measured connections took."""
    from app.config import load_config
    from app.hosting.server import build_server

    cfg: dict[str, Any] = {
        # No ping within a run: under valgrind a run lasts minutes, and pings, then pong
        # timeouts and their disconnects, would add work that grows with the wall time (a
        # loaded box made counts of the same code differ by 40 %).
        "client": {"token": {"hmac_secret_key": SECRET}, "ping_interval": "1h"},
        "log": {"level": "error"},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
    }
    if engine == "redis":
        address = f"redis://127.0.0.1:{redis_port}"
        cfg["engine"] = {"type": "redis", "redis": {"address": address, "prefix": "ci"}}
    path = workdir / "config.json"
    path.write_text(json.dumps(cfg))
    runner = build_server(load_config(str(path), env={}))
    await runner.setup()
    keep: list[socket.socket] = []
    try:
        sends = [client_bytes(i) for i in range(connections + WARMUP)]
        await _batch(runner.server, sends[connections:], keep)  # engine up, paths warm
        t0 = time.process_time()
        for lo in range(0, connections, BATCH):
            await _batch(runner.server, sends[lo : min(connections, lo + BATCH)], keep)
        return time.process_time() - t0
    finally:
        for c in keep:
            c.close()
        await runner.cleanup()


def _child(connections: int, engine: str, redis_port: int) -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="cfpy-conn-instr-") as tmp:
        spent = uvloop.run(_run(connections, engine, redis_port, Path(tmp)))
    print(json.dumps({"cpu_s": spent}))


def _count(connections: int, engine: str, redis_port: int, valgrind: bool) -> float:
    """Instructions (valgrind) or CPU seconds (native) of one child run."""
    cmd = [sys.executable, "-m", "bench.connect_instructions", "--child"]
    cmd += [str(connections), engine, str(redis_port)]
    return callgrind.count(cmd, valgrind)


def measure(connections: int, engine: str, valgrind: bool) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(callgrind.redis_server()) if engine == "redis" else 0
        if not valgrind:
            spent = _count(connections, engine, port, False)
            return {"engine": engine, "cpu_us_per_connect": round(spent / connections * 1e6, 1)}
        few = max(connections // 3, 1)
        low = _count(few, engine, port, True)
        high = _count(connections, engine, port, True)
    per = round((high - low) / (connections - few))
    return {"engine": engine, "instructions_per_connect": per}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(prog="python -m bench.connect_instructions", description=__doc__)
    ap.add_argument("--connections", type=int, default=600, help="in the larger run")
    ap.add_argument("--engine", choices=("redis", "memory"), default="redis")
    ap.add_argument("--native", action="store_true", help="CPU time instead of valgrind")
    o = ap.parse_args()
    if not 3 <= o.connections <= 9000:  # two fds each, under the 20,000 open files allowed
        ap.error("--connections: 3 to 9000")
    print(json.dumps(measure(o.connections, o.engine, not o.native)))


if __name__ == "__main__":
    main()
