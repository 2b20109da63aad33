"""CORS for the HTTP-based client endpoints (HTTP-stream, SSE, emulation).

Centrifugo wraps these endpoints in a CORS middleware driven by
`client.allowed_origins`: an allowed Origin is echoed back together with
credentials permission and the headers the browser asked for. Browsers send
a preflight OPTIONS before a JSON POST; it is answered with 204.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from app.transports.admission import origin_allowed

__all__ = ["cors_headers", "empty_response", "origin_allowed", "preflight_response"]

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
