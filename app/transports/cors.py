"""CORS for the HTTP-based client endpoints (HTTP-stream, SSE, emulation, uni_sse,
uni_http_stream).

Centrifugo wraps these endpoints in a CORS middleware driven by
`client.allowed_origins` (internal/middleware/cors.go): an allowed Origin is echoed
back together with credentials permission and the headers the browser asked for, on
whatever the handler answers. The Origin rule is admission.py's `origin_allowed`, the
one every endpoint's origin check uses. Browsers send a preflight OPTIONS before a JSON
POST; the endpoints whose handler answers it (HTTP-stream, SSE, emulation,
uni_http_stream) answer 204; uni_sse's handler has none, so it answers 405 there.

On the connection endpoints the middleware runs after ConnLimit
(internal/app/mux.go): admission.py's 503 refusals carry no CORS headers.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from app.transports.admission import origin_allowed

__all__ = [
    "cors_headers",
    "empty_response",
    "origin_allowed",
    "preflight_response",
    "with_headers",
]

# How long a browser may cache a preflight answer (seconds), as Centrifugo does.
PREFLIGHT_MAX_AGE = "300"


def cors_headers(request: web.Request, allowed_origins: tuple[str, ...]) -> dict[str, str]:
    """Headers to add to any response of a CORS-enabled endpoint; empty when the
    request carries no Origin or its Origin is not allowed."""
    origin = request.headers.get("Origin")
    if not origin or not origin_allowed(origin, allowed_origins):
        return {}
    out = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
    }
    asked = request.headers.get("Access-Control-Request-Headers", "")
    if asked and asked != "null":
        out["Access-Control-Allow-Headers"] = asked
    return out


def preflight_response(
    request: web.Request, allowed_origins: tuple[str, ...], methods: str
) -> web.Response:
    """204 for a browser preflight (OPTIONS); CORS headers only for allowed origins."""
    headers: dict[str, str] = {
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        "Access-Control-Allow-Methods": methods,
    }
    headers.update(cors_headers(request, allowed_origins))
    return web.Response(status=204, headers=headers)


def empty_response(status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """A bodyless status answer, as Centrifugo writes for rejected requests."""
    return web.Response(status=status, headers=dict(headers or {}))


def with_headers(outcome: bool | web.Response, headers: Mapping[str, str]) -> bool | web.Response:
    """`outcome` with `headers` added when it is a response built elsewhere (a connect
    step's HTTP answer, app/transports/uni_connect.py), as the middleware adds them to
    every answer; any other outcome is returned as is."""
    if isinstance(outcome, web.Response):
        outcome.headers.update(headers)
    return outcome
