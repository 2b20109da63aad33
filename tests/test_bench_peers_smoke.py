"""Smoke of the peers stage (`python -m bench.peers`, issue 23 target 5): each peer starts and
delivers everything to the load generator's clients, and the Node socket.io peer's publisher
sends exactly what `@socket.io/redis-emitter` sends. Nothing here is about speed.

The peers' toolchains are not in the `test` extra (they are the `bench` extra's and npm's):
each test skips with the reason when its toolchain is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.peers.publishers import EMITTER_LUA
from bench.peers.stage import NODE_DIR, channels_missing
from tests.support.bench_stage import run_stage
from tests.support.redis_server import RedisProcess


def require_node() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        pytest.skip("the socket.io peer's npm packages are not installed (npm ci)")


def require_channels() -> None:
    why = channels_missing()
    if why is not None:
        pytest.skip(f"Django Channels peer: {why}")


@pytest.fixture(scope="module")
def redis_url(redis_server_available: str) -> Iterator[str]:
    server = RedisProcess()
    try:
        server.start()
        yield server.address
    finally:
        server.cleanup()


@pytest.mark.timeout(60)
def test_emitter_lua_sends_the_real_emitters_bytes(redis_url: str) -> None:
    """One publication through the real @socket.io/redis-emitter and one through the bench's Lua
    loop, same room and data: the same Redis channel and the same msgpack bytes."""
    require_node()
    r = redis.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    pubsub.psubscribe("socket.io#/#*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    pad = "x" * 63
    port = str(r.connection_pool.connection_kwargs["port"])
    data = json.dumps({"ts": 2, "n": 7, "p": pad})
    node = [str(shutil.which("node")), str(NODE_DIR / "emit_once.js"), "--redis-port", port]
    subprocess.run([*node, "--room", "room_7", "--data", data], check=True, timeout=30)
    # publication s=7 of a job over 10 rooms goes to room_7, data n=7
    r.eval(EMITTER_LUA, 0, "room_", 10, 7, 1, "2", pad)
    got: list[tuple[bytes, bytes]] = []
    while len(got) < 2:
        msg = pubsub.get_message(timeout=5)
        assert msg is not None, got
        if msg["type"] == "pmessage":
            got.append((msg["channel"], msg["data"]))
    assert got[0][0] == b"socket.io#/#room_7#"
    assert got[0] == got[1]
    pubsub.close()
    r.close()


@pytest.mark.timeout(240)
def test_each_peer_starts_and_delivers(tmp_path: Path, redis_server_available: str) -> None:
    """20 clients per target, both shapes: every publication of every target delivered."""
    targets = ["app", "raw"]
    if shutil.which("node") and (NODE_DIR / "node_modules" / "socket.io").is_dir():
        targets.append("node")
    if channels_missing() is None:
        targets.append("channels")
    if len(targets) == 2:
        pytest.skip("neither the node socket.io nor the Django Channels peer can run here")
    out = tmp_path / "peers.json"
    argv = ["--targets", ",".join(targets), "--subs", "20", "--duration", "0.5"]
    argv += ["--rate-personal", "400", "--rate-broadcast", "2000", "--procs", "1"]
    argv += ["--no-npm-install", "--out", str(out)]
    proc = run_stage("bench.peers", *argv, timeout=230)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert {(r["shape"], r["target"]) for r in rows} == {
        (s, t) for s in ("personal", "broadcast") for t in targets
    }
    for r in rows:
        assert r["published"] > 0 and r["publish_errors"] == 0, r
        assert r["lost"] == 0 and r["delivered"] == r["expected"] > 0, r
        assert r["closed_by_server"] == 0, r
        assert set(r["cpu_s_per_1M"]) == {"worker", "redis", "loadgen", "publisher"}
        assert r["ratio_to_raw"] is not None
    assert "xnode" in proc.stdout and "deliv/s" in proc.stdout
