"""aiohttp application factory: routes, the node's lifecycle, ordered cleanup.

The whole server a worker runs is `app.hosting.server.build_server`, around `create_app`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from app import metrics
from app.admin.handlers import ROUTE_PREFIX as ADMIN_ROUTES
from app.admin.handlers import add_admin_routes
from app.api.executor import ApiExecutor
from app.api.grpc import add_grpc_api
from app.api.http import add_api_routes
from app.config import Config
from app.consumers.build import Consumers
from app.engines.build import build_engines
from app.logs import set_node
from app.node import NODE_KEY, Node
from app.transports import emulation, http_stream, sse
from app.transports.uni_grpc import add_uni_grpc
from app.transports.uni_http_stream import add_routes as add_uni_http_stream_routes
from app.transports.uni_sse import add_routes as add_uni_sse_routes
from app.transports.websocket.handler import websocket_handler
from app.transports.websocket.uni import add_routes as add_uni_websocket_routes


def create_node(cfg: Config) -> Node:
    engines = build_engines(cfg)
    return Node(cfg, engines.broker, engines.presence, engines.controller, engines.map_broker)


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = await metrics.render_async()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def health_handler(request: web.Request) -> web.Response:
    if not request.app[NODE_KEY].healthy:
        return web.json_response({"error": "engine unavailable"}, status=500)
    return web.json_response({})


def _port_split(cfg: Config) -> list[Any]:
    """With http_server.internal_port set, API, metrics, health and admin answer only
    there and client transports only on the main port, as in Centrifugo."""
    internal_port = cfg.http_server.internal_port
    if not internal_port or internal_port == cfg.http_server.port:
        return []
    internal = [cfg.prometheus.handler_prefix, cfg.health.handler_prefix or "/health"]
    if not cfg.http_api.external:
        internal.append(cfg.http_api.handler_prefix)
    admin_internal = cfg.admin.enabled and not cfg.admin.external

    def is_internal(request: web.Request) -> bool:
        # Admin routes by name: with an empty handler_prefix the admin UI is the root.
        route = request.match_info.route.name or ""
        if admin_internal and route.startswith(ADMIN_ROUTES):
            return True
        path = request.path
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in internal if p)

    @web.middleware
    async def split(request: web.Request, handler: Any) -> web.StreamResponse:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        on_internal = sock is not None and len(sock) > 1 and sock[1] == internal_port
        if on_internal != is_internal(request):
            raise web.HTTPNotFound()
        return await handler(request)

    return [split]


def _instrumentation(cfg: Config) -> list[Any]:
    """`prometheus.instrument_http_handlers`, only with metrics on (as Centrifugo)."""
    if cfg.prometheus.enabled and cfg.prometheus.instrument_http_handlers:
        return [metrics.http_middleware()]
    return []


# Young-generation threshold: a connect allocates a few hundred tracked objects, so
# Python's default (700) runs a collection every few connects; most of what they
# allocate lives as long as the connection, and each collection walks it again.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Fewer cyclic-GC passes in a worker holding thousands of connections (issue 7):
    everything loaded at start-up is frozen out of collection, and young collections
    run less often. Measured: ~0.3 ms less CPU per connect at 10k connections, and full
    collections (a pause proportional to all live objects) become rare."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(cfg: Config) -> web.Application:
    """The aiohttp application of `cfg`: every route and the node's lifecycle.

    A worker serves it through `app.hosting.server.build_server(cfg)`, which adds the lean
    WebSocket server, listener settings, TLS per port and the drain-safe cleanup: start
    that one (or `app.hosting.server.serve(cfg)`) to run the real server in-process."""
    app = web.Application(
        client_max_size=max(cfg.websocket.message_size_limit, 1 << 20) * 64,
        middlewares=_port_split(cfg) + _instrumentation(cfg),
    )
    metrics.enable(cfg.prometheus.enabled, cfg.prometheus.recovered_publications_histogram)
    node = create_node(cfg)
    set_node(node.id)
    app[NODE_KEY] = node

    async def node_ctx(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        tune_gc()
        yield
        await node.shutdown(cfg.shutdown.timeout)

    app.cleanup_ctx.append(node_ctx)

    async def consumers_ctx(app: web.Application) -> AsyncIterator[None]:
        # After the node starts and, cleanup running in reverse, stopped before it: the
        # consumers' last commands still find the engine up. Every worker runs every
        # enabled consumer; the backend splits the partitions (app/consumers/__init__.py).
        consumers = Consumers.from_config(cfg, ApiExecutor(node, "consuming"), node.id)
        await consumers.start()
        yield
        await consumers.stop()

    if cfg.consumers:
        app.cleanup_ctx.append(consumers_ctx)

    async def on_shutdown(app: web.Application) -> None:
        # Close client sockets first so aiohttp's shutdown does not wait on them; the
        # engine closes in the cleanup context, after in-flight API calls are done.
        await node.drain(cfg.shutdown.timeout)

    app.on_shutdown.append(on_shutdown)

    if not cfg.websocket.disabled:
        app.router.add_get(cfg.websocket.handler_prefix, websocket_handler)
    http_stream.add_routes(app, cfg)
    sse.add_routes(app, cfg)
    emulation.add_routes(app, cfg)
    if cfg.health.enabled:
        app.router.add_get(cfg.health.handler_prefix or "/health", health_handler)
    if cfg.prometheus.enabled:
        metrics.init_node()
        app.router.add_get(cfg.prometheus.handler_prefix, metrics_handler)
    if not cfg.http_api.disabled:
        add_api_routes(app, cfg)
    add_uni_websocket_routes(app, cfg)
    add_uni_sse_routes(app, cfg)
    add_uni_http_stream_routes(app, cfg)
    add_grpc_api(app, cfg)
    add_uni_grpc(app, cfg)
    if cfg.http_server.http3.enabled:
        # Imported only then: aioquic stays unloaded otherwise.
        from app.transports.webtransport.listener import add_listener

        add_listener(app, cfg)
    add_admin_routes(app, cfg)  # last: with an empty prefix its UI route is the catch-all
    return app
