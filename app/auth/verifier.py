"""TokenVerifier: a worker's verification of connection and subscription JWTs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from app.auth import admin_tail
from app.auth.claims import (
    ConnectTokenClaims,
    SubscribeTokenClaims,
    json_or_b64,
    opt_str,
    opt_time,
    parse_channels,
    parse_expire_at,
    parse_override,
    parse_subs,
    raw_claim,
)
from app.auth.errors import TokenExpired, TokenInvalid
from app.auth.jws import parse_token
from app.auth.keys import Keys

if TYPE_CHECKING:
    from app.config import ClientConfig


class TokenVerifier:
    """Verifies connection and subscription JWTs for one worker.

    Stateless per token apart from the JWKS cache, so verifying never affects other
    connections. Construction raises ValueError (naming the config key) on unusable keys.
    """

    def __init__(self, client_cfg: ClientConfig, admin_tail_key: bytes | None = None) -> None:
        """`admin_tail_key`: accept the admin web UI's live-tail connection tokens signed
        with it (app/auth/admin_tail.py); None when the admin UI is off or has no secret."""
        self._tail_key = admin_tail_key
        self._skip_verify = client_cfg.insecure_skip_token_signature_verify
        self._conn = Keys(client_cfg.token, "client.token")
        if client_cfg.subscription_token.enabled:
            self._sub = Keys(client_cfg.subscription_token, "client.subscription_token")
        else:
            self._sub = self._conn

    async def _verify_common(
        self, keys: Keys, token: str, connect: bool = False
    ) -> tuple[dict[str, Any], str, float | None, float | None]:
        alg, kid, msg, sig, claims = parse_token(token)
        sub = opt_str(claims, "sub")
        exp = opt_time(claims, "exp")
        nbf = opt_time(claims, "nbf")
        if "iat" in claims:
            opt_time(claims, "iat")
        if "jti" in claims:
            opt_str(claims, "jti")
        if connect and kid == admin_tail.TAIL_KID and self._tail_key is not None:
            # The admin UI's own token: its key, none of the application's audience rules.
            if not admin_tail.signature_valid(self._tail_key, alg, msg, sig):
                raise TokenInvalid("admin tail token: invalid signature")
            return claims, sub, exp, nbf
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
        claims, sub, exp, nbf = await self._verify_common(keys, token, connect=True)
        info = json_or_b64(claims, "info", "b64info")
        channels = parse_channels(claims.get("channels"))
        subs = parse_subs(claims.get("subs"))
        meta = raw_claim(claims, "meta")
        expire_at = parse_expire_at(claims, exp)
        if opt_str(claims, "channel"):
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
        channel = opt_str(claims, "channel")
        client = opt_str(claims, "client")
        info = json_or_b64(claims, "info", "b64info")
        data = json_or_b64(claims, "data", "b64data")
        override = parse_override(claims.get("override"))
        expire_at = parse_expire_at(claims, exp)
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
