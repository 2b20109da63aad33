"""Opening one of the engine's own connections to Redis: dial, then handshake.

Every raw connection (an implicit pipeline's, a PUB/SUB reader's) opens here: the dial
(TCP, a unix socket, or TLS with the endpoint's TLSDial: app/engines/redis/tls.py), then
AUTH, CLIENT SETNAME and SELECT written in one packet and every reply awaited before the
connection is handed to its owner's protocol. A command must never run as another user or
in another database because its handshake failed, and the owner never sees a handshake
reply: its protocol receives `connection_made` once the connection is ready, then only
the replies to what it wrote. The redis-py clients (clients.py) make their own handshake
from the same settings (username, password, client_name, db).

Where an endpoint is comes from the caller's `resolve` (a Sentinel-managed master, a
Cluster node for a partition), asked again for every connect: see shard.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import hiredis

from app.engines.redis.resp import pack_command
from app.engines.redis.tls import TLSDial

__all__ = ["Endpoint", "handshake_commands", "open_connection"]

P = TypeVar("P", bound=asyncio.Protocol)


@dataclass(slots=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str = ""
    username: str = ""
    password: str = ""
    tls: TLSDial | None = None  # never over unix_path
    client_name: str = ""  # CLIENT SETNAME in the handshake ("": none, or the reader's own)

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """`ssl` of asyncio's create_connection to this endpoint."""
        return None if self.tls is None else self.tls.context

    @property
    def server_hostname(self) -> str | None:
        """`server_hostname` of create_connection: checked against the certificate, SNI."""
        return None if self.tls is None else self.tls.server_hostname(self.host)


def handshake_commands(ep: Endpoint, db: int, default_name: str) -> list[tuple[str | int, ...]]:
    """AUTH (with the user when there is one), CLIENT SETNAME (the endpoint's client_name,
    else `default_name`; none if both are empty), SELECT (unless db 0)."""
    commands: list[tuple[str | int, ...]] = []
    if ep.password:
        if ep.username:
            commands.append(("AUTH", ep.username, ep.password))
        else:
            commands.append(("AUTH", ep.password))
    name = ep.client_name or default_name
    if name:
        commands.append(("CLIENT", "SETNAME", name))
    if db:
        commands.append(("SELECT", db))
    return commands


class _Handshake(asyncio.Protocol):
    """The protocol of a connection until its handshake is answered."""

    def __init__(self, replies: int) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting = replies
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection gives a stream transport; asyncio.Protocol's signature says
        # BaseTransport, which has no write().
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting and not self.done.done():
            reply = self.reader.gets()
            if reply is False:
                return
            self.waiting -= 1
            if isinstance(reply, hiredis.ReplyError):
                self.done.set_exception(reply)  # the first refusal; the rest is moot
            elif not self.waiting:
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}" if exc else "closed"))


async def open_connection(
    ep: Endpoint,
    protocol: Callable[[], P],
    *,
    connect_by: float | None,
    handshake_timeout: float | None,
    db: int = 0,
    default_name: str = "",
) -> P:
    """A connection to `ep`, handshake done, handed to a new `protocol()`.

    `connect_by` is the loop time the dial must be done by (None: no bound);
    `handshake_timeout` bounds the handshake's round trip (None or 0: none). Raises
    TimeoutError for either, OSError (ConnectionRefusedError, ssl.SSLError ...) for a
    failed dial, hiredis.ReplyError for a refused handshake command (the first one),
    ConnectionError when the connection closed before the handshake was answered. Nothing
    is left open behind a failure.
    """
    loop = asyncio.get_running_loop()
    commands = handshake_commands(ep, db, default_name)
    hs: _Handshake
    async with asyncio.timeout_at(connect_by):
        if ep.unix_path:
            _, hs = await loop.create_unix_connection(
                lambda: _Handshake(len(commands)), ep.unix_path
            )
        else:
            _, hs = await loop.create_connection(
                lambda: _Handshake(len(commands)),
                ep.host,
                ep.port,
                ssl=ep.ssl_context,
                server_hostname=ep.server_hostname,
            )
    transport = hs.transport
    try:
        if commands:
            assert transport is not None
            transport.write(b"".join([pack_command(c) for c in commands]))
            async with asyncio.timeout(handshake_timeout or None):
                await hs.done
        if hs.transport is None:  # answered, then closed before this coroutine resumed
            raise ConnectionError("closed")
    except BaseException:
        if hs.transport is not None:
            hs.transport.abort()
        raise
    finally:
        if not hs.done.done():
            hs.done.cancel()  # no later close sets an exception nobody retrieves
    assert transport is not None
    owner = protocol()
    transport.set_protocol(owner)
    owner.connection_made(transport)
    return owner
