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

from app.auth.claims import (
    OVERRIDE_FIELDS,
    ConnectTokenClaims,
    SubscribeOptionsClaim,
    SubscribeOverride,
    SubscribeTokenClaims,
)
from app.auth.errors import TokenExpired, TokenInvalid
from app.auth.verifier import TokenVerifier

__all__ = [
    "OVERRIDE_FIELDS",
    "ConnectTokenClaims",
    "SubscribeOptionsClaim",
    "SubscribeOverride",
    "SubscribeTokenClaims",
    "TokenExpired",
    "TokenInvalid",
    "TokenVerifier",
]
