"""Connection tokens the admin web UI mints for its live tail of a channel.

The UI follows a channel through the server's own WebSocket endpoint, as any client does; the
admin session (`POST /admin/tail`, app/admin/handlers.py) gets a connection JWT whose `subs`
claim subscribes the connection to that one channel on the server side, so no channel
permission or subscribe proxy is involved and the tail sees what subscribers see.

These tokens are signed HS256 with a key derived from `admin.secret` (never the client token
keys: an application's secret stays the application's) and name it with the header `kid`
`TAIL_KID`; the verifier accepts that kid only when the admin UI is on and has a secret. Every
worker and node with the same secret derives the same key, so the WebSocket may land anywhere.
The token is good for connecting during `TTL` seconds; the connection itself does not expire
(`expire_at: 0`), and the UI asks for a fresh token when it reconnects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson

TAIL_KID = "centrifugo-py-admin-tail"
TTL = 60

_HEADER = base64.urlsafe_b64encode(
    orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": TAIL_KID})
).rstrip(b"=")


def tail_key(admin_secret: str) -> bytes | None:
    """The signing key of tail tokens under `admin_secret`; None without a secret."""
    if not admin_secret:
        return None
    return hmac.new(
        admin_secret.encode(), b"centrifugo-py admin live tail", hashlib.sha256
    ).digest()


def mint(key: bytes, channel: str, now: float | None = None) -> str:
    """A connection JWT subscribing its connection to `channel` (server-side)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": "",
        "iat": issued,
        "exp": issued + TTL,
        "expire_at": 0,
        "info": {"admin_ui": "live tail"},
        "subs": {channel: {}},
    }
    body = _HEADER + b"." + base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    sig = base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()).rstrip(b"=")
    return (body + b"." + sig).decode()


def signature_valid(key: bytes, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """Whether a token naming `TAIL_KID` carries this key's HS256 signature."""
    if alg != "HS256":
        return False
    expected = hmac.new(key, signing_input, hashlib.sha256).digest()
    return hmac.compare_digest(expected, signature)
