"""A throwaway PostgreSQL cluster for the tests: `PostgresServer` runs initdb and postgres on
a free 127.0.0.1 port in a temporary directory, restartable, removed at stop.

Binaries: initdb and postgres from PATH when present (Debian's PostgreSQL), else the ones
the `pgserver` wheel of the `[test]` extra ships (pgserver/pginstall/bin), so a machine
without apt-get runs these tests too. `require()` answers the bin folder or skips the test
(fails it under CI, the environment variable CI).

PostgreSQL refuses to run as root: under root the cluster runs as `nobody` (its directory
given to that user; a pgserver install under a home nobody cannot read is copied to /tmp
once).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

MISSING = (
    "no PostgreSQL server binaries: neither initdb/postgres on PATH nor the pgserver package "
    "(pip install -e '.[test]' brings it on Linux x86_64)"
)


@functools.cache
def bin_dir() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    spec = importlib.util.find_spec("pgserver")  # not imported: its import does I/O
    if spec is None or spec.origin is None:
        return None
    pg_bin = Path(spec.origin).parent / "pginstall" / "bin"
    return pg_bin if (pg_bin / "postgres").exists() else None


def require() -> Path:
    import pytest

    found = bin_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


def _runnable_by(user: pwd.struct_passwd, bindir: Path) -> Path:
    """`bindir`, or a copy of its install under /tmp when `user` cannot reach it."""
    try:
        probe = subprocess.run(
            [str(bindir / "postgres"), "--version"], user=user.pw_uid, capture_output=True
        )
        if probe.returncode == 0:
            return bindir
    except PermissionError:
        pass  # a folder on the way is closed to `user`
    # pgserver's binaries find their libraries at $ORIGIN/../../../pgserver.libs (the
    # wheel's layout): copy pgserver/pginstall and pgserver.libs side by side.
    site = bindir.parent.parent.parent
    copy = Path(tempfile.gettempdir()) / f"centrifugo-py-pgserver-{os.getuid()}"
    if not (copy / "pgserver" / "pginstall" / "bin" / "postgres").exists():
        shutil.copytree(site / "pgserver" / "pginstall", copy / "pgserver" / "pginstall")
        shutil.copytree(site / "pgserver.libs", copy / "pgserver.libs")
        for path in (copy, *copy.rglob("*")):  # readable, folders enterable, by `user`
            path.chmod(path.stat().st_mode | (0o055 if path.is_dir() else 0o044))
    return copy / "pgserver" / "pginstall" / "bin"


class PostgresServer:
    """One cluster: `start()`, `stop()`, `restart()`; `dsn` for user postgres (trust)."""

    def __init__(self, bindir: Path) -> None:
        self.port = free_port()
        self._user: pwd.struct_passwd | None = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        self._bin = _runnable_by(self._user, bindir) if self._user else bindir
        self.dir = Path(tempfile.mkdtemp(prefix="centrifugo-py-pg-"))
        self._data = self.dir / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        subprocess.run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self._data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - handed to the process
        self._proc = subprocess.Popen(
            [
                str(self._bin / "postgres"),
                "-D",
                str(self._data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=log,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
        )
        log.close()
        # Ready means the server answers a session, not that the port is open: PostgreSQL
        # accepts TCP while still starting up and refuses sessions then ("the database
        # system is starting up"), which a caller would race. pg_isready asks the protocol.
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.dir / 'postgres.log').read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError("postgres did not start")
            time.sleep(0.05)

    def ready(self) -> bool:
        """The server accepts sessions (pg_isready's exit 0; 1 = starting up, 2 = no answer)."""
        probe = subprocess.run(
            [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-U", "postgres", "-t", "1"],
            capture_output=True,
        )
        return probe.returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, data kept."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(2)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
