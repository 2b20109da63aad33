"""The two outcomes of a refused token. Mapping them to protocol codes (3500, 103, 109,
3005...) is the caller's job."""

from __future__ import annotations

__all__ = ["TokenExpired", "TokenInvalid"]


class TokenInvalid(Exception):
    """Malformed token, bad signature, wrong aud/iss, forbidden or ill-typed claim, bad alg."""


class TokenExpired(Exception):
    """`exp` has passed or `nbf` is still in the future."""
