"""HTTP server API: `POST {prefix}/<method>` and the legacy `POST {prefix}` command stream.

Request handling order follows Centrifugo: unknown path 404, non-POST 405, bad API key 401
(empty body), undecodable body 400 (plain text), then HTTP 200 with `{"result": ...}` or
`{"error": {"code", "message"}}`. In transport error mode (`http_api.error_mode: transport` or
header `X-Centrifugo-Error-Mode: transport`) errors become `{"code", "message"}` bodies with
a mapped HTTP status; `batch` keeps its per-command errors and always answers 200.

Bodies are decoded by app/api/request.py, payloads kept as the bytes received. A batch longer
than one chunk (BATCH_CHUNK commands) is answered as it runs: the reply is streamed chunk by
chunk (chunked transfer encoding), so neither the decoded commands nor the replies of a
64 MB batch are ever held at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from aiohttp import web

from app.api import request as api_request
from app.api.batch import BATCH_CHUNK
from app.api.decode import METHODS
from app.api.errors import ApiDecodeError, api_error, error_body
from app.api.executor import ApiExecutor
from app.errors import ClientError
from app.node import NODE_KEY

if TYPE_CHECKING:
    from app.config import Config

log = logging.getLogger("centrifugo.api")

# Largest request body read (Centrifugo sets no limit; batches of publications can be big).
# A batch of this size holds the body, 48 bytes a command for its span, and one chunk
# decoded (see app/api/batch.py).
MAX_BODY_SIZE = 64 * 1024 * 1024

# api.proto Command.MethodType numbers used by the legacy `{"method": N}` form.
LEGACY_METHODS: dict[int, str] = {
    0: "publish",
    1: "broadcast",
    2: "unsubscribe",
    3: "disconnect",
    4: "presence",
    5: "presence_stats",
    6: "history",
    7: "history_remove",
    8: "channels",
    9: "info",
    10: "rpc",
    11: "subscribe",
    12: "refresh",
    33: "map_publish",
    34: "map_remove",
    35: "map_read_state",
    36: "map_read_stream",
    37: "map_stats",
    38: "map_clear",
    39: "shared_poll_publish",
}
# Every name of the MethodType enum after `refresh`, by number: the map methods and
# shared_poll_publish are served (LEGACY_METHODS), the others (PRO) answer 104, not 400.
_LEGACY_OTHER_NAMES: dict[str, int] = {
    name: num
    for num, name in enumerate(
        (
            "connections",
            "update_user_status",
            "get_user_status",
            "delete_user_status",
            "block_user",
            "unblock_user",
            "revoke_token",
            "invalidate_user_tokens",
            "device_register",
            "device_update",
            "device_remove",
            "device_list",
            "device_topic_list",
            "device_topic_update",
            "user_topic_list",
            "user_topic_update",
            "send_push_notification",
            "update_push_status",
            "cancel_push",
            "map_publish",
            "map_remove",
            "map_read_state",
            "map_read_stream",
            "map_stats",
            "map_clear",
            "shared_poll_publish",
        ),
        start=14,
    )
}
_LEGACY_BY_NAME: dict[str, int] = {
    **{name: num for num, name in LEGACY_METHODS.items()},
    **_LEGACY_OTHER_NAMES,
}

_TRANSPORT_STATUS = {100: 500, 102: 404, 104: 404, 107: 400, 108: 400, 112: 416, 113: 409}

_JSON = "application/json"


def _check_key(request: web.Request, key: str) -> bool:
    """X-API-Key, else `Authorization: apikey <key>`, then `?api_key=` as a fallback."""
    if not key:
        return False
    expected = key.encode()

    def same(value: str) -> bool:
        return hmac.compare_digest(expected, value.encode())

    ok = False
    header = request.headers.get("X-API-Key", "")
    if header:
        ok = same(header)
    else:
        parts = request.headers.get("Authorization", "").split()
        ok = len(parts) == 2 and parts[0].lower() == "apikey" and same(parts[1])
    if not ok and request.query_string:
        ok = same(request.query.get("api_key", ""))
    return ok


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_SIZE:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY_SIZE, actual_size=request.content_length
        )
    # One growing buffer, not a list of chunks joined at the end: a big body is held once.
    body = bytearray()
    while True:
        chunk = await request.content.read(1 << 16)
        if not chunk:
            break
        if len(body) + len(chunk) > MAX_BODY_SIZE:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_BODY_SIZE, actual_size=len(body) + len(chunk)
            )
        body += chunk
    return body  # type: ignore[return-value]  # a bytearray: msgspec and payload copies read it as bytes


def batch_command(span: msgspec.Raw) -> Any:
    """One batch command decoded from its span: the `decode` the executor's batch() takes."""
    try:
        return api_request.command(span)
    except api_request.BadBody as e:
        raise ApiDecodeError(str(e)) from None


def _ascii_batch_command(span: msgspec.Raw) -> Any:
    try:
        return api_request.command(span, utf8_checked=True)
    except api_request.BadBody as e:
        raise ApiDecodeError(str(e)) from None


def batch_decoder(body: bytes) -> Callable[[msgspec.Raw], Any]:
    """The `decode` for the commands of `body`: an ASCII body (one pass over it, in C) is
    UTF-8, so its commands are not checked one by one."""
    return _ascii_batch_command if body.isascii() else batch_command


def _bad_request(request: web.Request, reason: str) -> web.Response:
    log.info("api request rejected: %s %s: bad request: %s", request.method, request.path, reason)
    return web.Response(status=400, text="Bad Request\n")


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type=_JSON)


class _ApiHandlers:
    def __init__(self, cfg: Config) -> None:
        self.key: str = cfg.http_api.key
        self.insecure: bool = bool(cfg.http_api.insecure)
        self.transport_mode: bool = cfg.http_api.error_mode == "transport"
        self._node: Any = None
        self._executor: ApiExecutor | None = None

    def executor(self, request: web.Request) -> ApiExecutor:
        node = request.app[NODE_KEY]
        if self._executor is None or self._node is not node:
            self._node, self._executor = node, ApiExecutor(node)
        return self._executor

    def _precheck(self, request: web.Request) -> web.Response | None:
        if request.method != "POST":
            log.info(
                "api request rejected: %s %s: method not allowed", request.method, request.path
            )
            return web.Response(status=405, headers={"Allow": "POST"})
        if not self.insecure and not _check_key(request, self.key):
            why = "API key is not configured" if not self.key else "bad or missing API key"
            log.info("api request rejected: %s %s: %s", request.method, request.path, why)
            return web.Response(status=401)
        return None

    def method(self, name: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._method(name, request)

        return handler

    async def _method(self, name: str, request: web.Request) -> web.StreamResponse:
        rejected = self._precheck(request)
        if rejected is not None:
            return rejected
        if name == "batch":
            return await self._batch(request)
        try:
            params = api_request.params(name, await _read_body(request))
        except api_request.BadBody as e:
            return _bad_request(request, str(e))
        try:
            result = await self.executor(request).call(name, params)
        except ApiDecodeError as e:
            return _bad_request(request, e.detail)
        except ClientError as e:
            body = error_body(e)
            if self.transport_mode or (
                request.headers.get("X-Centrifugo-Error-Mode") == "transport"
            ):
                return _json(body, _TRANSPORT_STATUS.get(e.code, 500))
            return _json({"error": body})
        return _json({"result": result})

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        """A batch answers with its replies at the top level, not wrapped in `result`."""
        try:
            body = await _read_body(request)
            commands, parallel = api_request.batch(body)
        except api_request.BadBody as e:
            return _bad_request(request, str(e))
        chunks = self.executor(request).batch(commands, batch_decoder(body), parallel)
        try:
            # The first chunk comes once every command has decoded: a bad one is a 400.
            first = await anext(chunks, None)
        except ApiDecodeError as e:
            return _bad_request(request, e.detail)
        if first is None:
            return _json({"replies": []})
        if len(commands) <= BATCH_CHUNK:
            return _json({"replies": first})
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        try:
            await resp.prepare(request)
            await resp.write(b'{"replies":' + orjson.dumps(first)[:-1])
            del first
            async for chunk in chunks:
                await resp.write(b"," + orjson.dumps(chunk)[1:-1])
            await resp.write(b"]}")
            await resp.write_eof()
        except ConnectionResetError:
            # The caller went away: the commands already sent have run, the rest will not.
            log.info("api batch: client closed the connection before the reply was written")
        finally:
            await chunks.aclose()
        return resp

    async def legacy(self, request: web.Request) -> web.StreamResponse:
        rejected = self._precheck(request)
        if rejected is not None:
            return rejected
        return await self.legacy_commands(request)

    async def legacy_commands(self, request: web.Request) -> web.StreamResponse:
        """The legacy command stream of an already authorised request (the admin API's
        `/admin/api` authorises with its own token)."""
        body = await _read_body(request)
        if not body:
            return _bad_request(request, "empty body")
        try:
            commands = [_legacy_command(v) for v in api_request.legacy_stream(body)]
        except api_request.BadBody as e:
            return _bad_request(request, str(e))
        executor = self.executor(request)
        # Replies appended to one buffer: a list of orjson.dumps results would hold 4 KB
        # each (orjson's output buffer is not shrunk; 150k commands took 720 MB).
        out = bytearray()
        for i, (cmd_id, method, span) in enumerate(commands):
            if i and not i % BATCH_CHUNK:
                await asyncio.sleep(0)  # the loop's turn, as between a batch's chunks
            reply: dict[str, Any] = {}
            if cmd_id:
                reply["id"] = cmd_id
            try:
                name = LEGACY_METHODS.get(method)
                if name is None:
                    raise api_error(104)
                if span is None:
                    # Go decodes absent params as empty input: a decode error, except for
                    # info whose params are ignored.
                    if name != "info":
                        raise api_error(107)
                    params = None
                else:
                    try:
                        params = api_request.params(name, bytes(span))
                    except api_request.BadBody:
                        raise api_error(107) from None
                reply["result"] = await executor.call(name, params)
            except ClientError as e:
                reply["error"] = error_body(e)
            if out:
                out += b"\n"
            out += orjson.dumps(reply)
        return web.Response(body=out, content_type=_JSON)


def _legacy_command(
    value: tuple[Any, Any, msgspec.Raw | None] | None,
) -> tuple[int, int, msgspec.Raw | None]:
    """(id, method number, params span or None when absent) of one legacy command;
    BadBody when it cannot decode."""
    if value is None:
        return 0, 0, None
    cmd_id, method, span = value
    if cmd_id is None:
        cmd_id = 0
    elif isinstance(cmd_id, bool) or not isinstance(cmd_id, int) or not 0 <= cmd_id < 2**32:
        raise api_request.BadBody("id: expected uint32")
    if method is None:
        number = 0  # Go's zero value: publish
    elif isinstance(method, str):
        found = _LEGACY_BY_NAME.get(method.lower())
        if found is None:
            raise api_request.BadBody(f"unknown method {method!r}")
        number = found
    elif isinstance(method, int) and not isinstance(method, bool) and -(2**31) <= method < 2**31:
        number = method
    else:
        raise api_request.BadBody("method: expected string or number")
    return cmd_id, number, span


def legacy_commands_handler(cfg: Config) -> Any:
    """The legacy `{"method": ..., "params": ...}` command stream without the API key check,
    for the admin API (Centrifugo's admin handler serves the same executor's old route)."""
    return _ApiHandlers(cfg).legacy_commands


def add_api_routes(app: web.Application, cfg: Config) -> None:
    """Register the server API routes on `app` (nothing when `http_api.disabled`)."""
    if cfg.http_api.disabled:
        return
    handlers = _ApiHandlers(cfg)
    prefix = cfg.http_api.handler_prefix.rstrip("/")
    # Explicit paths (not `{method}`) so unknown methods fall through to a 404 and an empty
    # prefix does not shadow other single-segment routes.
    for name in sorted(METHODS):
        app.router.add_route("*", f"{prefix}/{name}", handlers.method(name))
    app.router.add_route("*", prefix or "/", handlers.legacy)
