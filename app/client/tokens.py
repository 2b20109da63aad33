"""Token checks shared by connect, refresh and sub_refresh."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.auth import TokenExpired, TokenInvalid
from app.errors import DISCONNECT_INVALID_TOKEN, ClientError, Disconnect

T = TypeVar("T")


async def verified(
    check: Awaitable[T], expired: Callable[[], ClientError | Disconnect], what: str
) -> T:
    """The claims of a token being verified. An expired token raises what `expired`
    makes (each command answers it its own way; made only then, not on every connect);
    an invalid one disconnects with 3500, naming `what`."""
    try:
        return await check
    except TokenExpired:
        raise expired() from None
    except TokenInvalid as e:
        raise Disconnect(DISCONNECT_INVALID_TOKEN, detail=f"invalid {what}: {e}") from None
