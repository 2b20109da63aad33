"""Admin session tokens (gorilla/securecookie's layout), the sign-in limiter, and the live
tail's connection tokens as the verifier sees them."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from app.admin import tokens
from app.admin.login_limit import LoginLimiter
from app.auth import TokenInvalid, TokenVerifier, admin_tail
from app.config import load_config

NOW = 1_800_000_000.0


def test_token_round_trip_and_expiry() -> None:
    t = tokens.issue("s3cret", now=NOW)
    assert tokens.valid("s3cret", t, now=NOW)
    assert tokens.valid("s3cret", t, now=NOW + tokens.MAX_AGE - 1)
    assert not tokens.valid("s3cret", t, now=NOW + tokens.MAX_AGE + 1)
    assert not tokens.valid("other", t, now=NOW)
    assert not tokens.valid("", t, now=NOW)


def test_token_layout_is_securecookies() -> None:
    """date|b64(gob value)|mac, the mac over name|date|b64value, base64url throughout."""
    t = tokens.issue("k", now=NOW)
    date, value, mac = base64.urlsafe_b64decode(t).split(b"|", 2)
    assert date == b"1800000000"
    # encoding/gob of the string "authorized": length 14 bytes in all.
    assert base64.urlsafe_b64decode(value) == b"\x0d\x0c\x00\x0aauthorized"
    expected = hmac.new(b"k", b"token|" + date + b"|" + value, hashlib.sha256).digest()
    assert mac == expected


@pytest.mark.parametrize("bad", ["", "!!!", "YWJj", "a" * 5000, "é"])
def test_garbage_tokens_are_refused_quietly(bad: str) -> None:
    assert not tokens.valid("k", bad)


def test_tampered_value_is_refused() -> None:
    date, value, mac = base64.urlsafe_b64decode(tokens.issue("k", now=NOW)).split(b"|", 2)
    forged = base64.urlsafe_b64encode(str(int(NOW) + 999).encode() + b"|" + value + b"|" + mac)
    assert not tokens.valid("k", forged.decode(), now=NOW)


def test_limiter_burst_refill_and_bound() -> None:
    lim = LoginLimiter(burst=2, refill=10.0, max_addresses=3)
    assert lim.allow("a", now=0) and lim.allow("a", now=0)
    assert not lim.allow("a", now=1)
    assert lim.retry_after("a") >= 1
    assert lim.allow("a", now=12)  # one attempt back after `refill` seconds
    assert lim.allow("b", now=0)
    for addr in ("c", "d", "e"):
        lim.allow(addr, now=0)
    assert len(lim._buckets) == 3  # the oldest addresses forgotten


def _verifier(secret: str | None) -> TokenVerifier:
    cfg = load_config(None, env={"CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": "app-key"})
    return TokenVerifier(cfg.client, admin_tail.tail_key(secret) if secret else None)


async def test_tail_token_accepted_only_with_the_admin_key() -> None:
    key = admin_tail.tail_key("adm")
    assert key is not None
    token = admin_tail.mint(key, "news")
    claims = await _verifier("adm").verify_connect_token(token)
    assert [s for s in claims.subs] == ["news"] and claims.expire_at == 0
    with pytest.raises(TokenInvalid):
        await _verifier("other").verify_connect_token(token)
    with pytest.raises(TokenInvalid):  # admin UI off: the kid means nothing, app key fails
        await _verifier(None).verify_connect_token(token)
    with pytest.raises(TokenInvalid):  # never as a subscription token
        await _verifier("adm").verify_subscribe_token(token)
