"""HTTP proxy transport: JSON POST to the endpoint, JSON reply.

One aiohttp ClientSession is shared by every HTTP proxy of a ProxyManager (connection
pooling per host); each call has its own total timeout. The session keeps no cookies:
it is shared between all connections, so a `Set-Cookie` from the backend must never ride
along on another user's call.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from app.config import ProxyConfig
from app.tls import ssl_context

from .models import RAW_FIELDS, ProxyContext, ProxyUnavailable, decode_json_response

__all__ = ["HTTPCaller", "encode_json_request", "http_request_headers", "new_session"]

log = logging.getLogger("centrifugo.proxy")


def new_session() -> aiohttp.ClientSession:
    # No connection cap (Centrifugo's Go client keeps up to 255 idle connections per host
    # and never queues requests behind a pool limit).
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


def encode_json_request(fields: Mapping[str, Any]) -> bytes:
    """JSON body of a request dict: raw payload fields are spliced in, not re-encoded."""
    body = {k: (orjson.Fragment(v) if k in RAW_FIELDS else v) for k, v in fields.items()}
    return orjson.dumps(body)


def _multi_items(m: Mapping[str, str]) -> list[tuple[str, str]]:
    # Multi-dicts yield every value of a repeated header from items().
    return list(m.items())


# Framing headers the HTTP client computes itself; copying a client's value would corrupt
# the request (Go's client ignores them in a header map too).
_NOT_FORWARDED = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def http_request_headers(cfg: ProxyConfig, ctx: ProxyContext) -> CIMultiDict[str]:
    """Outgoing headers, lowest precedence first: static, emulated, transport.

    Emulated headers are client-controlled, so only names in `emulated_headers` pass;
    transport headers need their (lower-cased) name in `http_headers`; when the client came
    over gRPC (no HTTP headers) its metadata keys listed in `grpc_metadata` are used instead.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in cfg.http.static_headers.items():
        if k.lower() not in _NOT_FORWARDED:
            headers[k] = str(v)
    allowed_emulated = {h.lower() for h in cfg.emulated_headers} - _NOT_FORWARDED
    if ctx.emulated_headers and allowed_emulated:
        for k, v in ctx.emulated_headers.items():
            if k.lower() in allowed_emulated:
                headers[k] = v
    if ctx.headers is not None:
        allowed = {h.lower() for h in cfg.http_headers} - _NOT_FORWARDED
        _override(headers, ctx.headers, lambda k: k.lower() in allowed)
    elif ctx.grpc_metadata is not None:
        allowed_md = set(cfg.grpc_metadata) - _NOT_FORWARDED
        _override(headers, ctx.grpc_metadata, lambda k: k in allowed_md)
    headers["Content-Type"] = "application/json"
    return headers


def _override(
    headers: CIMultiDict[str], source: Mapping[str, str], allow: Callable[[str], bool]
) -> None:
    replaced: set[str] = set()
    for k, v in _multi_items(source):
        if not allow(k):
            continue
        lk = k.lower()
        if lk not in replaced:
            headers.popall(k, None)
            replaced.add(lk)
        headers.add(k, v)


class HTTPCaller:
    """Calls one HTTP proxy endpoint; returns the decoded reply object."""

    def __init__(
        self, name: str, cfg: ProxyConfig, session: Callable[[], aiohttp.ClientSession]
    ) -> None:
        self.name = name
        self.cfg = cfg
        self._session = session
        self._ssl: ssl.SSLContext | None = ssl_context(cfg.http.tls, f"proxy {name} http.tls")
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout if cfg.timeout > 0 else None)
        # status -> reply object standing in for the body (first matching entry wins).
        self._transforms: dict[int, dict[str, Any]] = {}
        for t in cfg.http.status_to_code_transforms:
            status = t.get("status_code")
            if not isinstance(status, int) or status in self._transforms:
                continue
            reply = _transform_reply(t)
            if reply is not None:
                self._transforms[status] = reply

    async def call(self, kind: str, fields: Mapping[str, Any], ctx: ProxyContext) -> dict:
        body = encode_json_request(fields)
        headers = http_request_headers(self.cfg, ctx)
        try:
            async with self._session().post(
                self.cfg.endpoint,
                data=body,
                headers=headers,
                timeout=self._timeout,
                ssl=self._ssl if self._ssl is not None else True,
            ) as resp:
                if resp.status != 200:
                    reply = self._transforms.get(resp.status)
                    if reply is not None:
                        return reply
                    raise ProxyUnavailable(f"unexpected HTTP status code: {resp.status}")
                data = await resp.read()
        except ProxyUnavailable as e:
            log.error("error proxying %s to %s: %s", kind, self.name, e)
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.error("error proxying %s to %s: %r", kind, self.name, e)
            raise ProxyUnavailable(f"HTTP request error: {e!r}") from e
        except Exception as e:  # bad header values, invalid URL: never past the caller
            log.error("error proxying %s to %s: %r", kind, self.name, e)
            raise ProxyUnavailable(f"HTTP request error: {e!r}") from e
        try:
            return decode_json_response(kind, data)
        except ProxyUnavailable as e:
            log.error("error proxying %s to %s: %s", kind, self.name, e)
            raise

    async def close(self) -> None:
        return None


def _transform_reply(t: Mapping[str, Any]) -> dict[str, Any] | None:
    to_error = t.get("to_error") or {}
    to_disconnect = t.get("to_disconnect") or {}
    if isinstance(to_error, Mapping) and int(to_error.get("code") or 0) > 0:
        return {
            "error": {
                "code": int(to_error["code"]),
                "message": str(to_error.get("message") or ""),
                "temporary": bool(to_error.get("temporary")),
            }
        }
    if isinstance(to_disconnect, Mapping) and int(to_disconnect.get("code") or 0) > 0:
        return {
            "disconnect": {
                "code": int(to_disconnect["code"]),
                "reason": str(to_disconnect.get("reason") or ""),
            }
        }
    return None
