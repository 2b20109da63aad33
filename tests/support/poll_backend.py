"""The application backend of shared poll tests: a real aiohttp server on a free loopback
port answering `POST /<path>` refresh calls from `items` (channel -> key -> reply item),
as centrifuge-js's mock backend does, and recording each request with its arrival time.

Tests await the requests they expect (`wait`: the log wakes waiters on arrival), never a
fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.support.ports import free_port

__all__ = ["Backend"]


class Backend:
    """The app backend: answers `POST /<path>` refresh calls from `items` (channel ->
    key -> reply item) and records each (path, request body)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.arrived: list[float] = []  # time.monotonic() of each request, in order
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path}", self._refresh)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _refresh(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.match_info["path"], body))
        self.arrived.append(time.monotonic())
        for pred, fut in self._waiters:
            if not fut.done() and pred():
                fut.set_result(None)
        stored = self.items.get(body["channel"], {})
        out = [
            stored[i["key"]] | {"key": i["key"]}
            for i in body.get("items", [])
            if i["key"] in stored
        ]
        return web.json_response({"result": {"items": out}})

    def of(self, channel: str) -> list[dict[str, Any]]:
        return [body for _, body in self.requests if body["channel"] == channel]

    async def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove((pred, fut))

    def set(self, channel: str, key: str, data: Any, version: int = 0, **extra: Any) -> None:
        item: dict[str, Any] = {"data": data, **extra}
        if version:
            item["version"] = version
        self.items.setdefault(channel, {})[key] = item
