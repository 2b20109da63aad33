"""HTTP server API: `POST {prefix}/<method>` and the legacy `POST {prefix}` command stream.

Request handling order follows Centrifugo: unknown path 404, non-POST 405, bad API key 401
(empty body), undecodable body 400 (plain text), then HTTP 200 with `{"result": ...}` or
`{"error": {"code", "message"}}`. In transport error mode (`http_api.error_mode: transport` or
header `X-Centrifugo-Error-Mode: transport`) errors become `{"code", "message"}` bodies with
a mapped HTTP status; `batch` keeps its per-command errors and always answers 200.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from app.api.executor import METHODS, ApiDecodeError, ApiExecutor, api_error, error_body
from app.errors import ClientError
from app.node import NODE_KEY

if TYPE_CHECKING:
    from app.config import Config

log = logging.getLogger("centrifugo.api")

# Largest request body read (Centrifugo sets no limit; batches of publications can be big).
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
}
# Names of the MethodType enum that OSS does not serve here (answered with 104, not 400).
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


class _BadBody(Exception):
    pass


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
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY_SIZE:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_SIZE, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson rejects integers beyond 64 bits, valid in JSON and accepted by Go for raw data.
    try:
        value = json.loads(body, parse_constant=_reject_constant)
        # Lone surrogate escapes (orjson's other refusal) would break every later encode.
        json.dumps(value, ensure_ascii=False).encode()
        return value
    except (ValueError, UnicodeError) as e:
        raise _BadBody(str(e)) from None


def _loads_stream(body: bytes) -> list[Any]:
    """Consecutive JSON values separated by whitespace (usually one per line)."""
    try:
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise _BadBody(str(e)) from None
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = decoder.raw_decode(text, pos)
            json.dumps(value, ensure_ascii=False).encode()
        except (ValueError, UnicodeError) as e:
            raise _BadBody(str(e)) from None
        values.append(value)


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
        try:
            params = _loads(await _read_body(request))
        except _BadBody as e:
            return _bad_request(request, str(e))
        if params is not None and not isinstance(params, dict):
            return _bad_request(request, "body is not a JSON object")
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
        # A batch answers with its replies at the top level, not wrapped in `result`.
        return _json(result if name == "batch" else {"result": result})

    async def legacy(self, request: web.Request) -> web.StreamResponse:
        rejected = self._precheck(request)
        if rejected is not None:
            return rejected
        body = await _read_body(request)
        if not body:
            return _bad_request(request, "empty body")
        try:
            commands = [_legacy_command(v) for v in _loads_stream(body)]
        except _BadBody as e:
            return _bad_request(request, str(e))
        executor = self.executor(request)
        lines: list[bytes] = []
        for cmd_id, method, params in commands:
            reply: dict[str, Any] = {}
            if cmd_id:
                reply["id"] = cmd_id
            try:
                name = LEGACY_METHODS.get(method)
                if name is None:
                    raise api_error(104)
                if params is _MISSING:
                    # Go decodes absent params as empty input: a decode error, except for
                    # info whose params are ignored.
                    if name != "info":
                        raise api_error(107)
                    params = None
                reply["result"] = await executor.call(name, params)
            except ClientError as e:
                reply["error"] = error_body(e)
            lines.append(orjson.dumps(reply))
        return web.Response(body=b"\n".join(lines), content_type=_JSON)


_MISSING: Any = object()


def _legacy_command(value: Any) -> tuple[int, int, Any]:
    """(id, method number, params) of one legacy command; _BadBody when it cannot decode."""
    if value is None:
        return 0, 0, _MISSING
    if not isinstance(value, dict):
        raise _BadBody("command is not a JSON object")
    cmd_id = value.get("id")
    if cmd_id is None:
        cmd_id = 0
    elif isinstance(cmd_id, bool) or not isinstance(cmd_id, int) or not 0 <= cmd_id < 2**32:
        raise _BadBody("id: expected uint32")
    method = value.get("method")
    if method is None:
        number = 0  # Go's zero value: publish
    elif isinstance(method, str):
        found = _LEGACY_BY_NAME.get(method.lower())
        if found is None:
            raise _BadBody(f"unknown method {method!r}")
        number = found
    elif isinstance(method, int) and not isinstance(method, bool) and -(2**31) <= method < 2**31:
        number = method
    else:
        raise _BadBody("method: expected string or number")
    params = value.get("params", _MISSING)
    return cmd_id, number, params


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
