"""Listening sockets under gunicorn: one SO_REUSEPORT listener per worker slot (issue 15).

With one listening socket shared by every worker, the worker that wakes first accepts the
whole queue: 1,000 WebSocket connects arriving at once gave the larger worker 0.56-0.64 of
them (single runs up to 1.0) while connects arriving one by one split evenly. Here the master
binds one listener per worker slot on the same address, all with SO_REUSEPORT, and the kernel
hashes each new connection onto one of them; each worker accepts only on its slot's socket.
`python -m bench.spread` (2 workers, 1,000 connects at once, 3 runs per design, alternating;
2-core VM shared with other jobs), two sessions:

    design     larger worker's share (median; runs)   connects/s (median)
    reuseport  0.511 (0.523 0.511 0.504)              1,552
    shared     0.620 (0.623 0.595 0.620)              1,195
    reuseport  0.508 (0.525 0.508 0.504)              8,245
    shared     0.560 (0.537 0.574 0.560)              5,068

The hash split of 1,000 connections has a standard deviation of 0.016, so 0.40-0.60 holds by
six of them whatever the machine does; connects/s was higher in both sessions (each new
connection wakes only its slot's worker instead of both).

Not chosen: bounding the accepts per loop turn. asyncio accepts up to the listen backlog per
wake-up, but uvloop (used where installed) hands the socket to libuv 1.52, which accepts
until EAGAIN with no bound and no longer reads UV_TCP_SINGLE_ACCEPT; a Python accept loop
(add_reader + connect_accepted_socket) would cost a task per connection on the connect path
issue 7 made lean. EPOLLEXCLUSIVE wakes one waiter but that one still drains the queue.

The cost is at a worker's exit: connections hashed to its slot wait until gunicorn's
replacement accepts them. After SIGTERM to one of 2 idle workers, 40 upgrades waited up to
0.36-0.49 s (drain, reap, fork, app start) against 0.01 s with the shared socket, where the
other worker takes everything at once. Nothing is lost, as the test proves for a SIGKILL.

Why the master holds every slot's socket (and not gunicorn's own `reuse_port`, which has each
worker bind its own socket after the fork): a socket leaves the reuseport group only when its
last file descriptor closes, and the connections queued on it are then reset. The master
keeps its descriptors until it stops, so a slot whose worker died (SIGKILL) or is being
rotated (`--max-requests`) keeps its queue, and the worker gunicorn forks in its place takes
the same slot and accepts what waited there, as a shared socket's backlog waits for a
restarted worker. No other socket of the master sits in the group: every listener the master
holds is some slot's, and every slot gets a worker.

What a worker must not keep: the other slots' descriptors. Each worker closes them right
after the fork, so that once the master has closed its listeners (shutdown) no draining
worker keeps a sibling's socket listening with nobody accepting on it.

`CFPY_LISTENERS=shared` (not a Centrifugo option: the benchmark compares both designs in one
run) keeps the shared socket; so does one worker, or a platform without SO_REUSEPORT.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

MODE_ENV = "CFPY_LISTENERS"
REUSEPORT, SHARED = "reuseport", "shared"


class SlottedWorker(Protocol):
    """A gunicorn worker that remembers its listener slot (assigned in the master)."""

    listener_slot: int
    sockets: list[Any]


class ListenError(Exception):
    """A slot listener could not be bound: one line, like gunicorn's "Connection in use"."""


def mode_from_env(workers: int) -> str:
    """The listener design for a run with `workers` processes."""
    wanted = os.environ.get(MODE_ENV, REUSEPORT)
    if wanted == SHARED or workers < 2 or not hasattr(socket, "SO_REUSEPORT"):
        return SHARED
    return REUSEPORT


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_group(address: tuple[str, int], slots: int, backlog: int) -> list[socket.socket]:
    """`slots` listening sockets on `address` in one reuseport group (the port of the first
    one for the others, so port 0 works too)."""
    group: list[socket.socket] = []
    try:
        for _ in range(slots):
            s = socket.socket(_family(address[0]), socket.SOCK_STREAM)
            group.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind(group[0].getsockname() if len(group) > 1 else address)
            s.listen(backlog)
    except OSError as e:
        for s in group:
            s.close()
        raise ListenError(
            f"can not listen on {address[0]}:{address[1]}: {e.strerror or e}"
        ) from None
    return group


class SlotListeners:
    """gunicorn hooks giving every worker slot its own SO_REUSEPORT listener per address.

    `settings()` returns the hooks to merge into gunicorn's settings: `on_starting` binds the
    groups and hands them to the arbiter as its listeners (it then binds nothing itself),
    `pre_fork` picks the new worker's slot in the master, `post_fork` leaves the worker only
    its slot's sockets.
    """

    def __init__(self, slots: int, backlog: int, udp: tuple[str, int] | None = None) -> None:
        self.slots = slots
        self.backlog = backlog
        # groups[a][k]: gunicorn's listener object of address a, slot k.
        self.groups: list[list[Any]] = []
        # HTTP/3: the UDP address whose per-slot sockets the master binds and keeps (their
        # group must never change size: app/transports/webtransport/udp_slots.py).
        self.udp = udp
        self.udp_group: list[socket.socket] = []

    def settings(self, post_fork: Callable[[Any, Any], None]) -> dict[str, Any]:
        def chained_post_fork(server: Any, worker: Any) -> None:
            post_fork(server, worker)
            self.post_fork(server, worker)

        return {
            "on_starting": self.on_starting,
            "pre_fork": self.pre_fork,
            "post_fork": chained_post_fork,
        }

    def on_starting(self, server: Any) -> None:
        from gunicorn.sock import create_sockets

        groups = [_bind_group(addr, self.slots, self.backlog) for addr in server.cfg.address]
        # gunicorn's wrappers (what its workers and aiohttp's sites expect), made from the
        # bound sockets' descriptors; the arbiter closes them all when it stops.
        wrapped = create_sockets(
            server.cfg, server.log, fds=[s.detach() for group in groups for s in group]
        )
        self.groups = [wrapped[i * self.slots : (i + 1) * self.slots] for i in range(len(groups))]
        server.LISTENERS = wrapped
        if self.udp is not None:
            from app.transports.webtransport import udp_slots

            try:
                self.udp_group = udp_slots.bind_group(self.udp, self.slots)
            except OSError as e:
                host, port = self.udp
                raise ListenError(
                    f"can not listen on UDP {host}:{port}: {e.strerror or e}"
                ) from None

    def pre_fork(self, server: Any, worker: SlottedWorker) -> None:
        # The slot with the fewest live workers: the one a dead or rotated worker left
        # (gunicorn forks its replacement once it has reaped it); during a reload (HUP) new
        # and old workers share a slot until the old ones exit.
        live = [0] * self.slots
        for other in server.WORKERS.values():
            live[other.listener_slot] += 1
        worker.listener_slot = live.index(min(live))

    def post_fork(self, server: Any, worker: SlottedWorker) -> None:
        slot = worker.listener_slot
        worker.sockets = [group[slot] for group in self.groups]
        for group in self.groups:
            for k, lnr in enumerate(group):
                if k != slot:
                    lnr.close()
        if self.udp_group:
            from app.transports.webtransport import udp_slots

            udp_slots.inherit(self.udp_group[slot])
            for k, udp in enumerate(self.udp_group):
                if k != slot:
                    udp.close()


def configure(
    options: dict[str, Any], workers: int, backlog: int, udp: tuple[str, int] | None = None
) -> None:
    """Merge the listener hooks for `workers` processes into gunicorn `options` (whose
    `post_fork`, if any, still runs first). `udp`: the HTTP/3 address, which gets a UDP
    socket per slot too (one worker binds its own)."""
    if mode_from_env(workers) != REUSEPORT:
        if udp is not None and workers > 1:
            # Workers sharing one UDP socket would each read some of a connection's packets.
            raise ListenError(f"HTTP/3 with {workers} workers needs {MODE_ENV}={REUSEPORT}")
        return
    keep = options.get("post_fork", _no_hook)
    options.update(SlotListeners(workers, backlog, udp).settings(post_fork=keep))


def _no_hook(server: Any, worker: Any) -> None:
    pass
