"""TCP ports on 127.0.0.1 for the processes tests start.

`free_port()` is bench/ports.py's: a port the OS says is free, reserved so that no other test
(in any xdist worker) or bench gets it before the process it is meant for binds it. A process
started on it may still lose it to something outside this project, so starters that can tell
(redis-server exits) retry on a new one. `accepts(port)` says whether something listens there
now.
"""

from __future__ import annotations

import socket

from bench.ports import free_port

__all__ = ["accepts", "free_port"]


def accepts(port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to 127.0.0.1:`port` is accepted now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
