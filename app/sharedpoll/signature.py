"""Track signatures: the HMAC a backend puts on the keys a client may track.

Centrifugo's internal/client/track_signature.go, byte for byte. A signature is
`<iat>:<expiry>:<hex hmac>`; the HMAC-SHA256 (top-level `shared_poll.hmac_secret_key`) is
over the NUL-separated payload `iat \\0 expiry \\0 user \\0 channel \\0 hex(sha256(keys
joined by \\0))`. NUL, not ':', separates the fields so a colon inside the user or channel
cannot shift between them and make a colliding payload for another (user, channel).

`TrackVerifier.check` is Centrifugo's OnTrack loop (internal/client/handler.go): every batch
of a request must verify on its own, with the current key or, while it is valid, the
previous one; a signature whose expiry is more than GRACE_PERIOD in the past is 109.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Sequence

from app.errors import (
    ERROR_INTERNAL,
    ERROR_PERMISSION_DENIED,
    ERROR_TOKEN_EXPIRED,
    ClientError,
)

log = logging.getLogger("centrifugo.sharedpoll")

# Seconds an expired signature is still accepted (gracePeriodSeconds): clock skew between
# the backend that signed and this server.
GRACE_PERIOD = 5

__all__ = ["GRACE_PERIOD", "TrackVerifier", "sign", "signature_times", "verify"]


def signature_times(sig: str) -> tuple[int, int]:
    """(iat, expiry) of a signature; (0, 0) when it is not `<int>:<int>:...`
    (parseSignatureTimestamps)."""
    parts = sig.split(":", 2)
    if len(parts) < 3:
        return 0, 0
    try:
        return _go_int(parts[0]), _go_int(parts[1])
    except ValueError:
        return 0, 0


def _go_int(s: str) -> int:
    """strconv.ParseInt(s, 10, 64): optional sign and ASCII digits only (Python's int()
    would also take spaces and underscores)."""
    digits = s[1:] if s[:1] in ("+", "-") else s
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError(s)
    n = int(s)
    if not -(2**63) <= n < 2**63:
        raise ValueError(s)
    return n


def _payload(iat: str, expiry: str, user: str, channel: str, keys: Sequence[str]) -> bytes:
    keys_hash = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    return "\x00".join((iat, expiry, user, channel, keys_hash)).encode()


def sign(secret: str, channel: str, keys: Sequence[str], user: str, iat: int, expiry: int) -> str:
    """A signature as a backend makes it (the SDK tests' makeTrackSignature)."""
    mac = hmac.new(secret.encode(), _payload(str(iat), str(expiry), user, channel, keys), "sha256")
    return f"{iat}:{expiry}:{mac.hexdigest()}"


def verify(secret: str, channel: str, sig: str, keys: Sequence[str], user: str) -> bool:
    """Whether `sig` signs `keys` of `channel` for `user` with `secret`. The iat and
    expiry text are hashed as sent (the HMAC covers them; they are parsed only later)."""
    parts = sig.split(":", 2)
    if len(parts) < 3:
        return False
    iat, expiry, given = parts
    expected = hmac.new(secret.encode(), _payload(iat, expiry, user, channel, keys), "sha256")
    return hmac.compare_digest(given.encode(), expected.hexdigest().encode())


class TrackVerifier:
    """The configured keys (`shared_poll.hmac_secret_key`, `hmac_previous_secret_key` and
    `hmac_previous_secret_key_valid_until`, unix seconds, 0 for no limit)."""

    __slots__ = ("secret", "previous", "previous_until")

    def __init__(self, secret: str, previous: str = "", previous_until: int = 0) -> None:
        self.secret = secret
        self.previous = previous
        self.previous_until = previous_until

    def check(
        self,
        channel: str,
        user: str,
        batches: Sequence[tuple[str, Sequence[str]]],
        now: float | None = None,
    ) -> list[int]:
        """The expiry (unix seconds, 0 for none) of each (signature, keys) batch; raises
        ClientError 100 (no key configured), 103 (a batch does not verify) or 109 (one
        expired), with one log line, as Centrifugo's OnTrack."""
        if not self.secret:
            log.error("shared poll hmac_secret_key not configured (channel %r)", channel)
            raise ClientError(ERROR_INTERNAL)
        now_s = int(time.time() if now is None else now)
        expiries = []
        for sig, keys in batches:
            ok = verify(self.secret, channel, sig, keys, user)
            if not ok and self.previous:
                if self.previous_until > 0 and signature_times(sig)[0] > self.previous_until:
                    log.info(
                        "track signature issued after previous secret key expiry (channel %r, "
                        "user %r)",
                        channel,
                        user,
                    )
                    raise ClientError(ERROR_PERMISSION_DENIED)
                ok = verify(self.previous, channel, sig, keys, user)
            if not ok:
                log.info("invalid track signature (channel %r, user %r)", channel, user)
                raise ClientError(ERROR_PERMISSION_DENIED)
            expiry = signature_times(sig)[1]
            if expiry > 0 and expiry + GRACE_PERIOD < now_s:
                log.info("track signature expired (channel %r, user %r)", channel, user)
                raise ClientError(ERROR_TOKEN_EXPIRED)
            expiries.append(expiry)
        return expiries
