"""Compact JWS parsing: a token split into its algorithm, key id, signing input, signature
and claims, without verifying anything (app/auth/keys.py does that)."""

from __future__ import annotations

import binascii
from typing import Any

import orjson

from app import jsonraw
from app.auth.claims import RAW_CLAIMS
from app.auth.errors import TokenInvalid

# Header segments repeat across tokens (same issuer, same alg), so their decoding is cached.
_HEADER_CACHE_MAX = 256
_header_cache: dict[str, tuple[str, str]] = {}

_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def _b64url(segment: str) -> bytes:
    # bytes.translate + strict a2b_base64 is several times faster than base64.b64decode.
    try:
        raw = (segment + "=" * (-len(segment) % 4)).encode().translate(_URLSAFE_TO_STD)
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid("malformed token: bad base64url") from None


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


def parse_token(token: str) -> tuple[str, str, bytes, bytes, dict[str, Any]]:
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
        claims = jsonraw.object_keeping(_b64url(p_seg), RAW_CLAIMS)
    except jsonraw.JsonError:
        raise TokenInvalid("malformed token: payload is not a JSON object") from None
    signature = _b64url(s_seg)
    try:
        signing_input = token[: len(h_seg) + 1 + len(p_seg)].encode("ascii")
    except UnicodeEncodeError:  # unreachable after strict base64 decoding; kept for safety
        raise TokenInvalid("malformed token") from None
    return alg, kid, signing_input, signature, claims
