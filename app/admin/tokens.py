"""Admin session tokens: what `POST /admin/auth` hands out and `/admin/api` checks.

Centrifugo signs them with gorilla/securecookie (`internal/admin/handlers.go`): name "token",
value the string "authorized", HMAC-SHA256 keyed by `admin.secret`, no encryption, and
securecookie's default maximum age of 30 days. We produce and accept the same layout, so a
token a Centrifugo node issued with the same secret works here and the other way round:

    base64url( timestamp "|" base64url(gob("authorized")) "|" HMAC(name "|" timestamp "|" value) )

`gob("authorized")` is encoding/gob's stream for one top-level string: the message length,
the predefined type id of string (6, sent as the signed varint 12), the zero field delta of a
singleton value, then the length-prefixed bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

NAME = b"token"
VALUE = b"authorized"
MAX_AGE = 86400 * 30  # securecookie's default MaxAge, which Centrifugo keeps

_GOB_VALUE = bytes([3 + len(VALUE), 12, 0, len(VALUE)]) + VALUE


def _mac(secret: bytes, signed: bytes) -> bytes:
    return hmac.new(secret, NAME + b"|" + signed, hashlib.sha256).digest()


def issue(secret: str, now: float | None = None) -> str:
    """A new admin token signed with `secret`."""
    stamp = str(int(time.time() if now is None else now)).encode()
    signed = stamp + b"|" + base64.urlsafe_b64encode(_GOB_VALUE)
    return base64.urlsafe_b64encode(signed + b"|" + _mac(secret.encode(), signed)).decode()


def valid(secret: str, token: str, now: float | None = None) -> bool:
    """Whether `token` was issued with `secret` less than `MAX_AGE` seconds ago."""
    if not secret or not token or len(token) > 4096:
        return False
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return False
    parts = raw.split(b"|", 2)
    if len(parts) != 3:
        return False
    stamp, value, mac = parts
    if not hmac.compare_digest(_mac(secret.encode(), stamp + b"|" + value), mac):
        return False
    try:
        issued = int(stamp)
        decoded = base64.urlsafe_b64decode(value)
    except (ValueError, binascii.Error):
        return False
    if issued < (time.time() if now is None else now) - MAX_AGE:
        return False
    return decoded == _GOB_VALUE
