"""aiohttp application factory: routes, the node's lifecycle, ordered cleanup."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from app.api.http import add_api_routes
from app.config import Config
from app.engines.memory import MemoryBroker, MemoryPresenceManager
from app.node import NODE_KEY, Node
from app.transports.websocket import websocket_handler


def create_node(cfg: Config) -> Node:
    return Node(cfg, MemoryBroker(), MemoryPresenceManager())


async def health_handler(request: web.Request) -> web.Response:
    return web.json_response({})


def create_app(cfg: Config) -> web.Application:
    app = web.Application(client_max_size=max(cfg.websocket.message_size_limit, 1 << 20) * 64)
    node = create_node(cfg)
    app[NODE_KEY] = node

    async def node_ctx(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        yield
        await node.shutdown(cfg.shutdown.timeout)

    app.cleanup_ctx.append(node_ctx)

    async def on_shutdown(app: web.Application) -> None:
        # Close client sockets first so aiohttp's shutdown does not wait on them.
        await node.shutdown(cfg.shutdown.timeout)

    app.on_shutdown.append(on_shutdown)

    if not cfg.websocket.disabled:
        app.router.add_get(cfg.websocket.handler_prefix, websocket_handler)
    app.router.add_get(cfg.health.handler_prefix or "/health", health_handler)
    if not cfg.http_api.disabled:
        add_api_routes(app, cfg)
    return app
