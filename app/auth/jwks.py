"""JWKS: an HTTP client that fetches and caches a key set endpoint (optionally a `{{var}}`
URL template filled from token claims), and the safety rule for such templates."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from jwt import PyJWK

from app.auth.errors import TokenInvalid

JWKS_CACHE_TTL = 3600.0  # seconds a fetched key set is trusted (Centrifugo: 1h)
JWKS_FETCH_TIMEOUT = 1.0
JWKS_FETCH_ATTEMPTS = 2  # one try + one retry
# An unknown kid triggers a refetch, but not more often than this per endpoint, so forged
# kids cannot turn every connect attempt into an outgoing HTTP request.
JWKS_MIN_REFETCH_INTERVAL = 1.0
_JWKS_MAX_SETS = 1024  # bound on distinct (templated) endpoint URLs kept

_TEMPLATE_VAR = re.compile(r"\{\{(.*?)\}\}")


@dataclass(slots=True)
class Jwk:
    key: Any
    kty: str
    alg: str  # "" when the JWK does not pin an algorithm


@dataclass(slots=True)
class _JwkSet:
    keys: dict[str, Jwk]
    fetched: float  # time.monotonic()


class _JwksFetchError(Exception):
    pass


class JwksClient:
    """Fetches and caches a JWKS endpoint (optionally a `{{var}}` URL template)."""

    def __init__(self, template: str) -> None:
        self._template = template
        self._templated = "{{" in template
        self._sets: dict[str, _JwkSet] = {}
        self._inflight: dict[str, asyncio.Future[_JwkSet]] = {}
        self._session: aiohttp.ClientSession | None = None

    def url(self, variables: dict[str, str]) -> str:
        if not self._templated:
            return self._template
        # Values come from token claims: quote them so they cannot reshape the URL.
        return _TEMPLATE_VAR.sub(
            lambda m: urllib.parse.quote(variables.get(m.group(1), ""), safe=""), self._template
        )

    async def get_key(self, kid: str, variables: dict[str, str]) -> Jwk:
        if not kid:
            raise TokenInvalid("jwks: kid is not provided")
        url = self.url(variables)
        now = time.monotonic()
        cached = self._sets.get(url)
        stale: Jwk | None = None
        if cached is not None:
            age = now - cached.fetched
            found = cached.keys.get(kid)
            if age < JWKS_CACHE_TTL:
                if found is not None:
                    return found
                if age < JWKS_MIN_REFETCH_INTERVAL and url not in self._inflight:
                    raise TokenInvalid("jwks: public key not found")
            stale = found
        try:
            fresh = await self._refresh(url)
        except _JwksFetchError as e:
            if stale is not None:
                return stale  # endpoint down: keep trusting what it served before
            raise TokenInvalid(f"jwks: {e}") from None
        found = fresh.keys.get(kid)
        if found is None:
            raise TokenInvalid("jwks: public key not found")
        return found

    async def _refresh(self, url: str) -> _JwkSet:
        fut = self._inflight.get(url)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(url))
            self._inflight[url] = fut

            def _done(f: asyncio.Future[_JwkSet]) -> None:
                self._inflight.pop(url, None)
                if not f.cancelled():
                    f.exception()  # mark retrieved even if every waiter went away

            fut.add_done_callback(_done)
        # shield: one cancelled waiter must not cancel the fetch others are waiting for
        return await asyncio.shield(fut)

    async def _fetch(self, url: str) -> _JwkSet:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT)
            )
        error = "fetch failed"
        body: bytes | None = None
        for _ in range(JWKS_FETCH_ATTEMPTS):
            try:
                async with self._session.get(url) as resp:
                    if resp.status != 200:
                        error = f"unexpected status code {resp.status}"
                        continue
                    body = await resp.read()
                    break
            except (aiohttp.ClientError, TimeoutError) as e:
                error = f"fetch failed: {type(e).__name__}"
        if body is None:
            raise _JwksFetchError(error)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _JwksFetchError("unmarshal error") from None
        raw_keys = doc.get("keys") if type(doc) is dict else None
        if type(raw_keys) is not list:
            raise _JwksFetchError("unmarshal error: no keys list")
        keys: dict[str, Jwk] = {}
        for jwk in raw_keys:
            parsed = self._parse_jwk(jwk)
            if parsed is not None:
                keys[jwk["kid"]] = parsed
        result = _JwkSet(keys, time.monotonic())
        if len(self._sets) >= _JWKS_MAX_SETS and url not in self._sets:
            self._sets.clear()
        self._sets[url] = result
        return result

    @staticmethod
    def _parse_jwk(jwk: Any) -> Jwk | None:
        if type(jwk) is not dict:
            return None
        kid, kty, use = jwk.get("kid"), jwk.get("kty"), jwk.get("use")
        if type(kid) is not str or not kid or kty not in ("RSA", "EC", "OKP"):
            return None
        if use is not None and use != "sig":
            return None
        try:
            key = PyJWK(jwk).key
        except Exception:  # pyjwt raises several unrelated types for unusable JWKs
            return None
        alg = jwk.get("alg")
        return Jwk(key=key, kty=kty, alg=alg if type(alg) is str else "")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _group_body(pattern: str, name: str) -> str | None:
    """Text inside the named group `(?P<name>...)` (or Go's `(?<name>...)`) of a regex
    pattern, or None."""
    for opener in (f"(?P<{name}>", f"(?<{name}>"):
        start = pattern.find(opener)
        if start >= 0:
            break
    else:
        return None
    i = start + len(opener)
    body_start, depth = i, 1
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return pattern[body_start:i]
        i += 1
    return None


# `a|b|c` where each alternative is a literal (letters, digits, _ -, escaped characters).
_LITERAL_ALTERNATION = re.compile(r"(?:[A-Za-z0-9_-]|\\.)+(?:\|(?:[A-Za-z0-9_-]|\\.)+)*")


def check_template_safety(template: str, patterns: list[str], section: str) -> None:
    """Refuse a templated JWKS URL whose variables could take arbitrary values.

    Variables come from token claims before the signature is checked, so an open group such
    as `[a-z]+` would let anyone make the server fetch URLs of their choosing (Centrifugo
    6.7.0 added the same rule and `insecure_skip_jwks_endpoint_safety_check` to lift it).
    """
    for name in set(_TEMPLATE_VAR.findall(template)):
        bodies = [b for b in (_group_body(p, name) for p in patterns) if b is not None]
        if not bodies or not all(_LITERAL_ALTERNATION.fullmatch(b) for b in bodies):
            raise ValueError(
                f"{section}.jwks_public_endpoint: variable {{{{{name}}}}} must come from a "
                f"named group of issuer_regex/audience_regex listing explicit alternatives, "
                f"like (?P<{name}>one|two); or set "
                f"{section}.insecure_skip_jwks_endpoint_safety_check"
            )
