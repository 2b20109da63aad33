"""The listening socket holds a burst of pending connections, as Go's listener does.

Centrifugo listens with the kernel's net.core.somaxconn. aiohttp's gunicorn worker would
listen again with 128: a reconnect burst beyond that overflowed the accept queue, the kernel
dropped the SYNs, and each of those clients waited a full second for its retry.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from .helpers import ServerHandle, start_server
from .redis_e2e_helpers import worker_pids

BURST = 400  # well above aiohttp's 128, well below the fd limit and somaxconn (4096)
# The kernel retries a dropped SYN after 1 s: a connection held by the backlog completes
# long before that.
HANDSHAKE_WINDOW = 0.8


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerHandle]:
    handle = start_server({})
    try:
        yield handle
    finally:
        handle.stop()


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except OSError:
        return 0


def test_a_stalled_worker_still_has_the_whole_burst_queued(srv: ServerHandle) -> None:
    if _somaxconn() <= BURST:
        pytest.skip("net.core.somaxconn caps every listener below the burst")
    (pid,) = worker_pids(srv)
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    os.kill(pid, signal.SIGSTOP)  # nobody accepts: only the backlog holds the connections
    try:
        for _ in range(BURST):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", srv.port))
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE)
        connected = 0
        deadline = time.monotonic() + HANDSHAKE_WINDOW
        while connected < BURST and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.05):
                sel.unregister(key.fileobj)
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                connected += 1
    finally:
        os.kill(pid, signal.SIGCONT)
        sel.close()
        for s in socks:
            s.close()
    assert connected == BURST
    # The worker serves again once it runs: the queued connections did not wedge it.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
        c.sendall(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(64).startswith(b"HTTP/1.1 ")
