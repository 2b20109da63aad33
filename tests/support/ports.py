"""TCP ports on 127.0.0.1 for the processes tests start.

`free_port()` asks the OS for a port that was free a moment ago; a process started on it may
still lose a race for it, so starters that can tell (redis-server exits) retry on a new one.
`accepts(port)` says whether something listens there now.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to 127.0.0.1:`port` is accepted now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
