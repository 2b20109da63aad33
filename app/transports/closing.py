"""Ending a connection whose peer may not be reading.

An asyncio (or uvloop) transport's `close()` first sends what it still buffers, with no
time limit, and only then closes the socket; closing a socket whose kernel send queue is
not empty leaves an orphan in FIN_WAIT1 that the kernel keeps retrying for minutes. A
peer that keeps its end open and reads nothing therefore held both forever (issue 14:
after 3008 the server end stayed ESTABLISHED with ~3.9 MB unsent; 100 such peers held
387 MB of kernel buffers and +60 MB RSS per worker).

`abort` drops a connection with everything it holds: SO_LINGER 0 makes the kernel answer
with RST and free the send queue at once. `close_within` closes gracefully once what was
written has left this host (so a peer that reads gets all of it, the close frame last),
and aborts when that takes longer than the write timeout.

Both touch the socket's file descriptor only while the transport still has it open
(`connected`): a closed descriptor's number may already belong to another connection.
aiohttp forgets a connection's transport before it is closed (`request.transport` is
None once aiohttp decided to close it), so the transport itself is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct

from aiohttp import web

# Linux ioctl: bytes in a TCP socket's send queue not sent yet (SIOCOUTQ also counts
# bytes sent but not acknowledged, which a peer that reads will acknowledge soon).
SIOCOUTQNSD = 0x894B
log = logging.getLogger("centrifugo.transports")

_LINGER_RST = struct.pack("ii", 1, 0)
_INT = struct.Struct("i")
# How often a closing connection with unsent bytes is looked at (only those, and only
# until they are gone or the timeout ends).
POLL_INTERVAL = 0.05
# Centrifugo gives each write of a streaming response (SSE, HTTP-stream, their
# unidirectional forms) one second (streamWriteTimeout) before treating the peer as gone.
STREAM_WRITE_TIMEOUT = 1.0


def connected(sock: asyncio.BaseTransport) -> bool:
    """Whether the transport still holds its socket open (asyncio's and uvloop's
    transports mark their socket object closed, fd -1, when they close it)."""
    raw = sock.get_extra_info("socket")
    return raw is not None and raw.fileno() >= 0


def unsent(sock: asyncio.WriteTransport) -> int:
    """Bytes written to `sock` that have not left this host: the transport's buffer plus
    the kernel's not-yet-sent queue (Linux; elsewhere the transport's buffer only)."""
    raw = sock.get_extra_info("socket")
    if raw is None or raw.fileno() < 0:
        return 0
    n = sock.get_write_buffer_size()
    with contextlib.suppress(OSError, ValueError):
        n += _INT.unpack(fcntl.ioctl(raw.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0]
    return n


def abort(sock: asyncio.WriteTransport) -> None:
    """Drop the connection now, with what it still holds unsent (RST)."""
    raw = sock.get_extra_info("socket")
    if raw is None or raw.fileno() < 0:
        return  # already closed
    with contextlib.suppress(OSError, ValueError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.abort()


def close_within(
    sock: asyncio.WriteTransport, timeout: float, loop: asyncio.AbstractEventLoop
) -> None:
    """Close once everything written has left this host; abort if that takes longer than
    `timeout` (or at once when `timeout` <= 0). `sock` may already be closing (aiohttp
    closes it itself after a closing handshake): then only the bound is added."""
    if unsent(sock) == 0:
        sock.close()
        return
    if timeout <= 0:
        abort(sock)
        return
    deadline = loop.time() + timeout

    def check() -> None:
        if not connected(sock):
            return
        if unsent(sock) == 0:
            sock.close()
        elif loop.time() >= deadline:
            abort(sock)
        else:
            loop.call_later(POLL_INTERVAL, check)

    loop.call_later(POLL_INTERVAL, check)


def release(sock: asyncio.BaseTransport | None, timeout: float) -> None:
    """Nothing more is sent on this connection (after a closing handshake, a peer that left,
    the end of a stream): close it once our bytes are out, drop it if they are not out
    within `timeout`. `sock` is the transport taken when the request began: aiohttp forgets
    it once it decides to close it."""
    if sock is not None and connected(sock):
        close_within(sock, timeout, asyncio.get_running_loop())  # type: ignore[arg-type]


async def write_stream(resp: web.StreamResponse, data: bytes) -> None:
    """One write of a streaming response; TimeoutError (an OSError) when the peer takes
    nothing for STREAM_WRITE_TIMEOUT (aiohttp waits for the buffer to drain)."""
    async with asyncio.timeout(STREAM_WRITE_TIMEOUT):
        await resp.write(data)


async def end_stream(resp: web.StreamResponse) -> None:
    """The last chunk of a streaming response, within STREAM_WRITE_TIMEOUT: aiohttp's
    write_eof waits for the buffer to drain, for ever if the peer reads nothing (its socket
    is then dropped by `release`)."""
    try:
        async with asyncio.timeout(STREAM_WRITE_TIMEOUT):
            await resp.write_eof()
    except (ConnectionError, OSError) as e:  # TimeoutError is an OSError
        log.debug("stream end not sent: %r", e)
