"""Free TCP ports on 127.0.0.1 for the processes the benches and the tests start: the one copy
(tests/support/ports.py re-exports it; bench/ never imports tests/).

Asking the OS for a port (bind to port 0, close) only says the port was free a moment ago: the
process it is meant for binds it a second or more later, and in between another `free_port()`
call may get the same port. That is not rare: the kernel picks at random among ~14,000 ports
of one parity, and 20,000 picks in a row here returned one of the previous five 14 times. A
bench.peers run once gave the app and the Django Channels peer the same port: the app lost the
bind, the peer answered the app's readiness probe, and the stage waited out its timeouts.

So every port handed out is also reserved, for `RESERVED_FOR` seconds, by a file named after it
in a directory every process of this user shares (O_EXCL create: one winner across processes,
pytest-xdist workers and a stage's helpers alike); a port whose reservation is held by somebody
else is skipped. By the time the reservation runs out the process it was for has bound the
port (or given up), and the kernel does not hand out a port a listener holds.

The ports come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`,
32768-60999 by default), from 10000 up: the kernel gives the ephemeral ones to every outgoing
connection too (a load generator opens thousands a second), and a server cannot bind a port an
outgoing connection holds. Where that range starts too low to leave room below it, the OS's
pick (bind to port 0) is the candidate instead.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from pathlib import Path

RESERVED_FOR = 600.0  # s; a server binds its port within seconds, 60 at most on a loaded box
_DIR = Path(tempfile.gettempdir()) / f"cfpy-ports-{os.getuid()}"
_swept = False
LOWEST = 10000  # below: ports that well-known and registered services use
# os.urandom's: tests that seed the `random` module (hypothesis does) pick the same sequence
# in every process otherwise.
_random = random.SystemRandom()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that no other `free_port()` call
    (in any process of this user) hands out for the next `RESERVED_FOR` seconds."""
    global _swept
    _DIR.mkdir(mode=0o700, exist_ok=True)
    if not _swept:  # once per process: expired reservations go, so the directory stays small
        _sweep()
        _swept = True
    while True:
        port = _candidate()
        if port and _reserve(_DIR / str(port)):
            return port


def _candidate() -> int:
    """A port nothing is bound to on 127.0.0.1 now (0: that one was taken, pick again)."""
    low = _ephemeral_low()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", _random.randrange(LOWEST, low) if low - LOWEST >= 1000 else 0))
        except OSError:  # in use (a listener, a connection, a TIME_WAIT)
            return 0
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _reserve(path: Path) -> bool:
    """Creates the reservation `path`; an expired one is taken over, a live one is not."""
    if _create(path):
        return True
    try:
        if time.time() - path.stat().st_mtime < RESERVED_FOR:
            return False
        # Expired: of several processes taking it over at once, one rename succeeds.
        claimed = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}")
        path.rename(claimed)
        claimed.unlink()
    except FileNotFoundError:  # released or taken over meanwhile: try the create again
        pass
    return _create(path)


def _create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def _sweep() -> None:
    now = time.time()
    for path in _DIR.iterdir():
        try:
            if now - path.stat().st_mtime >= RESERVED_FOR:
                path.unlink()
        except FileNotFoundError:  # another process swept it first
            pass
