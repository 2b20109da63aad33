"""The UDP half of the worker slots (app/hosting/listeners.py): one SO_REUSEPORT socket per
slot on the main port, bound and kept by the gunicorn master, and the one a worker inherits.

Why the master keeps them (app/transports/webtransport/listener.py has the whole story): a
reuseport group maps each datagram's 4-tuple hash onto its sockets by position, so a group
that loses a socket and gets a new one re-maps flows and moves live QUIC connections to
workers that do not know them. Held by the master, the group never changes while it runs.

`inherit` is called in the worker right after the fork (gunicorn's post_fork); `inherited`
is read once when the worker's HTTP/3 listener starts. Module state, per process: a worker
serves exactly one slot.
"""

from __future__ import annotations

import socket

_inherited: socket.socket | None = None

# quic-go's DesiredReceiveBufferSize and DesiredSendBufferSize. At the kernel's default
# (208 KiB) one 1000-session fan-out run added 2,243 to RcvbufErrors in /proc/net/snmp
# (datagrams dropped before the worker read them); with 4 MiB, none.
BUFFER_SIZE = 7 << 20
# Linux's SO_SNDBUFFORCE and SO_RCVBUFFORCE (asm-generic/socket.h); Python's socket module
# does not name them.
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33


def size_buffers(sock: socket.socket) -> None:
    """Raise the socket's receive and send buffers toward BUFFER_SIZE: SO_*BUFFORCE when
    the process may (root, CAP_NET_ADMIN), else as far as net.core.[rw]mem_max allows, as
    quic-go does."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_SIZE)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_SIZE)
            except OSError:
                pass  # the kernel's default stays


def bind_group(address: tuple[str, int], slots: int) -> list[socket.socket]:
    """`slots` UDP sockets on `address` in one reuseport group (OSError when the port is
    taken by another process)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    group: list[socket.socket] = []
    try:
        for _ in range(slots):
            s = socket.socket(family, socket.SOCK_DGRAM)
            group.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            size_buffers(s)
            s.bind(group[0].getsockname() if len(group) > 1 else address)
    except OSError:
        for s in group:
            s.close()
        raise
    return group


def inherit(sock: socket.socket) -> None:
    """This worker serves `sock` (its slot's)."""
    global _inherited
    _inherited = sock


def inherited() -> socket.socket | None:
    """The slot socket this worker inherited, or None (one worker, in-process servers)."""
    return _inherited
