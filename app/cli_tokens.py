"""The work of the token commands (``gentoken``, ``gensubtoken``, ``checktoken``,
``checksubtoken``): a sample HMAC JWT for a config, and a token checked as the server checks it,
each with the lines Centrifugo prints. app/cli.py parses the arguments and prints."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from app.config import Config, format_duration


class TokenCommandError(Exception):
    """What stops a token command: one ``error: ...`` line."""


def _user_phrase(user: str) -> str:
    return f'user "{user}"' if user else "anonymous user"


def _sign(secret: str, claims: dict[str, Any]) -> str:
    # Short HMAC keys are the operator's choice (Centrifugo accepts them); keep stderr clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")


def _token_claims(token_cfg: Any, user: str, ttl: int) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now}
    if ttl > 0:
        claims["exp"] = now + ttl
    claim = token_cfg.user_id_claim
    if claim and claim != "sub":
        claims[claim] = user
    return claims


def _expiration_phrase(ttl: int) -> str:
    return "without expiration" if ttl < 0 else f"with expiration TTL {format_duration(ttl)}"


@dataclass(frozen=True)
class SampleToken:
    token: str
    text: str  # what the command prints without --quiet


def sample_token(cfg: Config, user: str, ttl: int, channel: str | None = None) -> SampleToken:
    """A connection JWT (`channel` None) or subscription JWT for `user`, valid for `ttl`
    seconds (negative: no expiration), signed with the config's HMAC key."""
    if channel is None:
        token_cfg: Any = cfg.client.token
    else:
        if not channel:
            raise TokenCommandError("channel is required")
        sub_cfg = cfg.client.subscription_token
        token_cfg = sub_cfg if sub_cfg.enabled else cfg.client.token
    if not token_cfg.hmac_secret_key:
        raise TokenCommandError("no HMAC secret key set")
    claims = _token_claims(token_cfg, user, ttl)
    for_whom = _user_phrase(user)
    if channel is not None:
        claims["channel"] = channel
        for_whom += f' and channel "{channel}"'
    token = _sign(token_cfg.hmac_secret_key, claims)
    return SampleToken(
        token, f"HMAC SHA-256 JWT for {for_whom} {_expiration_phrase(ttl)}:\n{token}"
    )


def _payload_text(token: str) -> str:
    """The token's claims as compact JSON (unverified; only for display)."""
    try:
        segment = token.split(".")[1]
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.dumps(json.loads(raw), separators=(",", ":"))
    except (IndexError, ValueError):
        return ""


def _expire_phrase(expire_at: int) -> str:
    if not expire_at:
        return "without expiration"
    when = datetime.fromtimestamp(expire_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"with expiration at {when}"


async def _verify(cfg: Config, token: str, subscription: bool) -> Any:
    from app.auth import TokenVerifier

    verifier = TokenVerifier(cfg.client)
    try:
        if subscription:
            return await verifier.verify_subscribe_token(token)
        return await verifier.verify_connect_token(token)
    finally:
        result = verifier.close()
        if inspect.isawaitable(result):
            await result


@dataclass(frozen=True)
class TokenCheck:
    valid: bool
    text: str  # stdout when valid, stderr when not


def check_token(cfg: Config, token: str, subscription: bool) -> TokenCheck:
    """`token` verified with the config's keys, as a connect (or subscribe) would verify it."""
    from app.auth import TokenExpired, TokenInvalid

    try:
        claims = asyncio.run(_verify(cfg, token, subscription))
    except TokenExpired as e:
        return TokenCheck(False, f"token error: token expired{f' ({e})' if str(e) else ''}")
    except TokenInvalid as e:
        return TokenCheck(False, f"token error: {e or 'invalid token'}")
    except ValueError as e:  # unusable key configuration (bad PEM, bad JWKS URL, ...)
        raise TokenCommandError(str(e)) from None
    what = "subscription token" if subscription else "token"
    channel = f' and channel "{claims.channel}"' if subscription else ""
    return TokenCheck(
        True,
        f"valid {what} for {_user_phrase(claims.user)}{channel} "
        f"{_expire_phrase(claims.expire_at)}\npayload: {_payload_text(token)}",
    )
