"""A free TCP port on 127.0.0.1 for the processes the benches start (bench.runner,
bench.chaos): the benches' one copy (bench/ never imports tests/, which has its own in
tests/support/ports.py)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
