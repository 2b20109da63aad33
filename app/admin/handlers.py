"""The admin routes, as Centrifugo's `internal/admin/handlers.go` serves them under
`admin.handler_prefix`:

- `{prefix}/admin/init`: `{"insecure", "edition", "authenticated"}` for the UI's first look;
- `POST {prefix}/admin/auth`: form field `password` against `admin.password` (constant-time
  compare) → `{"token": ...}` signed with `admin.secret` (app/admin/tokens.py); 400 when
  either is unset or the password is wrong; attempts limited per client address (429, ours);
- `POST {prefix}/admin/api`: `Authorization: token <t>` (nothing needed with
  `admin.insecure`), else 401; the legacy `{"method", "params"}` command stream served by the
  same executor as the HTTP API;
- ours, for the web UI: `POST {prefix}/admin/live` (app/admin/live.py) and
  `POST {prefix}/admin/tail` (a connection token for the live tail, app/auth/admin_tail.py);
- `{prefix}/...`: the web UI (app/admin/static.py), registered last: with an empty prefix it
  is the catch-all, as in Centrifugo's mux.

Every route is named `admin...`, so the port split (app/web.py) keeps them on the internal
port unless `admin.external`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from app.admin import tokens
from app.admin.live import live
from app.admin.login_limit import LoginLimiter
from app.admin.static import DevProxy, StaticFiles, packaged_web_root
from app.api.http import legacy_commands_handler
from app.auth import admin_tail
from app.config import Config
from app.node import NODE_KEY
from app.transports.admission import origin_allowed

log = logging.getLogger("centrifugo.admin")

ROUTE_PREFIX = "admin"  # every admin route's name starts with it (the port split reads it)
MAX_AUTH_BODY = 1 << 20
Handler = Callable[
    [web.Request], Awaitable[web.StreamResponse]
]  # Centrifugo reads at most 1 MB of an auth request


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _bearer(request: web.Request) -> str:
    """The token of `Authorization: token <t>` ("" when absent or another scheme)."""
    parts = request.headers.get("Authorization", "").split()
    if len(parts) == 2 and parts[0].lower() == "token":
        return parts[1]
    return ""


class AdminHandlers:
    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._admin = cfg.admin
        self._limiter = LoginLimiter()
        self._legacy = legacy_commands_handler(cfg)
        self._tail_key = admin_tail.tail_key(cfg.admin.secret)

    def _authenticated(self, request: web.Request) -> bool:
        if self._admin.insecure:
            return True
        token = _bearer(request)
        return bool(self._admin.secret and token and tokens.valid(self._admin.secret, token))

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        """None when the request may use the admin API; otherwise its 401."""
        if self._admin.insecure:
            return None
        if not self._admin.secret:
            log.error("admin request refused: admin.secret is not set")
            return web.Response(status=401)
        if not self._authenticated(request):
            log.info("admin request refused: %s: bad or missing admin token", request.path)
            return web.Response(status=401)
        return None

    async def init(self, request: web.Request) -> web.Response:
        return _json(
            {
                "insecure": self._admin.insecure,
                "edition": "oss",
                "authenticated": self._authenticated(request),
            }
        )

    async def auth(self, request: web.Request) -> web.Response:
        address = request.remote or ""
        if not self._limiter.allow(address):
            log.info("admin sign-in from %s: rate limited", address)
            retry = str(self._limiter.retry_after(address))
            return web.Response(
                status=429, text="Too Many Requests\n", headers={"Retry-After": retry}
            )
        password, secret = self._admin.password, self._admin.secret
        if not password or not secret:
            log.error("admin sign-in refused: admin.password and admin.secret must be set")
            return web.Response(status=400, text="Bad Request\n")
        given = await _form_password(request)
        if given is not None and hmac.compare_digest(given.encode(), password.encode()):
            log.info("admin sign-in from %s: signed in", address)
            return _json({"token": tokens.issue(secret)})
        log.info("admin sign-in from %s: wrong password", address)
        return web.Response(status=400, text="Bad Request\n")

    async def api(self, request: web.Request) -> web.StreamResponse:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        response: web.StreamResponse = await self._legacy(request)
        return response

    async def live(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        return _json(await live(request.app[NODE_KEY]))

    async def tail(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        channel = body.get("channel") if isinstance(body, dict) else None
        problem = self._tail_problem(request, channel)
        if problem:
            log.info("admin live tail refused: %s", problem)
            return _json({"error": problem}, 400)
        assert self._tail_key is not None and isinstance(channel, str)  # _tail_problem checked
        return _json(
            {"token": admin_tail.mint(self._tail_key, channel), "url": self._ws_url(request)}
        )

    def _tail_problem(self, request: web.Request, channel: Any) -> str:
        cfg = self._cfg
        if not isinstance(channel, str) or not channel:
            return "channel required"
        if len(channel) > cfg.channel.max_length:
            return f"channel longer than channel.max_length ({cfg.channel.max_length})"
        if self._tail_key is None:
            return "the live tail needs admin.secret set (it signs the tail's connection token)"
        if cfg.websocket.disabled:
            return "the live tail needs the WebSocket transport (websocket.disabled is set)"
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, cfg.client.allowed_origins):
            return (
                f"the live tail connects from this page's origin {origin}: "
                "add it to client.allowed_origins"
            )
        return ""

    def _ws_url(self, request: web.Request) -> str:
        """Where the UI opens its WebSocket: this host, and the client port when the admin
        UI is on the internal port."""
        cfg = self._cfg
        internal = cfg.http_server.internal_port
        split = bool(internal) and internal != cfg.http_server.port and not self._admin.external
        if split:
            scheme = "wss" if cfg.http_server.tls.enabled else "ws"
            host = f"{request.url.host}:{cfg.http_server.port}"
        else:
            scheme = "wss" if request.secure else "ws"
            host = request.host
        return f"{scheme}://{host}{cfg.websocket.handler_prefix}"


async def _form_password(request: web.Request) -> str | None:
    """The `password` field of the form body or the query, as Go's FormValue reads it."""
    if request.content_length is not None and request.content_length > MAX_AUTH_BODY:
        return None
    if request.body_exists:
        form = await request.post()
        value = form.get("password")
        if isinstance(value, str):
            return value
    return request.query.get("password")


def _post_only(handler: Handler) -> Handler:
    async def post_only(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        return await handler(request)

    return post_only


def add_admin_routes(app: web.Application, cfg: Config) -> None:
    """The admin API and web UI; call after every other route (the UI's route is a catch-all
    when the prefix is empty). Nothing unless `admin.enabled`."""
    if not cfg.admin.enabled:
        return
    h = AdminHandlers(cfg)
    prefix = cfg.admin.handler_prefix.rstrip("/")
    add = app.router.add_route
    add("*", f"{prefix}/admin/init", h.init, name=f"{ROUTE_PREFIX}-init")
    for name, handler in (("auth", h.auth), ("api", h.api), ("live", h.live), ("tail", h.tail)):
        # Every method routed here, so another one is a 405 (Centrifugo's middleware.Post),
        # not the UI route's 404.
        add("*", f"{prefix}/admin/{name}", _post_only(handler), name=f"{ROUTE_PREFIX}-{name}")
    if cfg.admin.web_proxy_address:
        proxy = DevProxy(cfg.admin.web_proxy_address)

        async def close_proxy(app: web.Application) -> None:
            await proxy.close()

        app.on_cleanup.append(close_proxy)
        add("*", f"{prefix}/{{path:.*}}", proxy, name=f"{ROUTE_PREFIX}-ui")
        return
    root = Path(cfg.admin.web_path) if cfg.admin.web_path else packaged_web_root()
    add("GET", f"{prefix}/{{path:.*}}", StaticFiles(root), name=f"{ROUTE_PREFIX}-ui")
