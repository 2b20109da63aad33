"""The whole server one worker runs: `build_server(cfg)`.

`app.web.create_app` is the aiohttp application (routes, the node's lifecycle). A worker serves
it through the runner made here, which adds what the application alone does not have: the
lean WebSocket server in front of aiohttp's request handling, the listen backlog and
SO_KEEPALIVE on its listeners, HTTPS on the ports that have TLS, and a drain-safe cleanup.
gunicorn's worker (app/hosting/gunicorn.py) hands it gunicorn's sockets; `serve(cfg)` starts
the same server in this process and event loop, on sockets it binds itself (tests, tools).

Importing this module does not import `app.web` (nor prometheus_client): the gunicorn master
imports it before it prepares multiprocess metrics.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from app.config import Config

# Pending connections a listener holds. The kernel caps it at net.core.somaxconn, which is
# what Go's listeners (Centrifugo's) ask for. aiohttp would listen again with 128: a burst of
# reconnects beyond that (a deploy, a network blip) overflowed it, and every dropped SYN left
# its client waiting a full second to retry.
LISTEN_BACKLOG = 65535

# Seconds an idle HTTP keep-alive connection stays open (gunicorn's `keepalive` setting).
KEEPALIVE_TIMEOUT = 75

# Pause between closing a worker's listeners and aiohttp closing its open connections.
LISTENER_CLOSE_GRACE = 0.1


def graceful_timeout(cfg: Config) -> int:
    """Whole seconds a worker gets to stop (gunicorn's `graceful_timeout`)."""
    return max(1, round(cfg.shutdown.timeout))


@dataclass(frozen=True)
class ServerSettings:
    """How one worker serves: the same values gunicorn's settings carry (app/hosting/gunicorn.py
    derives them from here), plus the TLS context of each local port that has one."""

    graceful_timeout: int
    keepalive_timeout: int = KEEPALIVE_TIMEOUT
    backlog: int = LISTEN_BACKLOG
    tls: Mapping[int, ssl.SSLContext | None] = field(default_factory=dict)

    @classmethod
    def for_config(
        cls, cfg: Config, tls: Mapping[int, ssl.SSLContext | None] | None = None
    ) -> ServerSettings:
        """Settings for `cfg`; `tls` defaults to the listeners' contexts (app/tls.py), which
        loads the certificates (a bad one raises ValueError)."""
        if tls is None:
            from app.tls import listener_contexts

            tls = listener_contexts(cfg)
        return cls(graceful_timeout=graceful_timeout(cfg), tls=dict(tls))

    @property
    def shutdown_timeout(self) -> float:
        """aiohttp's wait for open connections at cleanup, as aiohttp's worker computes it."""
        return self.graceful_timeout / 100 * 95


def bind_addresses(cfg: Config) -> list[tuple[str, int]]:
    """(host, port) of every listener: the main port, and the internal port when it is set
    apart (internal endpoints get their own listener; the app tells them apart by local port)."""
    server = cfg.http_server
    addresses = [(server.address or "0.0.0.0", server.port)]
    if server.internal_port and server.internal_port != server.port:
        host = server.internal_address or server.address or "0.0.0.0"
        addresses.append((host, server.internal_port))
    return addresses


class DrainingRunner(web.AppRunner):
    """The AppRunner gunicorn's aiohttp worker would build, with the lean WebSocket server,
    per-port TLS, the listen backlog and a drain-safe cleanup."""

    def __init__(self, app: web.Application, settings: ServerSettings) -> None:
        super().__init__(
            app,
            keepalive_timeout=settings.keepalive_timeout,
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,
        )
        self.settings = settings

    async def _make_server(self) -> Any:
        # Plain upgrades to the WebSocket endpoint skip aiohttp's request handling
        # (issue 7: connect rate); every other request still goes to aiohttp.
        from app.transports.websocket.lean import LeanServer

        server = await super()._make_server()
        return LeanServer(server, self.app, self.settings.keepalive_timeout)

    def _reg_site(self, site: Any) -> None:
        # aiohttp's gunicorn worker makes its sites with the default backlog (128), and
        # starting a site listens again on gunicorn's socket with it.
        site._backlog = self.settings.backlog
        # Accepted sockets inherit SO_KEEPALIVE: aiohttp sets it per connection, which
        # the lean WebSocket path skips.
        sock = getattr(site, "_sock", None)
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            # HTTPS on the listeners that have TLS (app/tls.py); gunicorn's own
            # certfile setting would put one certificate on every port.
            site._ssl_context = self.settings.tls.get(sock.getsockname()[1])
        super()._reg_site(site)

    async def cleanup(self) -> None:
        # On Python 3.11 aiohttp marks every connection closing right after the listeners
        # close; one accepted a moment earlier whose request was not read yet drops that
        # request and hangs until shutdown_timeout (worker rotation under load hits it).
        # A short pause lets such requests start, so they finish like any in-flight call.
        for site in list(self.sites):
            _leave_listener_to_uvloop(site)
            await site.stop()
        await asyncio.sleep(LISTENER_CLOSE_GRACE)
        await super().cleanup()


def build_server(cfg: Config, settings: ServerSettings | None = None) -> DrainingRunner:
    """The server of `cfg` as one worker runs it: `app.web.create_app(cfg)` behind a
    DrainingRunner. Call it in the event loop that will run it (the node is made here).
    `settings` default to ServerSettings.for_config(cfg)."""
    # Imported here, not at module level: see the module docstring.
    from app.web import create_app

    if settings is None:
        settings = ServerSettings.for_config(cfg)
    return DrainingRunner(create_app(cfg), settings)


async def serve(cfg: Config, settings: ServerSettings | None = None) -> DrainingRunner:
    """Start the server of `cfg` in this process and event loop, listening on
    bind_addresses(cfg) (port 0 takes a free port: see `runner.addresses`). Stop it with
    `await runner.cleanup()`, which drains as a worker does on SIGTERM."""
    runner = build_server(cfg, settings)
    await runner.setup()
    try:
        for host, port in bind_addresses(cfg):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server(
                (host, port), family=family, backlog=runner.settings.backlog
            )
            await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _leave_listener_to_uvloop(site: Any) -> None:
    """uvloop closes a listening socket's fd itself and then calls close() on the object
    it was given (gunicorn's socket wrapper), which logs "Error while closing socket
    [Errno 9]" at every shutdown. Detached, that object no longer owns the fd (the
    asyncio loop closes through the object: nothing to do there)."""
    if "uvloop" not in type(asyncio.get_running_loop()).__module__:
        return
    inner = getattr(getattr(site, "_sock", None), "sock", None)
    if isinstance(inner, socket.socket):
        inner.detach()
