"""Connection and subscription JWT verification (research §3).

Tokens are taken apart here around pyjwt's algorithm objects rather than through
`jwt.decode()`: the hot path (an HMAC connect token) then costs a few microseconds, every
configured key is parsed once, and the outcomes (invalid vs expired) and claim type rules
follow Centrifugo rather than pyjwt's defaults. Mapping the two exceptions to protocol codes
(3500, 103, 109, 3005...) is the caller's job.

Order of checks, as in Centrifugo, so that any "invalid" reason wins over "expired":
structure and registered-claim types, aud/iss, signature, the remaining claims, the
forbidden `channel` claim (connect tokens), then exp/nbf, then the required `channel`
claim (subscription tokens).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import get_default_algorithms

from app import jsonraw
from app.goregex import GoSubmatchRegexp, compile_go_submatch_regexp

__all__ = [
    "ConnectTokenClaims",
    "SubscribeOptionsClaim",
    "SubscribeOverride",
    "SubscribeTokenClaims",
    "TokenExpired",
    "TokenInvalid",
    "TokenVerifier",
]


class TokenInvalid(Exception):
    """Malformed token, bad signature, wrong aud/iss, forbidden or ill-typed claim, bad alg."""


class TokenExpired(Exception):
    """`exp` has passed or `nbf` is still in the future."""


@dataclass(frozen=True, slots=True)
class SubscribeOverride:
    """Per-subscription overrides of namespace options; None = not overridden."""

    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_recovery: bool | None = None
    force_positioning: bool | None = None


@dataclass(slots=True)
class SubscribeOptionsClaim:
    info: bytes | None = None
    data: bytes | None = None
    override: SubscribeOverride | None = None


@dataclass(slots=True)
class ConnectTokenClaims:
    user: str
    expire_at: int  # unix seconds, 0 = never
    info: bytes | None
    # Centrifugo ignores `channels` when `subs` is non-empty; `channels` is then returned empty
    # so callers can simply subscribe to both.
    channels: list[str]
    subs: dict[str, SubscribeOptionsClaim]
    meta: bytes | None


@dataclass(slots=True)
class SubscribeTokenClaims:
    user: str
    channel: str
    client: str  # "" when absent
    expire_at: int
    info: bytes | None
    data: bytes | None
    override: SubscribeOverride | None


# --------------------------------------------------------------------------- constants

_ALGORITHMS = get_default_algorithms()
_HMAC_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512"})
# cristalhq/jwt refuses an ES verifier whose key curve does not fit the alg; so do we.
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_JWK_ALGS = _RSA_ALGS | _EC_CURVES.keys() | {"EdDSA"}
# Claim names of an override object, in SubscribeOverride's order.
OVERRIDE_FIELDS = (
    "presence",
    "join_leave",
    "force_push_join_leave",
    "force_recovery",
    "force_positioning",
)

JWKS_CACHE_TTL = 3600.0  # seconds a fetched key set is trusted (Centrifugo: 1h)
JWKS_FETCH_TIMEOUT = 1.0
JWKS_FETCH_ATTEMPTS = 2  # one try + one retry
# An unknown kid triggers a refetch, but not more often than this per endpoint, so forged
# kids cannot turn every connect attempt into an outgoing HTTP request.
JWKS_MIN_REFETCH_INTERVAL = 1.0
_JWKS_MAX_SETS = 1024  # bound on distinct (templated) endpoint URLs kept

_TEMPLATE_VAR = re.compile(r"\{\{(.*?)\}\}")

# Header segments repeat across tokens (same issuer, same alg), so their decoding is cached.
_HEADER_CACHE_MAX = 256
_header_cache: dict[str, tuple[str, str]] = {}


# --------------------------------------------------------------------------- decoding helpers


_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def _b64url(segment: str) -> bytes:
    # bytes.translate + strict a2b_base64 is several times faster than base64.b64decode.
    try:
        raw = (segment + "=" * (-len(segment) % 4)).encode().translate(_URLSAFE_TO_STD)
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid("malformed token: bad base64url") from None


def _b64std(value: Any, name: str) -> bytes:
    if type(value) is not str:
        raise TokenInvalid(f"{name} claim must be a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid(f"{name} claim is not valid base64") from None


def _parse_header(segment: str) -> tuple[str, str]:
    try:
        header = orjson.loads(_b64url(segment))
    except orjson.JSONDecodeError:
        raise TokenInvalid("malformed token: header is not JSON") from None
    if type(header) is not dict:
        raise TokenInvalid("malformed token: header is not an object")
    alg = header.get("alg")
    if type(alg) is not str or not alg:
        raise TokenInvalid("malformed token: no alg")
    kid = header.get("kid")
    if kid is None:
        kid = ""
    elif type(kid) is not str:
        raise TokenInvalid("malformed token: kid must be a string")
    return alg, kid


def _parse_token(token: str) -> tuple[str, str, bytes, bytes, dict[str, Any]]:
    """Split a compact JWS into (alg, kid, signing input, signature, claims)."""
    if type(token) is not str:
        raise TokenInvalid("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("malformed token: expected 3 segments")
    h_seg, p_seg, s_seg = parts
    header = _header_cache.get(h_seg)
    if header is None:
        header = _parse_header(h_seg)
        if len(_header_cache) >= _HEADER_CACHE_MAX:
            _header_cache.clear()
        _header_cache[h_seg] = header
    alg, kid = header
    try:
        claims = jsonraw.object_keeping(_b64url(p_seg), _RAW_CLAIMS)
    except jsonraw.JsonError:
        raise TokenInvalid("malformed token: payload is not a JSON object") from None
    signature = _b64url(s_seg)
    try:
        signing_input = token[: len(h_seg) + 1 + len(p_seg)].encode("ascii")
    except UnicodeEncodeError:  # unreachable after strict base64 decoding; kept for safety
        raise TokenInvalid("malformed token") from None
    return alg, kid, signing_input, signature, claims


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _opt_str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if type(value) is not str:
        raise TokenInvalid(f"{name} claim must be a string")
    return value


def _opt_time(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:
        raise TokenInvalid(f"{name} claim must be a number")
    if not _INT64_MIN <= value <= _INT64_MAX:
        # Past any time Go holds (an int64 of seconds); a later ttl would not fit a reply.
        raise TokenInvalid(f"{name} claim out of range")
    return value


def _audience(claims: dict[str, Any]) -> list[str]:
    value = claims.get("aud")
    if value is None:
        return []
    if type(value) is str:
        return [value]
    if type(value) is list and all(type(a) is str for a in value):
        return value
    raise TokenInvalid("aud claim must be a string or a list of strings")


# Claims whose JSON is kept as the bytes in the token (Centrifugo: json.RawMessage), for
# the connection token and for each entry of its `subs`.
_RAW_CLAIMS = frozenset(("info", "data", "meta", "subs"))
_RAW_SUB_OPTIONS = frozenset(("info", "data"))


def _raw_claim(obj: dict[str, Any], key: str) -> bytes | None:
    """A raw JSON claim as the bytes in the token; None when absent or null."""
    return jsonraw.payload(obj.get(key)) or None


def _json_or_b64(obj: dict[str, Any], json_key: str, b64_key: str) -> bytes | None:
    """`b64<x>` (binary, wins when non-empty) or `<x>` (any JSON, as in the token)."""
    b64 = obj.get(b64_key)
    if b64 is not None:
        decoded = _b64std(b64, b64_key)
        if b64:
            return decoded
    return _raw_claim(obj, json_key)


def _parse_override(value: Any) -> SubscribeOverride | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise TokenInvalid("override claim must be an object")
    fields: dict[str, bool | None] = {}
    for name in OVERRIDE_FIELDS:
        item = value.get(name)
        if item is None:
            fields[name] = None
            continue
        if type(item) is not dict:
            raise TokenInvalid(f"override.{name} must be an object like {{'value': true}}")
        flag = item.get("value")
        if flag is None:
            fields[name] = False  # Go's BoolValue zero value
        elif type(flag) is bool:
            fields[name] = flag
        else:
            raise TokenInvalid(f"override.{name}.value must be a boolean")
    return SubscribeOverride(**fields)


def _parse_subs(value: Any) -> dict[str, SubscribeOptionsClaim]:
    raw = jsonraw.payload(value)
    if not raw:
        return {}
    try:
        entries = jsonraw.members(raw)
    except jsonraw.JsonError:
        raise TokenInvalid("subs claim must be an object") from None
    subs: dict[str, SubscribeOptionsClaim] = {}
    for channel, entry in entries.items():
        entry_raw = jsonraw.payload(entry)
        if not entry_raw:
            subs[channel] = SubscribeOptionsClaim()
            continue
        try:
            opts = jsonraw.object_keeping(entry_raw, _RAW_SUB_OPTIONS)
        except jsonraw.JsonError:
            raise TokenInvalid("subs values must be objects") from None
        subs[channel] = SubscribeOptionsClaim(
            info=_json_or_b64(opts, "info", "b64info"),
            data=_json_or_b64(opts, "data", "b64data"),
            override=_parse_override(opts.get("override")),
        )
    return subs


def _parse_channels(value: Any) -> list[str]:
    if value is None:
        return []
    if type(value) is not list or not all(type(c) is str for c in value):
        raise TokenInvalid("channels claim must be a list of strings")
    return value


def _expire_at(claims: dict[str, Any], exp: float | None) -> int:
    value = claims.get("expire_at")
    if value is None:
        return int(exp) if exp is not None else 0
    if type(value) is not int:
        raise TokenInvalid("expire_at claim must be an integer")
    if not _INT64_MIN <= value <= _INT64_MAX:  # Go's Unmarshal into *int64 refuses it
        raise TokenInvalid("expire_at claim out of range")
    return value if value > 0 else 0


def _claim_as_string(value: Any) -> str:
    """A custom user id claim read the way gjson's String() does in Centrifugo."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------- keys


def _load_pem_public_key(pem: str, key_path: str) -> Any:
    data = pem.strip().encode()
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        pass
    try:
        return x509.load_pem_x509_certificate(data).public_key()
    except (ValueError, TypeError):
        raise ValueError(f"{key_path}: not a PEM public key or certificate") from None


def _hmac_states(secret: str) -> dict[str, hmac.HMAC] | None:
    if not secret:
        return None
    key = secret.encode()
    return {alg: hmac.new(key, digestmod=d) for alg, d in _HMAC_DIGESTS.items()}


def _hmac_ok(state: hmac.HMAC, msg: bytes, sig: bytes) -> bool:
    mac = state.copy()
    mac.update(msg)
    return hmac.compare_digest(mac.digest(), sig)


@dataclass(slots=True)
class _Jwk:
    key: Any
    kty: str
    alg: str  # "" when the JWK does not pin an algorithm


@dataclass(slots=True)
class _JwkSet:
    keys: dict[str, _Jwk]
    fetched: float  # time.monotonic()


class _JwksFetchError(Exception):
    pass


class _JwksClient:
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

    async def get_key(self, kid: str, variables: dict[str, str]) -> _Jwk:
        if not kid:
            raise TokenInvalid("jwks: kid is not provided")
        url = self.url(variables)
        now = time.monotonic()
        cached = self._sets.get(url)
        stale: _Jwk | None = None
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
        keys: dict[str, _Jwk] = {}
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
    def _parse_jwk(jwk: Any) -> _Jwk | None:
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
        return _Jwk(key=key, kty=kty, alg=alg if type(alg) is str else "")

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


def _check_template_safety(template: str, patterns: list[str], section: str) -> None:
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


class _Keys:
    """Parsed keys and claim expectations of one token section (client.token or
    client.subscription_token)."""

    def __init__(self, tcfg: Any, section: str) -> None:
        secret = getattr(tcfg, "hmac_secret_key", "") or ""
        previous = getattr(tcfg, "hmac_previous_secret_key", "") or ""
        # Keyed HMAC states are built once and copied per token: cheaper than hmac.digest().
        self.hmac_macs = _hmac_states(secret)
        self.hmac_previous_macs = _hmac_states(previous)
        self.hmac_previous_until = int(
            getattr(tcfg, "hmac_previous_secret_key_valid_until", 0) or 0
        )

        self.rsa_key: RSAPublicKey | None = None
        rsa_pem = getattr(tcfg, "rsa_public_key", "") or ""
        if rsa_pem:
            key = _load_pem_public_key(rsa_pem, f"{section}.rsa_public_key")
            if not isinstance(key, RSAPublicKey):
                raise ValueError(f"{section}.rsa_public_key: not an RSA public key")
            self.rsa_key = key

        self.ec_key: EllipticCurvePublicKey | None = None
        ec_pem = getattr(tcfg, "ecdsa_public_key", "") or ""
        if ec_pem:
            key = _load_pem_public_key(ec_pem, f"{section}.ecdsa_public_key")
            if not isinstance(key, EllipticCurvePublicKey):
                raise ValueError(f"{section}.ecdsa_public_key: not an ECDSA public key")
            self.ec_key = key

        self.audience: str = getattr(tcfg, "audience", "") or ""
        self.issuer: str = getattr(tcfg, "issuer", "") or ""
        self.audience_re = self._compile(tcfg, "audience_regex", section)
        self.issuer_re = self._compile(tcfg, "issuer_regex", section)

        endpoint = getattr(tcfg, "jwks_public_endpoint", "") or ""
        self.jwks: _JwksClient | None = None
        if endpoint:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"{section}.jwks_public_endpoint: must be an http(s) URL")
            if not getattr(tcfg, "insecure_skip_jwks_endpoint_safety_check", False):
                _check_template_safety(
                    endpoint,
                    [r.pattern for r in (self.issuer_re, self.audience_re) if r is not None],
                    section,
                )
            self.jwks = _JwksClient(endpoint)
        self.checks_aud_iss = bool(
            self.audience or self.issuer or self.audience_re or self.issuer_re
        )
        claim = getattr(tcfg, "user_id_claim", "") or "sub"
        self.user_id_claim: str = claim

    @staticmethod
    def _compile(tcfg: Any, name: str, section: str) -> GoSubmatchRegexp | None:
        pattern = getattr(tcfg, name, "") or ""
        if not pattern:
            return None
        try:
            # Go regexps (RE2), as Centrifugo: linear-time matching, Go's syntax.
            return compile_go_submatch_regexp(pattern)
        except re.error as e:
            raise ValueError(f"invalid value for {section}.{name}: {pattern!r}: {e}") from None

    def check_aud_iss(self, claims: dict[str, Any]) -> dict[str, str]:
        """Check aud/iss; returns the named regex groups (JWKS URL template variables).

        Regexes search, not full-match: Centrifugo uses Go's unanchored FindStringSubmatch.
        """
        variables: dict[str, str] = {}
        if not self.checks_aud_iss:
            return variables
        if self.audience or self.audience_re is not None:
            audience = _audience(claims)
            if self.audience and self.audience not in audience:
                raise TokenInvalid("invalid audience")
            if self.audience_re is not None:
                for a in audience:
                    groups = self.audience_re.named_groups(a)
                    if groups is not None:
                        variables.update(groups)
                        break
                else:
                    raise TokenInvalid("audience not matched")
        if self.issuer or self.issuer_re is not None:
            issuer = _opt_str(claims, "iss")
            if self.issuer and issuer != self.issuer:
                raise TokenInvalid("invalid issuer")
            if self.issuer_re is not None:
                groups = self.issuer_re.named_groups(issuer)
                if groups is None:
                    raise TokenInvalid("issuer not matched")
                variables.update(groups)
        return variables

    def verify_static(self, alg: str, msg: bytes, sig: bytes) -> None:
        """Signature check against configured HMAC/RSA/ECDSA keys (synchronous: no I/O)."""
        if alg in _HMAC_DIGESTS:
            current, previous = self.hmac_macs, self.hmac_previous_macs
            if current is None and previous is None:
                raise TokenInvalid(f"disabled JWT algorithm: {alg}")
            if current is not None and _hmac_ok(current[alg], msg, sig):
                return
            if (
                previous is not None
                and (self.hmac_previous_until == 0 or time.time() < self.hmac_previous_until)
                and _hmac_ok(previous[alg], msg, sig)
            ):
                return
            raise TokenInvalid("signature mismatch")
        if alg in _RSA_ALGS:
            if self.rsa_key is None:
                raise TokenInvalid(f"disabled JWT algorithm: {alg}")
            key: Any = self.rsa_key
        elif alg in _EC_CURVES:
            if self.ec_key is None or self.ec_key.curve.name != _EC_CURVES[alg]:
                raise TokenInvalid(f"disabled JWT algorithm: {alg}")
            key = self.ec_key
        else:
            raise TokenInvalid(f"unsupported JWT algorithm: {alg}")
        if not _ALGORITHMS[alg].verify(msg, key, sig):
            raise TokenInvalid("signature mismatch")

    async def verify_jwk(
        self, alg: str, kid: str, msg: bytes, sig: bytes, variables: dict[str, str]
    ) -> None:
        assert self.jwks is not None
        if alg not in _JWK_ALGS:  # refuse before any fetch ("none", HS*, PS*...)
            raise TokenInvalid(f"unsupported JWT algorithm: {alg}")
        jwk = await self.jwks.get_key(kid, variables)
        if jwk.alg and jwk.alg != alg:
            raise TokenInvalid(f"algorithm mismatch: token {alg}, key {jwk.alg}")
        if jwk.kty == "RSA":
            ok_type = alg in _RSA_ALGS and isinstance(jwk.key, RSAPublicKey)
        elif jwk.kty == "EC":
            ok_type = (
                alg in _EC_CURVES
                and isinstance(jwk.key, EllipticCurvePublicKey)
                and jwk.key.curve.name == _EC_CURVES[alg]
            )
        else:  # OKP
            ok_type = alg == "EdDSA" and isinstance(jwk.key, Ed25519PublicKey)
        if not ok_type:
            raise TokenInvalid(f"unsupported JWT algorithm for {jwk.kty} key: {alg}")
        if not _ALGORITHMS[alg].verify(msg, jwk.key, sig):
            raise TokenInvalid("signature mismatch")

    def user(self, claims: dict[str, Any], sub: str) -> str:
        if self.user_id_claim == "sub":
            return sub
        return _claim_as_string(claims.get(self.user_id_claim))


# --------------------------------------------------------------------------- verifier


class TokenVerifier:
    """Verifies connection and subscription JWTs for one worker.

    Stateless per token apart from the JWKS cache, so verifying never affects other
    connections. Construction raises ValueError (naming the config key) on unusable keys.
    """

    def __init__(self, client_cfg: Any) -> None:
        self._skip_verify = bool(getattr(client_cfg, "insecure_skip_token_signature_verify", False))
        self._conn = _Keys(client_cfg.token, "client.token")
        sub_cfg = getattr(client_cfg, "subscription_token", None)
        if sub_cfg is not None and getattr(sub_cfg, "enabled", False):
            self._sub = _Keys(sub_cfg, "client.subscription_token")
        else:
            self._sub = self._conn

    async def _verify_common(
        self, keys: _Keys, token: str
    ) -> tuple[dict[str, Any], str, float | None, float | None]:
        alg, kid, msg, sig, claims = _parse_token(token)
        sub = _opt_str(claims, "sub")
        exp = _opt_time(claims, "exp")
        nbf = _opt_time(claims, "nbf")
        if "iat" in claims:
            _opt_time(claims, "iat")
        if "jti" in claims:
            _opt_str(claims, "jti")
        variables = keys.check_aud_iss(claims)
        if not self._skip_verify:
            if keys.jwks is not None:
                # With JWKS configured only JWKS-verified tokens are accepted.
                await keys.verify_jwk(alg, kid, msg, sig, variables)
            else:
                keys.verify_static(alg, msg, sig)
        return claims, sub, exp, nbf

    @staticmethod
    def _check_time(exp: float | None, nbf: float | None) -> None:
        # No leeway, same comparisons as cristalhq/jwt: valid iff exp > now and nbf < now.
        if exp is None and nbf is None:
            return
        now = time.time()
        if exp is not None and not exp > now:
            raise TokenExpired("token expired")
        if nbf is not None and not nbf < now:
            raise TokenExpired("token not valid yet")

    async def verify_connect_token(self, token: str) -> ConnectTokenClaims:
        keys = self._conn
        claims, sub, exp, nbf = await self._verify_common(keys, token)
        info = _json_or_b64(claims, "info", "b64info")
        channels = _parse_channels(claims.get("channels"))
        subs = _parse_subs(claims.get("subs"))
        meta = _raw_claim(claims, "meta")
        expire_at = _expire_at(claims, exp)
        if _opt_str(claims, "channel"):
            raise TokenInvalid("connection JWT can not contain channel claim")
        self._check_time(exp, nbf)
        return ConnectTokenClaims(
            user=keys.user(claims, sub),
            expire_at=expire_at,
            info=info,
            channels=[] if subs else channels,
            subs=subs,
            meta=meta,
        )

    async def verify_subscribe_token(self, token: str) -> SubscribeTokenClaims:
        keys = self._sub
        claims, sub, exp, nbf = await self._verify_common(keys, token)
        channel = _opt_str(claims, "channel")
        client = _opt_str(claims, "client")
        info = _json_or_b64(claims, "info", "b64info")
        data = _json_or_b64(claims, "data", "b64data")
        override = _parse_override(claims.get("override"))
        expire_at = _expire_at(claims, exp)
        self._check_time(exp, nbf)
        if not channel:
            raise TokenInvalid("channel claim is required for subscription JWT")
        return SubscribeTokenClaims(
            user=keys.user(claims, sub),
            channel=channel,
            client=client,
            expire_at=expire_at,
            info=info,
            data=data,
            override=override,
        )

    async def close(self) -> None:
        if self._conn.jwks is not None:
            await self._conn.jwks.close()
        if self._sub is not self._conn and self._sub.jwks is not None:
            await self._sub.jwks.close()
