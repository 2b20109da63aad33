"""CORS on the unidirectional HTTP streams (uni_sse, uni_http_stream), against a real server.

Centrifugo serves every connection endpoint through one middleware chain (internal/app/
mux.go: ConnLimit, UserHeaderAuth, CORS, then the handler). Its CORS middleware
(internal/middleware/cors.go) adds, for an allowed Origin only, `Access-Control-Allow-Origin`
(the Origin echoed), `Access-Control-Allow-Headers` (the preflight's
`Access-Control-Request-Headers` unless empty or "null") and
`Access-Control-Allow-Credentials: true` to whatever the handler answers. The handlers then
answer the methods their own way: uni_http_stream answers OPTIONS 204 with `Max-Age` and
`Allow-Methods` and any other method but POST 405; uni_sse has no preflight branch, so
OPTIONS is 405 there like any method but GET and POST. Neither checks the Origin: a stream
from a disallowed Origin is served, only without the CORS headers.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from .helpers import ServerHandle
from .test_uni import expect_connect, open_uni, prefix

ALLOWED = "http://ok.example"
DISALLOWED = "http://evil.example"
CORS_NAMES = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Headers",
    "Access-Control-Allow-Credentials",
)
PREFLIGHT_NAMES = ("Access-Control-Max-Age", "Access-Control-Allow-Methods")
CFG: dict[str, Any] = {
    "client": {
        "allow_anonymous_connect_without_token": True,
        # A glob, matched case-insensitively: the same rule as every other endpoint's.
        "allowed_origins": [ALLOWED, "https://*.glob.example"],
    },
    "uni_sse": {
        "enabled": True,
        "max_request_body_size": 200,
        "connect_code_to_http_response": {
            "enabled": True,
            "transforms": [{"code": 3500, "to": {"status_code": 401, "body": "bad token"}}],
        },
    },
    "uni_http_stream": {"enabled": True, "max_request_body_size": 200},
}
KINDS = ("sse", "http_stream")


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    return server_factory(CFG)


def cors_of(headers: Any) -> dict[str, str]:
    return {name: headers[name] for name in CORS_NAMES + PREFLIGHT_NAMES if name in headers}


async def answer(
    method: str, url: str, headers: dict[str, str], data: bytes | None = None
) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, headers=headers, data=data) as resp:
            await resp.read()
            return resp.status, cors_of(resp.headers)


def allowed_cors(origin: str = ALLOWED, asked: str | None = None) -> dict[str, str]:
    out = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}
    if asked is not None:
        out["Access-Control-Allow-Headers"] = asked
    return out


PREFLIGHT = {"Access-Control-Request-Method": "POST"}


async def test_uni_http_stream_preflight(server: ServerHandle) -> None:
    url = server.url + prefix(server, "http_stream")
    ask = {**PREFLIGHT, "Access-Control-Request-Headers": "content-type,x-a"}
    handler_own = {"Access-Control-Max-Age": "300", "Access-Control-Allow-Methods": "POST, OPTIONS"}
    status, cors = await answer("OPTIONS", url, {**ask, "Origin": ALLOWED})
    assert (status, cors) == (204, {**handler_own, **allowed_cors(asked="content-type,x-a")})
    # A disallowed Origin gets the handler's own answer and no CORS permission.
    assert await answer("OPTIONS", url, {**ask, "Origin": DISALLOWED}) == (204, handler_own)
    # No Origin: no CORS headers either; "null" requested headers are not echoed.
    assert await answer("OPTIONS", url, ask) == (204, handler_own)
    nulls = {**PREFLIGHT, "Access-Control-Request-Headers": "null", "Origin": ALLOWED}
    assert await answer("OPTIONS", url, nulls) == (204, {**handler_own, **allowed_cors()})


async def test_uni_sse_has_no_preflight_answer(server: ServerHandle) -> None:
    # unisse/handler.go answers every method but GET and POST 405, OPTIONS included; the
    # middleware's headers come with it.
    url = server.url + prefix(server, "sse")
    ask = {**PREFLIGHT, "Access-Control-Request-Headers": "content-type"}
    status, cors = await answer("OPTIONS", url, {**ask, "Origin": ALLOWED})
    assert (status, cors) == (405, allowed_cors(asked="content-type"))
    assert await answer("OPTIONS", url, {**ask, "Origin": DISALLOWED}) == (405, {})


@pytest.mark.parametrize(("kind", "via"), [("sse", "get"), ("sse", "post"), ("http_stream", "")])
async def test_stream_from_allowed_origin_carries_cors(
    server: ServerHandle, kind: str, via: str
) -> None:
    origin = "https://App.Glob.Example"  # echoed as sent
    headers = {"Origin": origin, "Access-Control-Request-Headers": "x-b"}
    async with open_uni(server, kind, {}, via=via, headers=headers) as uni:
        expect_connect(await uni.push(), ping=25)
        assert uni.status == 200
        assert cors_of(uni.headers) == allowed_cors(origin, asked="x-b")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("origin", [DISALLOWED, None])
async def test_stream_from_other_origin_is_served_without_cors(
    server: ServerHandle, kind: str, origin: str | None
) -> None:
    # Neither handler checks the Origin (Centrifugo does not): the stream is served, and
    # the browser, finding no Allow-Origin, keeps it from the page.
    headers = {"Origin": origin} if origin else {}
    async with open_uni(server, kind, {}, headers=headers) as uni:
        expect_connect(await uni.push(), ping=25)
        assert uni.status == 200
        assert cors_of(uni.headers) == {}


async def test_handler_refusals_carry_cors(server: ServerHandle) -> None:
    # The middleware sets its headers before the handler runs: every answer has them.
    sse = server.url + prefix(server, "sse")
    stream = server.url + prefix(server, "http_stream")
    origin = {"Origin": ALLOWED}
    big = json.dumps({"token": "x" * 300}).encode()
    assert await answer("GET", stream, origin) == (405, allowed_cors())
    assert await answer("PUT", sse, origin) == (405, allowed_cors())
    assert await answer("POST", stream, origin, b"{nope") == (400, allowed_cors())
    assert await answer("GET", sse + "?cf_connect=%7Bnope", origin) == (400, allowed_cors())
    assert await answer("POST", stream, origin, big) == (413, allowed_cors())
    assert await answer("POST", sse, origin, big) == (413, allowed_cors())
    # connect_code_to_http_response's answer too (3500: invalid token).
    bad = json.dumps({"token": "not-a-jwt"}).encode()
    assert await answer("POST", sse, origin, bad) == (401, allowed_cors())
    # And none of them for a disallowed Origin.
    assert await answer("GET", stream, {"Origin": DISALLOWED}) == (405, {})
    assert await answer("POST", sse, {"Origin": DISALLOWED}, bad) == (401, {})


async def test_connection_limit_refusal_has_no_cors(server_factory: Any) -> None:
    # ConnLimit runs before CORS in Centrifugo's chain: its 503 carries no CORS headers,
    # and it refuses a preflight as any other request to a connection endpoint.
    limited = server_factory({**CFG, "client": {**CFG["client"], "connection_limit": 1}})
    ask = {"Origin": ALLOWED, **PREFLIGHT}
    async with open_uni(limited, "sse", {}, headers={"Origin": ALLOWED}) as uni:
        expect_connect(await uni.push(), ping=25)
        for kind in KINDS:
            url = limited.url + prefix(limited, kind)
            assert await answer("OPTIONS", url, ask) == (503, {})
            assert await answer("POST", url, {"Origin": ALLOWED}, b"{}") == (503, {})
