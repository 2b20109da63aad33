"""Deployment artefacts (Procfile, Dockerfile, Helm chart) checked with real tools and processes.

Shared helpers live here: starting a server command with a clean environment, waiting for its
/health, and a raw WebSocket + HTTP API round trip. Redis comes from the session fixture
`e2e_redis_url` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import jwt

# Re-exported for the deploy tests (`from . import free_port`).
from tests.support.ports import free_port as free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def clean_env(
    extra: Mapping[str, str] | None = None, path_first: Sequence[str] = ()
) -> dict[str, str]:
    """A minimal environment as a platform would give it: PATH, HOME, locale, nothing else.

    No CENTRIFUGO_*, WEB_CONCURRENCY or PYTHONPATH from the caller can leak in.
    `path_first` directories go in front of PATH (e.g. a virtualenv's bin/).
    """
    path = [*path_first, os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
    env = {
        "PATH": os.pathsep.join(path),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    if extra:
        env.update(extra)
    return env


def start(
    cmd: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session (so the whole process group can be stopped)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    """Poll `url` until it answers 200; fail with the log if the process exits or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited with {proc.returncode} before ready:\n{log_path.read_text()}"
            )
        try:
            if http_get(url, timeout=0.5)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(
                f"{url} not healthy after {READY_TIMEOUT}s:\n{log_path.read_text()}"
            )
        time.sleep(0.05)  # readiness poll interval, not synchronisation


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process group, SIGKILL after STOP_TIMEOUT; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    return proc.returncode


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (gunicorn workers of a master), read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def wait_workers(pid: int, count: int, timeout: float = READY_TIMEOUT) -> list[int]:
    """Wait until the master `pid` has exactly `count` worker processes."""
    deadline = time.monotonic() + timeout
    while True:
        children = child_pids(pid)
        if len(children) == count:
            return children
        if time.monotonic() > deadline:
            raise AssertionError(f"master {pid} has workers {children}, expected {count}")
        time.sleep(0.05)  # poll interval, not synchronisation


def make_token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


def api_call(
    base_url: str, api_key: str, method: str, params: Mapping[str, Any]
) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{base_url}/api/{method}",
        data=json.dumps(params).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": api_key},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def _next_reply(ws: aiohttp.ClientWebSocketResponse, want: str, timeout: float = 5.0) -> dict:
    """The next reply/push object that has key `want` (frames may hold several lines)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - loop.time()))
        assert msg.type == aiohttp.WSMsgType.TEXT, f"unexpected frame {msg!r}"
        for line in msg.data.split("\n"):
            if line.strip():
                obj = json.loads(line)
                if want in obj:
                    return obj


async def ws_round_trip(
    base_url: str,
    hmac_key: str,
    api_key: str,
    channel: str = "deploy",
    api_base: str | None = None,
) -> dict[str, Any]:
    """Connect with a JWT over a raw WebSocket, subscribe, publish via the HTTP API with
    X-API-Key (at `api_base`, default `base_url`) and receive the publication.
    Returns the connect reply."""
    ws_url = base_url.replace("http://", "ws://") + "/connection/websocket"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url) as ws:
            await ws.send_str(
                json.dumps({"id": 1, "connect": {"token": make_token(hmac_key, "42")}})
            )
            connect = await _next_reply(ws, "connect")
            assert connect.get("id") == 1 and "error" not in connect, connect
            assert connect["connect"].get("client"), connect
            await ws.send_str(json.dumps({"id": 2, "subscribe": {"channel": channel}}))
            sub = await _next_reply(ws, "subscribe")
            assert sub.get("id") == 2 and "error" not in sub, sub

            status, body = await asyncio.to_thread(
                api_call,
                api_base or base_url,
                api_key,
                "publish",
                {"channel": channel, "data": {"n": 1}},
            )
            assert status == 200 and "error" not in body, (status, body)
            push = await _next_reply(ws, "push")
            assert push["push"]["channel"] == channel, push
            assert push["push"]["pub"]["data"] == {"n": 1}, push
            return connect
