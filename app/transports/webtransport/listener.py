"""The HTTP/3 listener of a worker: a UDP socket on the main port, aioquic's QuicServer on it,
and `Alt-Svc` on the TCP responses that advertise it.

Centrifugo (internal/app/mux.go) listens on UDP at the external HTTP address when
`http_server.http3.enabled`, with that address's TLS, and has every response there carry
quic-go's `Alt-Svc: h3=":<port>"; ma=2592000` (SetQUICHeaders). Here the same, per worker:

- Under gunicorn with several workers the master binds one UDP socket per worker slot, all
  with SO_REUSEPORT on the main port, and keeps them open (app/hosting/listeners.py, as it
  does for TCP); each worker serves its slot's socket (`udp_slots.inherited`). The kernel
  spreads datagrams over the group by a hash of the 4-tuple, so every packet of a QUIC
  connection (one client address and port) reaches the worker that holds its state.
  Because the master holds every slot's socket, the group never changes size: a worker's
  death moves no other worker's connections (a group that shrank and grew again would
  re-map the hash, and the surviving workers' sessions would land on the replacement).
  The sessions of a killed worker die with it (its replacement does not know them; the
  browser notices at its idle timeout or its next write, centrifuge-js reconnects with
  backoff and recovers from the engine by offset and epoch); packets hashed to that slot
  meanwhile wait in the socket's buffer for the replacement. No connection migration: a
  client whose address changes lands on any worker and reconnects.
- One worker, or `serve()` in a test: the worker binds the socket itself.

The listener starts with the application, after the node. At a stop aiohttp runs
`on_shutdown` (the node's drain: every WebTransport client gets 3001 through its session)
before the cleanup contexts, so the QUIC server closes after the sessions were told.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from aioquic.asyncio.server import QuicServer

from app.config import Config
from app.node import NODE_KEY
from app.transports.webtransport import udp_slots
from app.transports.webtransport.h3 import Endpoint, H3Server
from app.transports.webtransport.quic_config import quic_configuration

log = logging.getLogger("centrifugo.webtransport")
# aioquic logs several info lines per QUIC handshake under "quic": kept to warnings, so a
# server log at info has one line per event of ours, not per packet exchange of theirs.
logging.getLogger("quic").setLevel(logging.WARNING)

# quic-go's SetQUICHeaders: the advertisement stays valid for 30 days.
ALT_SVC_MAX_AGE = 2592000

QUIC_SERVER = web.AppKey("quic_server", QuicServer)


def alt_svc(port: int) -> str:
    """The `Alt-Svc` value quic-go sets for an HTTP/3 server on `port`."""
    return f'h3=":{port}"; ma={ALT_SVC_MAX_AGE}'


def _bind(cfg: Config) -> socket.socket:
    """This process's own UDP socket on the main address (one worker, tests)."""
    host = cfg.http_server.address or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp_slots.size_buffers(sock)
        sock.bind((host, cfg.http_server.port))
    except OSError:
        sock.close()
        raise
    return sock


def add_listener(app: web.Application, cfg: Config) -> None:
    """Serve HTTP/3 beside the application when `http_server.http3.enabled` (WebTransport
    sessions when `webtransport.enabled`; every other request gets 421, h3.py)."""
    if not cfg.http_server.http3.enabled:
        return
    quic_config = quic_configuration(cfg.http_server.tls)
    prefix = cfg.webtransport.handler_prefix.rstrip("/") or "/"
    server_cfg = cfg.http_server
    internal_port = server_cfg.internal_port if server_cfg.internal_port != server_cfg.port else 0

    async def quic_ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        sock = udp_slots.inherited() or _bind(cfg)
        port = sock.getsockname()[1]
        # An endpoint that never matches when WebTransport is off: every request gets 421.
        endpoint = Endpoint(
            node=app[NODE_KEY],
            path=prefix if cfg.webtransport.enabled else "",
            message_size_limit=cfg.webtransport.message_size_limit,
        )
        transport, server = await loop.create_datagram_endpoint(
            lambda: QuicServer(
                configuration=quic_config,
                create_protocol=functools.partial(H3Server, endpoint=endpoint),
            ),
            sock=sock,
        )
        app[QUIC_SERVER] = server
        header = alt_svc(port)

        async def advertise(request: web.Request, response: web.StreamResponse) -> None:
            # Not on a separate internal port: Centrifugo's HTTP/3 is the external port's.
            sock = request.transport.get_extra_info("sockname") if request.transport else None
            if not (internal_port and sock is not None and sock[1] == internal_port):
                response.headers.setdefault("Alt-Svc", header)

        app.on_response_prepare.append(advertise)
        log.info(
            "serving HTTP/3 (WebTransport %s) on UDP port %d",
            prefix if cfg.webtransport.enabled else "off",
            port,
        )
        try:
            yield
        finally:
            server.close()  # CONNECTION_CLOSE to every connection, socket closed
            transport.close()

    app.cleanup_ctx.append(quic_ctx)
