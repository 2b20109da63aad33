"""Whether a request is admitted: Centrifugo's ConnLimit middleware and origin check, in one place.

Every connection endpoint (bidirectional WebSocket on both paths, SSE, HTTP-stream,
uni_websocket, uni_sse, uni_http_stream, uni_grpc) calls `check` before it reads anything
else, and answers the `Refusal` it returns: HTTP 503 for a draining node or a limit, as
Centrifugo's middleware does (internal/middleware/connlimit.go), in Centrifugo's order:

1. `client.connection_rate_limit`: at most N new connection requests per second. A token
   bucket of N tokens refilled at N per second (Centrifugo 6 built it with a refill of one
   token per second, a bug fixed upstream in centrifugal/centrifugo#1207 to the
   documented N per second). Every request to a connection endpoint takes a token,
   refused or not (the middleware runs before the origin and CORS checks).
2. `client.connection_limit`: at most N connections on this node.

uni_grpc is not an HTTP endpoint: Centrifugo applies neither limit there (the rate limit
is documented as not affecting it); it asks with `rate=False` for the connection limit
this server has always applied to it. A draining node refuses first, taking no token.

3. The request's Origin, for the endpoints where Centrifugo checks it (WebSocket,
   uni_websocket, SSE, HTTP-stream, and the emulation endpoint, which asks with
   `connection=False`: it opens no connection, so only its origin is checked): HTTP 403
   when `client.allowed_origins` has no match. The unidirectional HTTP streams and
   uni_grpc pass no origin, as Centrifugo checks none there (its CORS middleware only
   adds headers).

Per node, not per worker: gunicorn workers are separate processes, and a per-node rate
split as N/workers would refuse early on the busier worker (the kernel does not spread a
burst evenly). The bucket's two numbers therefore live in a shared memory page created
in the master before it forks (`share_across_workers`), under a POSIX record lock on
the same file (released by the kernel if a worker dies holding it); two syscalls per
connection request, and only when the limit is set. Without that call (one process, the
in-process test apps) the bucket is private to the process.

Refusals are logged at most once per LOG_INTERVAL per reason (Centrifugo throttles its
connection-limit warning the same way): a reconnect storm must not flood the log.
"""

from __future__ import annotations

import fcntl
import fnmatch
import logging
import mmap
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

if TYPE_CHECKING:  # the master imports this module before it forks: keep it light
    from app.node import Node

log = logging.getLogger("centrifugo.admission")

LOG_INTERVAL = 3.0
SHUTTING_DOWN = "shutting down"
RATE_LIMITED = "connection rate limit reached"
CONNECTION_LIMIT = "connection limit reached"
INVALID_ORIGIN = "Invalid origin"

_STATE = struct.Struct("dd")  # tokens, monotonic time of the last update


class _Lock(Protocol):
    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


class _NoLock:
    """One process, one event loop: the bucket is only touched synchronously."""

    def __enter__(self) -> object:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _FileLock:
    """POSIX record lock (per process, dropped by the kernel when the holder dies)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> object:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


class RateBucket:
    """Token bucket: `capacity` tokens, refilled at `capacity` per second (Go's
    rate.NewLimiter(rate.Limit(n), n)). Starts full."""

    def __init__(self, state: bytearray | mmap.mmap, lock: _Lock) -> None:
        self._state = state
        self._lock = lock

    def allow(self, capacity: int) -> bool:
        with self._lock:
            tokens, stamp = _STATE.unpack_from(self._state)
            now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
            if stamp == 0.0:
                tokens = float(capacity)
            else:
                tokens = min(float(capacity), tokens + (now - stamp) * capacity)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            _STATE.pack_into(self._state, 0, tokens, now)
        return allowed


_bucket = RateBucket(bytearray(_STATE.size), _NoLock())
_shared_file: object = None  # keeps the shared page's file open in every process
_logged: dict[str, float] = {}


def share_across_workers() -> None:
    """Called once in the master before it forks its workers: the rate bucket then lives
    in a page every worker maps, so `connection_rate_limit` holds for the whole node.
    The file is unlinked at once: nothing is left behind when the processes end."""
    global _bucket, _shared_file
    f = tempfile.TemporaryFile(prefix="centrifugo-admission-")
    os.ftruncate(f.fileno(), mmap.PAGESIZE)
    page = mmap.mmap(f.fileno(), mmap.PAGESIZE, flags=mmap.MAP_SHARED)
    _shared_file = f
    _bucket = RateBucket(page, _FileLock(f.fileno()))


def _log_throttled(reason: str, limit: int) -> None:
    now = time.monotonic()
    if now - _logged.get(reason, -LOG_INTERVAL) >= LOG_INTERVAL:
        _logged[reason] = now
        log.warning("%s (limit %d): new connections get 503", reason, limit)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Same rule as Centrifugo: no Origin header passes; otherwise a glob must match."""
    if not origin:
        return True
    origin = origin.lower()
    return any(p == "*" or fnmatch.fnmatchcase(origin, p.lower()) for p in allowed)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not admitted, and the HTTP status that says it."""

    status: int  # 503 (draining, a limit) or 403 (origin)
    reason: str  # the plain-text body

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        """The answer of an aiohttp handler (`headers`: the CORS ones, where wanted)."""
        return web.Response(status=self.status, text=self.reason, headers=headers)

    def head(self) -> bytes:
        """The same answer as raw bytes, for the lean WebSocket path (it closes after it)."""
        body = self.reason.encode()
        phrase = "Forbidden" if self.status == 403 else "Service Unavailable"
        return (
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (self.status, phrase.encode(), len(body), body)
        )


_SHUTTING_DOWN = Refusal(503, SHUTTING_DOWN)
_RATE_LIMITED = Refusal(503, RATE_LIMITED)
_CONNECTION_LIMIT = Refusal(503, CONNECTION_LIMIT)
_INVALID_ORIGIN = Refusal(403, INVALID_ORIGIN)


def check(
    node: Node, origin: str | None = None, *, rate: bool = True, connection: bool = True
) -> Refusal | None:
    """None admits the request; otherwise the refusal to answer.

    `origin`: the request's Origin header where the endpoint checks it (None passes).
    `rate=False`: the connection rate limit does not apply (uni_grpc).
    `connection=False`: the request opens no connection (emulation): origin only."""
    if connection:
        if node.closing:
            return _SHUTTING_DOWN
        cfg = node.config.client
        per_second = cfg.connection_rate_limit
        if rate and per_second > 0 and not _bucket.allow(per_second):
            _log_throttled(RATE_LIMITED, per_second)
            return _RATE_LIMITED
        limit = cfg.connection_limit
        if limit > 0 and node.hub.num_clients >= limit:
            _log_throttled(CONNECTION_LIMIT, limit)
            # Imported here: the master loads this module before metrics are set up.
            from app import metrics

            metrics.child(metrics.CONNECTION_LIMIT_REFUSED).inc()
            return _CONNECTION_LIMIT
    if not origin_allowed(origin, node.config.client.allowed_origins):
        log.info("request Origin %r is not allowed", origin)
        return _INVALID_ORIGIN
    return None
