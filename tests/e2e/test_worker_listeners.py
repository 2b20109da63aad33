"""Each worker accepts on its own SO_REUSEPORT listener; the master holds them all (issue 15).

With one listening socket shared by the workers, the worker that wakes first accepts every
queued connection. Here the kernel hashes each connection onto one worker slot's socket, so a
worker that runs can only take its slot's share, and a slot whose worker is gone keeps its
queue for the replacement (app/hosting/listeners.py). The spread of a real burst is measured by
`python -m bench.spread`, not here; these tests freeze workers (SIGSTOP) so that what each
one can accept is decided by the sockets alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from .helpers import ServerHandle, start_server
from .redis_e2e_helpers import RedisProcess, worker_pids

BURST = 400  # below somaxconn (4096) and the fd limit; split 200 +- 10 (1 sigma) by the hash
UPGRADE = (
    b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@pytest.fixture
def srv(redis_server: RedisProcess) -> Iterator[ServerHandle]:
    handle = start_server(
        {"engine": {"type": "redis", "redis": {"address": redis_server.address}}}, workers=2
    )
    try:
        _wait_workers_listening(handle, 2)
        yield handle
    finally:
        handle.stop()


def _listeners(port: int) -> dict[int, int]:
    """inode -> accept queue length of the listening TCP sockets on `port` (/proc/net/tcp)."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, queues, inode = cols[1], cols[3], cols[4], int(cols[9])
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    out[inode] = int(queues.split(":")[1], 16)  # rx_queue: waiting accepts
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listener_of(pid: int, port: int) -> set[int]:
    return _socket_inodes(pid) & set(_listeners(port))


def _established(pid: int, port: int) -> int:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.laddr.port == port and c.status == "ESTABLISHED")


def _wait(cond: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # polling /proc: there is no event to await for a peer's accept


def _wait_workers_listening(handle: ServerHandle, n: int) -> None:
    """Until `n` live workers each listen (their app booted and started its site)."""

    def ready() -> bool:
        pids = worker_pids(handle)
        return len(pids) == n and all(_listener_of(p, handle.port) for p in pids)

    _wait(ready, "workers did not start listening")


def test_each_worker_listens_on_its_own_socket_the_master_on_all(srv: ServerHandle) -> None:
    listeners = _listeners(srv.port)
    assert len(listeners) == 2, listeners  # one per worker slot, nothing else in the group
    a, b = worker_pids(srv)
    assert len(_listener_of(a, srv.port)) == 1 and len(_listener_of(b, srv.port)) == 1
    assert _listener_of(a, srv.port) != _listener_of(b, srv.port)
    assert _listener_of(srv.proc.pid, srv.port) == set(listeners)


def test_a_running_worker_takes_only_its_share_of_a_queued_burst(srv: ServerHandle) -> None:
    a, b = worker_pids(srv)
    (own_b,) = _listener_of(b, srv.port)
    socks: list[socket.socket] = []
    os.kill(a, signal.SIGSTOP)
    os.kill(b, signal.SIGSTOP)
    try:
        for _ in range(BURST):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", srv.port))
            socks.append(s)
        _wait(lambda: sum(_listeners(srv.port).values()) == BURST, "burst not queued")
        os.kill(a, signal.SIGCONT)
        # A accepts what its socket holds; with a shared socket it would take all of them.
        _wait(
            lambda: _established(a, srv.port) + _listeners(srv.port)[own_b] == BURST,
            "worker A did not accept its queue",
        )
        share = _established(a, srv.port) / BURST
        assert 0.3 < share < 0.7, share  # 8 standard deviations of the hash split
    finally:
        os.kill(b, signal.SIGCONT)
        os.kill(a, signal.SIGCONT)
    _wait(lambda: _established(b, srv.port) + _established(a, srv.port) == BURST, "not served")
    for s in socks:
        s.close()


async def _upgrade(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(UPGRADE)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()


def test_connections_queued_for_a_killed_worker_go_to_its_replacement(
    srv: ServerHandle,
) -> None:
    """gunicorn's own reuse_port binds a socket in each worker: SIGKILL closes it and the
    kernel resets what was queued on it. Here the master's descriptor keeps it."""
    _, b = worker_pids(srv)
    os.kill(b, signal.SIGSTOP)  # B's queue fills; A keeps serving its own

    async def burst() -> list[bytes | BaseException]:
        tasks = [asyncio.ensure_future(_upgrade(srv.port)) for _ in range(100)]
        # Until B's socket holds its share of them (A answers the others meanwhile).
        await asyncio.to_thread(
            _wait, lambda: max(_listeners(srv.port).values()) > 20, "nothing queued for B"
        )
        os.kill(b, signal.SIGKILL)
        return await asyncio.gather(*tasks, return_exceptions=True)

    heads = asyncio.run(burst())
    assert all(isinstance(h, bytes) and h.startswith(b"HTTP/1.1 101") for h in heads), [
        h for h in heads if not (isinstance(h, bytes) and h.startswith(b"HTTP/1.1 101"))
    ][:3]
    assert b not in worker_pids(srv) and len(worker_pids(srv)) == 2
