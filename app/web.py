"""aiohttp application factory: routes, the node's lifecycle, ordered cleanup."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from app.api.http import add_api_routes
from app.broker import Broker
from app.config import Config
from app.engines.memory import MemoryBroker, MemoryPresenceManager
from app.logs import set_node
from app.node import NODE_KEY, Node
from app.presence import PresenceManager
from app.transports.websocket import websocket_handler


def _engine_type(cfg: Config, section: str) -> tuple[str, object]:
    """broker / presence_manager sections, when enabled, override engine.type."""
    sub = getattr(cfg, section)
    if sub.enabled:
        return sub.type, sub.redis
    return cfg.engine.type, cfg.engine.redis


def create_node(cfg: Config) -> Node:
    broker_type, broker_redis = _engine_type(cfg, "broker")
    presence_type, presence_redis = _engine_type(cfg, "presence_manager")
    broker: Broker
    presence: PresenceManager
    if broker_type == "redis":
        from app.engines.redis import create_redis_engine

        broker, presence = create_redis_engine(broker_redis)
        if presence_type != "redis":
            presence = MemoryPresenceManager()
        elif presence_redis is not broker_redis and presence_redis != broker_redis:
            presence = create_redis_engine(presence_redis)[1]
    else:
        broker = MemoryBroker()
        if presence_type == "redis":
            from app.engines.redis import create_redis_engine

            presence = create_redis_engine(presence_redis)[1]
        else:
            presence = MemoryPresenceManager()
    return Node(cfg, broker, presence)


async def health_handler(request: web.Request) -> web.Response:
    if not request.app[NODE_KEY].healthy:
        return web.json_response({"error": "engine unavailable"}, status=500)
    return web.json_response({})


def create_app(cfg: Config) -> web.Application:
    app = web.Application(client_max_size=max(cfg.websocket.message_size_limit, 1 << 20) * 64)
    node = create_node(cfg)
    set_node(node.id)
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
