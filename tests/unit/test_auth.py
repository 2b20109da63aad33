"""app/auth/: JWT verification of connection and subscription tokens (research §3)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from app.auth import (
    ConnectTokenClaims,
    SubscribeOptionsClaim,
    SubscribeOverride,
    TokenExpired,
    TokenInvalid,
    TokenVerifier,
)
from app.auth.jwks import JWKS_CACHE_TTL, JWKS_MIN_REFETCH_INTERVAL
from app.config import load_config

SECRET = "test-secret-key-that-is-long-enough-for-hs512-0123456789abcdef-0123"
OTHER_SECRET = "another-secret-key-that-is-long-enough-for-hs512-0123456789abc-0123"


def client_cfg(*, insecure_skip: bool = False, sub: dict[str, Any] | None = None, **token: Any):
    """cfg.client built through the real config loader (flags = dotted key paths)."""
    flags: dict[str, Any] = {f"client.token.{k}": v for k, v in token.items()}
    for k, v in (sub or {}).items():
        flags[f"client.subscription_token.{k}"] = v
    if insecure_skip:
        flags["client.insecure_skip_token_signature_verify"] = True
    return load_config(None, env={}, flags=flags).client


def verifier(**kwargs: Any) -> TokenVerifier:
    return TokenVerifier(client_cfg(**kwargs))


def hs(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, secret, algorithm=alg, headers=headers or None)


def future(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: Any, signature: bytes = b"") -> str:
    return ".".join([b64url(orjson.dumps(header)), b64url(orjson.dumps(claims)), b64url(signature)])


def pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
        "ES512": ec.generate_private_key(ec.SECP521R1()),
    }


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


# --------------------------------------------------------------------------- HMAC


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_algorithms(alg: str) -> None:
    v = verifier(hmac_secret_key=SECRET)
    claims = await v.verify_connect_token(hs({"sub": "42"}, alg=alg))
    assert claims == ConnectTokenClaims(
        user="42", expire_at=0, info=None, channels=[], subs={}, meta=None
    )


async def test_hmac_wrong_secret_is_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET)
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "42"}, secret=OTHER_SECRET))


async def test_hmac_tampered_payload_is_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET)
    header, _, sig = hs({"sub": "42"}).split(".")
    forged = f"{header}.{b64url(orjson.dumps({'sub': 'admin'}))}.{sig}"
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(forged)


async def test_previous_hmac_key_accepted_until_valid_until() -> None:
    old_token = hs({"sub": "old"}, secret=OTHER_SECRET)
    new_token = hs({"sub": "new"})

    rotating = verifier(
        hmac_secret_key=SECRET,
        hmac_previous_secret_key=OTHER_SECRET,
        hmac_previous_secret_key_valid_until=future(),
    )
    assert (await rotating.verify_connect_token(old_token)).user == "old"
    assert (await rotating.verify_connect_token(new_token)).user == "new"

    no_limit = verifier(hmac_secret_key=SECRET, hmac_previous_secret_key=OTHER_SECRET)
    assert (await no_limit.verify_connect_token(old_token)).user == "old"

    ended = verifier(
        hmac_secret_key=SECRET,
        hmac_previous_secret_key=OTHER_SECRET,
        hmac_previous_secret_key_valid_until=int(time.time()) - 1,
    )
    assert (await ended.verify_connect_token(new_token)).user == "new"
    with pytest.raises(TokenInvalid):
        await ended.verify_connect_token(old_token)


# --------------------------------------------------------------------------- RSA / ECDSA


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_rsa_algorithms(alg: str, rsa_key: rsa.RSAPrivateKey) -> None:
    v = verifier(rsa_public_key=pem(rsa_key.public_key()))
    token = jwt.encode({"sub": "7"}, rsa_key, algorithm=alg)
    assert (await v.verify_connect_token(token)).user == "7"


async def test_rsa_wrong_key_is_invalid(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    v = verifier(rsa_public_key=pem(rsa_key.public_key()))
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(jwt.encode({"sub": "7"}, rsa_key2, algorithm="RS256"))


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
async def test_ecdsa_algorithms(alg: str, ec_keys: dict[str, Any]) -> None:
    key = ec_keys[alg]
    v = verifier(ecdsa_public_key=pem(key.public_key()))
    token = jwt.encode({"sub": "e"}, key, algorithm=alg)
    assert (await v.verify_connect_token(token)).user == "e"


async def test_ecdsa_alg_must_fit_key_curve(ec_keys: dict[str, Any]) -> None:
    v = verifier(ecdsa_public_key=pem(ec_keys["ES256"].public_key()))
    with pytest.raises(TokenInvalid, match="disabled"):
        await v.verify_connect_token(jwt.encode({"sub": "e"}, ec_keys["ES384"], algorithm="ES384"))


async def test_ecdsa_bad_signature_is_invalid(ec_keys: dict[str, Any]) -> None:
    v = verifier(ecdsa_public_key=pem(ec_keys["ES256"].public_key()))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(jwt.encode({"sub": "e"}, other, algorithm="ES256"))


async def test_alg_whose_key_is_not_configured_is_invalid(
    rsa_key: rsa.RSAPrivateKey, ec_keys: dict[str, Any]
) -> None:
    only_hmac = verifier(hmac_secret_key=SECRET)
    with pytest.raises(TokenInvalid, match="disabled"):
        await only_hmac.verify_connect_token(jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256"))
    with pytest.raises(TokenInvalid, match="disabled"):
        await only_hmac.verify_connect_token(
            jwt.encode({"sub": "1"}, ec_keys["ES256"], algorithm="ES256")
        )


async def test_hs_token_with_rsa_only_config_is_invalid(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = pem(rsa_key.public_key())
    v = verifier(rsa_public_key=public_pem)
    with pytest.raises(TokenInvalid, match="disabled"):
        await v.verify_connect_token(hs({"sub": "1"}))
    # Key confusion: an HS256 token MACed with the (public) RSA PEM must not verify.
    header = {"alg": "HS256", "typ": "JWT"}
    unsigned = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps({'sub': 'admin'}))}"
    mac = hmac.digest(public_pem.encode(), unsigned.encode(), hashlib.sha256)
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(f"{unsigned}.{b64url(mac)}")


async def test_several_key_types_configured_together(
    rsa_key: rsa.RSAPrivateKey, ec_keys: dict[str, Any]
) -> None:
    v = verifier(
        hmac_secret_key=SECRET,
        rsa_public_key=pem(rsa_key.public_key()),
        ecdsa_public_key=pem(ec_keys["ES256"].public_key()),
    )
    assert (await v.verify_connect_token(hs({"sub": "h"}))).user == "h"
    rs = jwt.encode({"sub": "r"}, rsa_key, algorithm="RS256")
    assert (await v.verify_connect_token(rs)).user == "r"
    es = jwt.encode({"sub": "e"}, ec_keys["ES256"], algorithm="ES256")
    assert (await v.verify_connect_token(es)).user == "e"


def test_unusable_pem_is_a_config_error(ec_keys: dict[str, Any], rsa_key: Any) -> None:
    with pytest.raises(ValueError, match="rsa_public_key"):
        verifier(rsa_public_key="not a pem")
    with pytest.raises(ValueError, match="rsa_public_key"):
        verifier(rsa_public_key=pem(ec_keys["ES256"].public_key()))
    with pytest.raises(ValueError, match="ecdsa_public_key"):
        verifier(ecdsa_public_key=pem(rsa_key.public_key()))


# --------------------------------------------------------------------------- alg none, insecure


async def test_alg_none_is_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET)
    token = raw_token({"alg": "none", "typ": "JWT"}, {"sub": "admin"})
    with pytest.raises(TokenInvalid, match="none"):
        await v.verify_connect_token(token)


async def test_unsupported_alg_is_invalid(rsa_key: rsa.RSAPrivateKey) -> None:
    v = verifier(rsa_public_key=pem(rsa_key.public_key()))
    with pytest.raises(TokenInvalid, match="unsupported"):
        await v.verify_connect_token(jwt.encode({"sub": "1"}, rsa_key, algorithm="PS256"))


async def test_insecure_skip_signature_verify() -> None:
    v = verifier(hmac_secret_key=SECRET, insecure_skip=True)
    assert (await v.verify_connect_token(hs({"sub": "x"}, secret=OTHER_SECRET))).user == "x"
    unsigned = raw_token({"alg": "none"}, {"sub": "y"})
    assert (await v.verify_connect_token(unsigned)).user == "y"
    # Claims are still checked.
    with pytest.raises(TokenExpired):
        await v.verify_connect_token(hs({"sub": "x", "exp": int(time.time()) - 10}))
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "x", "channel": "chat"}))


# --------------------------------------------------------------------------- aud / iss


async def test_audience_exact() -> None:
    v = verifier(hmac_secret_key=SECRET, audience="centrifugo")
    assert (await v.verify_connect_token(hs({"sub": "1", "aud": "centrifugo"}))).user == "1"
    assert (await v.verify_connect_token(hs({"sub": "1", "aud": ["x", "centrifugo"]}))).user == "1"
    for bad in ({"sub": "1", "aud": "other"}, {"sub": "1"}, {"sub": "1", "aud": ["centrifug"]}):
        with pytest.raises(TokenInvalid):
            await v.verify_connect_token(hs(bad))


async def test_audience_not_checked_when_not_configured() -> None:
    v = verifier(hmac_secret_key=SECRET)
    assert (await v.verify_connect_token(hs({"sub": "1", "aud": "whatever"}))).user == "1"


async def test_issuer_exact() -> None:
    v = verifier(hmac_secret_key=SECRET, issuer="https://auth.example.com")
    ok = hs({"sub": "1", "iss": "https://auth.example.com"})
    assert (await v.verify_connect_token(ok)).user == "1"
    for bad in ({"sub": "1", "iss": "https://auth.example.com/"}, {"sub": "1"}):
        with pytest.raises(TokenInvalid):
            await v.verify_connect_token(hs(bad))


async def test_audience_and_issuer_regex() -> None:
    v = verifier(
        hmac_secret_key=SECRET,
        audience_regex=r"^centrifugo-(dev|prod)$",
        issuer_regex=r"^https://[a-z]+\.example\.com$",
    )
    good = {"sub": "1", "aud": ["other", "centrifugo-prod"], "iss": "https://eu.example.com"}
    assert (await v.verify_connect_token(hs(good))).user == "1"
    for bad in (
        {**good, "aud": "centrifugo-test"},
        {**good, "iss": "https://eu.example.com.evil.org"},
        {"sub": "1", "iss": "https://eu.example.com"},
    ):
        with pytest.raises(TokenInvalid):
            await v.verify_connect_token(hs(bad))


async def test_regex_searches_like_go() -> None:
    # Centrifugo uses Go's unanchored FindStringSubmatch: an unanchored pattern matches inside.
    v = verifier(hmac_secret_key=SECRET, issuer_regex=r"example\.com")
    assert (await v.verify_connect_token(hs({"sub": "1", "iss": "https://example.com"}))).user
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "1", "iss": "https://example.org"}))


async def test_wrong_aud_beats_expired() -> None:
    v = verifier(hmac_secret_key=SECRET, audience="a")
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "1", "aud": "b", "exp": 1}))


# --------------------------------------------------------------------------- exp / nbf / expire_at


async def test_exp_and_nbf() -> None:
    v = verifier(hmac_secret_key=SECRET)
    now = int(time.time())
    with pytest.raises(TokenExpired):
        await v.verify_connect_token(hs({"sub": "1", "exp": now - 1}))
    with pytest.raises(TokenExpired):
        await v.verify_connect_token(hs({"sub": "1", "exp": now}))  # no leeway
    with pytest.raises(TokenExpired):
        await v.verify_connect_token(hs({"sub": "1", "nbf": now + 60}))
    ok = await v.verify_connect_token(hs({"sub": "1", "exp": now + 60, "nbf": now - 1}))
    assert ok.expire_at == now + 60


async def test_bad_signature_beats_expired() -> None:
    v = verifier(hmac_secret_key=SECRET)
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "1", "exp": 1}, secret=OTHER_SECRET))


async def test_expire_at_semantics() -> None:
    v = verifier(hmac_secret_key=SECRET)
    exp = future(600)

    async def expire_at(claims: dict[str, Any]) -> int:
        return (await v.verify_connect_token(hs({"sub": "1", **claims}))).expire_at

    assert await expire_at({}) == 0
    assert await expire_at({"exp": exp}) == exp
    assert await expire_at({"exp": exp, "expire_at": 0}) == 0  # never expire, exp still checked
    assert await expire_at({"exp": exp, "expire_at": exp + 100}) == exp + 100
    assert await expire_at({"expire_at": exp + 5}) == exp + 5
    assert await expire_at({"expire_at": -5}) == 0
    assert await expire_at({"exp": exp, "expire_at": None}) == exp
    with pytest.raises(TokenExpired):
        await expire_at({"exp": int(time.time()) - 1, "expire_at": 0})


# --------------------------------------------------------------------------- connect claims


def hs_raw(payload: bytes, secret: str = SECRET) -> str:
    """An HS256 token over exactly these payload bytes (jwt.encode would re-serialise them)."""
    signing_input = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(payload)
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


async def test_raw_claims_are_the_bytes_in_the_token() -> None:
    """info, meta, subs[*].info/data, subscription data: opaque JSON, not re-serialised."""
    v = verifier(hmac_secret_key=SECRET)
    for raw in (b'{"a":1,"a":2}', b"123456789012345678901234567890", b"1E2", b"[0.10]"):
        payload = b'{"sub":"1","info":%s,"meta":%s,"subs":{"c":{"info":%s,"data":%s}}}' % (
            (raw,) * 4
        )
        c = await v.verify_connect_token(hs_raw(payload))
        assert (c.info, c.meta, c.subs["c"].info, c.subs["c"].data) == (raw,) * 4
        payload = b'{"sub":"1","channel":"c","info":%s,"data":%s}' % (raw, raw)
        s = await v.verify_subscribe_token(hs_raw(payload))
        assert (s.info, s.data) == (raw, raw)
    c = await v.verify_connect_token(hs_raw(b'{"sub":"1","info":null,"subs":{"c":null}}'))
    assert c.info is None and c.subs["c"].info is None
    for bad in (b'{"sub":"1","subs":[1]}', b'{"sub":"1","subs":{"c":2}}', b"[1]"):
        with pytest.raises(TokenInvalid):
            await v.verify_connect_token(hs_raw(bad))


async def test_info_and_b64info() -> None:
    v = verifier(hmac_secret_key=SECRET)
    c = await v.verify_connect_token(hs({"sub": "1", "info": {"name": "Alex", "n": [1, 2]}}))
    assert orjson.loads(c.info) == {"name": "Alex", "n": [1, 2]}
    c = await v.verify_connect_token(hs({"sub": "1", "info": "plain string"}))
    assert c.info == b'"plain string"'
    binary = bytes(range(256))
    c = await v.verify_connect_token(
        hs({"sub": "1", "b64info": base64.b64encode(binary).decode(), "info": {"x": 1}})
    )
    assert c.info == binary  # b64info wins over info
    c = await v.verify_connect_token(hs({"sub": "1", "b64info": "", "info": {"x": 1}}))
    assert c.info == b'{"x":1}'  # empty b64info falls back to info
    c = await v.verify_connect_token(hs({"sub": "1", "info": None}))
    assert c.info is None
    with pytest.raises(TokenInvalid, match="b64info"):
        await v.verify_connect_token(hs({"sub": "1", "b64info": "@@not base64@@"}))


async def test_channels_subs_meta() -> None:
    v = verifier(hmac_secret_key=SECRET)
    c = await v.verify_connect_token(
        hs({"sub": "1", "channels": ["news", "chat:1"], "meta": {"plan": "pro"}})
    )
    assert c.channels == ["news", "chat:1"]
    assert c.subs == {}
    assert orjson.loads(c.meta) == {"plan": "pro"}

    c = await v.verify_connect_token(
        hs(
            {
                "sub": "1",
                "channels": ["ignored"],
                "subs": {
                    "a": {"info": {"i": 1}, "data": {"welcome": True}},
                    "b": {
                        "b64info": base64.b64encode(b"\x00\x01").decode(),
                        "b64data": base64.b64encode(b"\xff").decode(),
                        "override": {
                            "presence": {"value": False},
                            "join_leave": {"value": True},
                            "force_recovery": {"value": True},
                        },
                    },
                    "c": {},
                },
            }
        )
    )
    # Centrifugo ignores `channels` when `subs` is present.
    assert c.channels == []
    assert c.subs["a"] == SubscribeOptionsClaim(info=b'{"i":1}', data=b'{"welcome":true}')
    assert c.subs["b"] == SubscribeOptionsClaim(
        info=b"\x00\x01",
        data=b"\xff",
        override=SubscribeOverride(
            presence=False,
            join_leave=True,
            force_push_join_leave=None,
            force_recovery=True,
            force_positioning=None,
        ),
    )
    assert c.subs["c"] == SubscribeOptionsClaim()


async def test_connect_token_with_channel_claim_is_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET)
    with pytest.raises(TokenInvalid, match="channel"):
        await v.verify_connect_token(hs({"sub": "1", "channel": "news"}))
    # An empty channel claim is the Go zero value: allowed.
    assert (await v.verify_connect_token(hs({"sub": "1", "channel": ""}))).user == "1"


async def test_user_id_claim() -> None:
    v = verifier(hmac_secret_key=SECRET, user_id_claim="user_id")
    c = await v.verify_connect_token(hs({"sub": "ignored", "user_id": "u-9"}))
    assert c.user == "u-9"
    assert (await v.verify_connect_token(hs({"user_id": 42}))).user == "42"
    assert (await v.verify_connect_token(hs({"sub": "x"}))).user == ""
    default = verifier(hmac_secret_key=SECRET)
    assert (await default.verify_connect_token(hs({}))).user == ""  # anonymous token


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": 42},
        {"sub": "1", "exp": "tomorrow"},
        {"sub": "1", "exp": True},
        {"sub": "1", "nbf": [1]},
        {"sub": "1", "iat": "now"},
        {"sub": "1", "jti": 5},
        {"sub": "1", "channels": "news"},
        {"sub": "1", "channels": ["news", 5]},
        {"sub": "1", "subs": ["news"]},
        {"sub": "1", "subs": {"news": "yes"}},
        {"sub": "1", "subs": {"news": {"override": {"presence": True}}}},
        {"sub": "1", "subs": {"news": {"override": {"presence": {"value": "yes"}}}}},
        {"sub": "1", "subs": {"news": {"override": []}}},
        {"sub": "1", "subs": {"news": {"b64data": 5}}},
        {"sub": "1", "expire_at": "1700000000"},
        {"sub": "1", "expire_at": 1700000000.5},
        {"sub": "1", "expire_at": True},
        {"sub": "1", "b64info": 12},
        {"sub": "1", "channel": 7},
    ],
)
async def test_wrong_claim_types_are_invalid(claims: dict[str, Any]) -> None:
    v = verifier(hmac_secret_key=SECRET, audience="")
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs(claims))


async def test_wrong_aud_type_is_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET, audience="a")
    for aud in (5, ["a", 5], {"a": 1}):
        with pytest.raises(TokenInvalid, match="aud"):
            await v.verify_connect_token(hs({"sub": "1", "aud": aud}))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "ééé.ééé.ééé",
        b64url(b"not json") + "." + b64url(b"{}") + ".",
        b64url(b'{"typ":"JWT"}') + "." + b64url(b'{"sub":"1"}') + ".",  # no alg
        b64url(b'{"alg":5}') + "." + b64url(b'{"sub":"1"}') + ".",
        b64url(b'{"alg":"HS256","kid":5}') + "." + b64url(b'{"sub":"1"}') + ".",
        b64url(b"[1]") + "." + b64url(b'{"sub":"1"}') + ".",
        b64url(b'{"alg":"HS256"}') + "." + b64url(b"[1,2]") + ".",
        b64url(b'{"alg":"HS256"}') + "." + b64url(b"not json") + ".",
        b64url(b'{"alg":"HS256"}') + ".!!!." + b64url(b"x"),
    ],
)
async def test_garbage_tokens_are_invalid(token: str) -> None:
    v = verifier(hmac_secret_key=SECRET)
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(token)
    with pytest.raises(TokenInvalid):
        await v.verify_subscribe_token(token)


async def test_garbage_appended_to_signature_is_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET)
    token = hs({"sub": "1"})
    for bad in (token + "AA", token + "$", token[:-2]):
        with pytest.raises(TokenInvalid):
            await v.verify_connect_token(bad)


# --------------------------------------------------------------------------- subscription tokens


async def test_subscription_token_claims() -> None:
    v = verifier(hmac_secret_key=SECRET)
    exp = future(100)
    c = await v.verify_subscribe_token(
        hs(
            {
                "sub": "42",
                "channel": "$private",
                "client": "client-id",
                "exp": exp,
                "info": {"role": "admin"},
                "b64data": base64.b64encode(b"\x01\x02").decode(),
                "override": {
                    "force_positioning": {"value": True},
                    "force_push_join_leave": {"value": False},
                },
            }
        )
    )
    assert c.user == "42"
    assert c.channel == "$private"
    assert c.client == "client-id"
    assert c.expire_at == exp
    assert c.info == b'{"role":"admin"}'
    assert c.data == b"\x01\x02"
    assert c.override == SubscribeOverride(force_positioning=True, force_push_join_leave=False)

    minimal = await v.verify_subscribe_token(hs({"sub": "", "channel": "$c", "data": [1]}))
    assert (minimal.user, minimal.client, minimal.expire_at) == ("", "", 0)
    assert minimal.data == b"[1]"
    assert minimal.info is None and minimal.override is None

    with_expire_at = await v.verify_subscribe_token(
        hs({"sub": "1", "channel": "$c", "exp": exp, "expire_at": 0})
    )
    assert with_expire_at.expire_at == 0


async def test_subscription_token_channel_required() -> None:
    v = verifier(hmac_secret_key=SECRET)
    with pytest.raises(TokenInvalid, match="channel"):
        await v.verify_subscribe_token(hs({"sub": "42"}))
    with pytest.raises(TokenInvalid, match="channel"):
        await v.verify_subscribe_token(hs({"sub": "42", "channel": ""}))
    with pytest.raises(TokenExpired):
        await v.verify_subscribe_token(hs({"sub": "42", "channel": "$c", "exp": 1}))


async def test_subscription_token_wrong_types_are_invalid() -> None:
    v = verifier(hmac_secret_key=SECRET)
    for claims in (
        {"sub": "1", "channel": ["$c"]},
        {"sub": "1", "channel": "$c", "client": 5},
        {"sub": "1", "channel": "$c", "override": {"presence": {"value": 1}}},
        {"sub": "1", "channel": "$c", "b64data": "%%%"},
        {"sub": "1", "channel": "$c", "expire_at": 1.5},
    ):
        with pytest.raises(TokenInvalid):
            await v.verify_subscribe_token(hs(claims))


async def test_separate_subscription_token_config() -> None:
    v = verifier(hmac_secret_key=SECRET, sub={"enabled": True, "hmac_secret_key": OTHER_SECRET})
    sub_claims = {"sub": "1", "channel": "$c"}
    assert (await v.verify_subscribe_token(hs(sub_claims, secret=OTHER_SECRET))).channel == "$c"
    with pytest.raises(TokenInvalid):
        await v.verify_subscribe_token(hs(sub_claims))
    assert (await v.verify_connect_token(hs({"sub": "1"}))).user == "1"
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "1"}, secret=OTHER_SECRET))


async def test_subscription_section_ignored_when_not_enabled() -> None:
    v = verifier(hmac_secret_key=SECRET, sub={"enabled": False, "hmac_secret_key": OTHER_SECRET})
    assert (await v.verify_subscribe_token(hs({"sub": "1", "channel": "$c"}))).channel == "$c"
    with pytest.raises(TokenInvalid):
        await v.verify_subscribe_token(hs({"sub": "1", "channel": "$c"}, secret=OTHER_SECRET))


# --------------------------------------------------------------------------- JWKS


@dataclass
class JwksServer:
    url: str
    keys: list[dict[str, Any]]
    hits: dict[str, int] = field(default_factory=dict)
    # Status codes to answer before serving the keys (one per request).
    failures: list[int] = field(default_factory=list)

    def total_hits(self) -> int:
        return sum(self.hits.values())


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    state = JwksServer(url="", keys=[])

    async def handler(request: web.Request) -> web.StreamResponse:
        state.hits[request.path] = state.hits.get(request.path, 0) + 1
        if state.failures:
            return web.Response(status=state.failures.pop(0))
        return web.json_response({"keys": state.keys})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


def ed_jwk(key: ed25519.Ed25519PrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {**OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, **extra}


@pytest.fixture
async def jwks_verifier(
    jwks_server: JwksServer,
) -> AsyncIterator[Callable[..., TokenVerifier]]:
    made: list[TokenVerifier] = []

    def make(path: str = "/certs", **token: Any) -> TokenVerifier:
        v = verifier(jwks_public_endpoint=jwks_server.url + path, **token)
        made.append(v)
        return v

    yield make
    for v in made:
        await v.close()


async def test_jwks_all_key_types(
    jwks_server: JwksServer,
    jwks_verifier: Callable[..., TokenVerifier],
    rsa_key: Any,
    ec_keys: dict[str, Any],
    ed_key: Any,
) -> None:
    jwks_server.keys = [
        rsa_jwk(rsa_key, "r1", use="sig"),
        ec_jwk(ec_keys["ES256"], "e256"),
        ec_jwk(ec_keys["ES384"], "e384", alg="ES384"),
        ed_jwk(ed_key, "o1", use="sig"),
    ]
    v = jwks_verifier()
    tokens = {
        "RS256": jwt.encode({"sub": "r"}, rsa_key, algorithm="RS256", headers={"kid": "r1"}),
        "RS512": jwt.encode({"sub": "r5"}, rsa_key, algorithm="RS512", headers={"kid": "r1"}),
        "ES256": jwt.encode(
            {"sub": "e"}, ec_keys["ES256"], algorithm="ES256", headers={"kid": "e256"}
        ),
        "ES384": jwt.encode(
            {"sub": "e3"}, ec_keys["ES384"], algorithm="ES384", headers={"kid": "e384"}
        ),
        "EdDSA": jwt.encode({"sub": "o"}, ed_key, algorithm="EdDSA", headers={"kid": "o1"}),
    }
    users = [(await v.verify_connect_token(t)).user for t in tokens.values()]
    assert users == ["r", "r5", "e", "e3", "o"]
    assert jwks_server.total_hits() == 1  # one fetch served every kid


async def test_jwks_cache_and_unknown_kid(
    jwks_server: JwksServer, jwks_verifier: Callable[..., TokenVerifier], rsa_key: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    v = jwks_verifier()
    token = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert (await v.verify_connect_token(token)).user == "1"
    assert jwks_server.total_hits() == 1
    assert (await v.verify_connect_token(token)).user == "1"
    assert (
        await v.verify_subscribe_token(
            jwt.encode(
                {"sub": "1", "channel": "$c"}, rsa_key, algorithm="RS256", headers={"kid": "k1"}
            )
        )
    ).channel == "$c"
    assert jwks_server.total_hits() == 1  # served from cache

    unknown = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "nope"})
    with pytest.raises(TokenInvalid, match="not found"):
        await v.verify_connect_token(unknown)
    # The set was fetched less than JWKS_MIN_REFETCH_INTERVAL ago: no request per forged kid.
    assert jwks_server.total_hits() == 1

    no_kid = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256")
    with pytest.raises(TokenInvalid, match="kid"):
        await v.verify_connect_token(no_kid)


def _age_jwks_cache(v: TokenVerifier, seconds: float) -> None:
    jwks = v._conn.jwks
    assert jwks is not None
    for s in jwks._sets.values():
        s.fetched -= seconds


async def test_jwks_unknown_kid_refetches_after_interval(
    jwks_server: JwksServer,
    jwks_verifier: Callable[..., TokenVerifier],
    rsa_key: Any,
    rsa_key2: Any,
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    v = jwks_verifier()
    await v.verify_connect_token(
        jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    )
    # Key rotation: a new kid appears at the endpoint.
    jwks_server.keys = [rsa_jwk(rsa_key, "k1"), rsa_jwk(rsa_key2, "k2")]
    rotated = jwt.encode({"sub": "2"}, rsa_key2, algorithm="RS256", headers={"kid": "k2"})
    _age_jwks_cache(v, JWKS_MIN_REFETCH_INTERVAL + 0.1)
    assert (await v.verify_connect_token(rotated)).user == "2"
    assert jwks_server.total_hits() == 2


async def test_jwks_cache_expires_after_ttl(
    jwks_server: JwksServer, jwks_verifier: Callable[..., TokenVerifier], rsa_key: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    v = jwks_verifier()
    token = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    await v.verify_connect_token(token)
    _age_jwks_cache(v, JWKS_CACHE_TTL - 60)
    await v.verify_connect_token(token)
    assert jwks_server.total_hits() == 1
    _age_jwks_cache(v, 120)
    await v.verify_connect_token(token)
    assert jwks_server.total_hits() == 2
    # Endpoint down after expiry: the stale key keeps working rather than failing everyone.
    _age_jwks_cache(v, JWKS_CACHE_TTL + 1)
    jwks_server.failures = [500, 500]
    assert (await v.verify_connect_token(token)).user == "1"
    assert jwks_server.total_hits() == 4


async def test_jwks_retry_once(
    jwks_server: JwksServer, jwks_verifier: Callable[..., TokenVerifier], rsa_key: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    jwks_server.failures = [503]
    v = jwks_verifier()
    token = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    assert (await v.verify_connect_token(token)).user == "1"
    assert jwks_server.total_hits() == 2


async def test_jwks_endpoint_failure_is_invalid(
    jwks_server: JwksServer, jwks_verifier: Callable[..., TokenVerifier], rsa_key: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    jwks_server.failures = [500, 500]
    v = jwks_verifier()
    token = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(TokenInvalid, match="500"):
        await v.verify_connect_token(token)
    assert jwks_server.total_hits() == 2  # one try + one retry


async def test_jwks_concurrent_verifications_share_one_fetch(
    jwks_server: JwksServer, jwks_verifier: Callable[..., TokenVerifier], rsa_key: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    v = jwks_verifier()
    tokens = [
        jwt.encode({"sub": str(i)}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
        for i in range(10)
    ]
    results = await asyncio.gather(*(v.verify_connect_token(t) for t in tokens))
    assert [r.user for r in results] == [str(i) for i in range(10)]
    assert jwks_server.total_hits() == 1


async def test_jwks_only_jwks_tokens_accepted(
    jwks_server: JwksServer,
    jwks_verifier: Callable[..., TokenVerifier],
    rsa_key: Any,
    ec_keys: dict[str, Any],
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1"), ec_jwk(ec_keys["ES256"], "e1")]
    v = jwks_verifier(hmac_secret_key=SECRET, rsa_public_key=pem(rsa_key.public_key()))
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(hs({"sub": "1"}, kid="k1"))
    with pytest.raises(TokenInvalid):  # statically configured RSA key is not used either
        await v.verify_connect_token(jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256"))
    # alg must fit the key type of the kid.
    with pytest.raises(TokenInvalid, match="unsupported"):
        await v.verify_connect_token(
            jwt.encode({"sub": "1"}, ec_keys["ES256"], algorithm="ES256", headers={"kid": "k1"})
        )
    with pytest.raises(TokenInvalid):
        await v.verify_connect_token(raw_token({"alg": "none", "kid": "k1"}, {"sub": "1"}))


async def test_jwks_key_alg_is_enforced(
    jwks_server: JwksServer, jwks_verifier: Callable[..., TokenVerifier], rsa_key: Any
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1", alg="RS256"), rsa_jwk(rsa_key, "enc", use="enc")]
    v = jwks_verifier()
    with pytest.raises(TokenInvalid, match="mismatch"):
        await v.verify_connect_token(
            jwt.encode({"sub": "1"}, rsa_key, algorithm="RS384", headers={"kid": "k1"})
        )
    with pytest.raises(TokenInvalid, match="not found"):  # keys not meant for signatures
        await v.verify_connect_token(
            jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256", headers={"kid": "enc"})
        )


async def test_jwks_bad_signature_is_invalid(
    jwks_server: JwksServer,
    jwks_verifier: Callable[..., TokenVerifier],
    rsa_key: Any,
    rsa_key2: Any,
) -> None:
    jwks_server.keys = [rsa_jwk(rsa_key, "k1")]
    v = jwks_verifier()
    with pytest.raises(TokenInvalid, match="signature"):
        await v.verify_connect_token(
            jwt.encode({"sub": "1"}, rsa_key2, algorithm="RS256", headers={"kid": "k1"})
        )


async def test_jwks_url_template_from_issuer_regex(
    jwks_server: JwksServer,
    jwks_verifier: Callable[..., TokenVerifier],
    rsa_key: Any,
    rsa_key2: Any,
) -> None:
    v = jwks_verifier(
        path="/realms/{{realm}}/certs",
        issuer_regex=r"^https://auth\.example\.com/realms/(?P<realm>alpha|beta)$",
    )
    # Both tenants use the same kid: keys must not leak across endpoints.
    jwks_server.keys = [rsa_jwk(rsa_key, "same")]
    alpha = jwt.encode(
        {"sub": "a", "iss": "https://auth.example.com/realms/alpha"},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "same"},
    )
    assert (await v.verify_connect_token(alpha)).user == "a"
    assert jwks_server.hits == {"/realms/alpha/certs": 1}

    jwks_server.keys = [rsa_jwk(rsa_key2, "same")]
    beta_signed_with_alpha_key = jwt.encode(
        {"sub": "b", "iss": "https://auth.example.com/realms/beta"},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "same"},
    )
    with pytest.raises(TokenInvalid, match="signature"):
        await v.verify_connect_token(beta_signed_with_alpha_key)
    assert jwks_server.hits == {"/realms/alpha/certs": 1, "/realms/beta/certs": 1}

    with pytest.raises(TokenInvalid, match="issuer"):
        await v.verify_connect_token(
            jwt.encode(
                {"sub": "g", "iss": "https://auth.example.com/realms/gamma"},
                rsa_key,
                algorithm="RS256",
                headers={"kid": "same"},
            )
        )
    assert jwks_server.total_hits() == 2  # no fetch for a token whose issuer does not match


def test_jwks_template_needs_explicit_alternation() -> None:
    with pytest.raises(ValueError, match="realm"):
        verifier(
            jwks_public_endpoint="http://127.0.0.1:1/{{realm}}/certs",
            issuer_regex=r"https://auth/(?P<realm>[a-z]+)",
        )
    with pytest.raises(ValueError, match="tenant"):
        verifier(jwks_public_endpoint="http://127.0.0.1:1/{{tenant}}/certs")
    relaxed = verifier(
        jwks_public_endpoint="http://127.0.0.1:1/{{realm}}/certs",
        issuer_regex=r"https://auth/(?P<realm>[a-z]+)",
        insecure_skip_jwks_endpoint_safety_check=True,
    )
    assert relaxed._conn.jwks is not None
    with pytest.raises(ValueError, match="jwks_public_endpoint"):
        verifier(jwks_public_endpoint="ftp://example.com/keys")
    # Go's (?<name>...) spelling of a named group counts as Python's (?P<name>...).
    go_style = verifier(
        jwks_public_endpoint="http://127.0.0.1:1/{{realm}}/certs",
        issuer_regex=r"https://auth/(?<realm>alpha|beta)",
    )
    assert go_style._conn.jwks is not None


# --------------------------------------------------------------------------- cost


async def test_hmac_verification_is_cheap() -> None:
    v = verifier(hmac_secret_key=SECRET)
    token = hs({"sub": "1", "exp": future(), "info": {"name": "x"}, "channels": ["a"]})
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        await v.verify_connect_token(token)
    per_call = (time.perf_counter() - started) / n
    # A few microseconds normally; the bound only catches per-call key setup or re-parsing.
    assert per_call < 500e-6
