"""The admin web UI's files: the build shipped in `app/admin/web/` (plain ES modules, served
as they are), a directory of another build (`admin.web_path`), or a running development
server (`admin.web_proxy_address`), as Centrifugo's admin handler chooses between them."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger("centrifugo.admin")

# The UI loads only its own files and talks only to this server (the live tail's WebSocket may
# be on the client port, hence ws:/wss:); it is never framed by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host"}


def packaged_web_root() -> Path:
    return Path(str(resources.files("app.admin").joinpath("web")))


class StaticFiles:
    """Files under `root`; `""` and directory paths answer with their `index.html`."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        rel = request.match_info.get("path", "")
        if rel == "" or rel.endswith("/"):
            rel += "index.html"
        target = (self._root / rel).resolve()
        if not target.is_relative_to(self._root) or not target.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(target, headers=SECURITY_HEADERS)


class DevProxy:
    """Requests for the UI passed to a running development build (`admin.web_proxy_address`),
    the path after the admin prefix kept."""

    def __init__(self, address: str) -> None:
        self._base = address.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        log.info("using admin web reverse proxy to %s", address)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        url = self._base + "/" + request.match_info.get("path", "")
        if request.query_string:
            url += "?" + request.query_string
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS
        )
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=await request.read()
            ) as upstream:
                body = await upstream.read()
                out = CIMultiDict(
                    (k, v)
                    for k, v in upstream.headers.items()
                    if k.lower() not in _HOP_HEADERS and k.lower() != "content-length"
                )
                return web.Response(status=upstream.status, body=body, headers=out)
        except aiohttp.ClientError as e:
            log.info("admin web reverse proxy: %s: %s", url, e)
            return web.Response(status=502, text="Bad Gateway\n")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
