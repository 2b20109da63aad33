"""What a subscribe request asks for before any subscription exists: its type (stream, map
types, shared poll) and whether the namespace takes it (Centrifugo's
isSubscriptionTypeAllowed), and the namespace's subscription flags with a token's or
proxy's overrides applied."""

from __future__ import annotations

from typing import Any

from app.auth import SubscribeOverride
from app.config import ChannelOptions
from app.protocol import DecodeError, get_int

DELTA_FOSSIL = "fossil"  # the only delta type (centrifuge's stringToDeltaType)

# SubscribeRequest.type (centrifuge SubscriptionType, an int32) and the name a namespace's
# subscription_type gives it; any other number is "unknown", allowed nowhere.
SUB_TYPE_STREAM = 0
SUB_TYPE_SHARED_POLL = 4
_SUB_TYPE_NAMES = {0: "stream", 1: "map", 2: "map_clients", 3: "map_users", 4: "shared_poll"}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def subscription_type(params: dict[str, Any]) -> int:
    sub_type = get_int(params, "type", signed=True)
    if not _INT32_MIN <= sub_type <= _INT32_MAX:
        raise DecodeError("type is out of range")
    return sub_type


def subscription_type_allowed(sub_type: int, configured: str) -> bool:
    """Centrifugo's isSubscriptionTypeAllowed: a namespace without subscription_type takes
    stream subscriptions only, one with it exactly its type."""
    if not configured:
        return sub_type == SUB_TYPE_STREAM
    return configured == _SUB_TYPE_NAMES.get(sub_type, "unknown")


def subscribe_flags(
    ns: ChannelOptions, ov: SubscribeOverride | None
) -> tuple[bool, bool, bool, bool, bool]:
    """presence, join_leave, force_push_join_leave, force_recovery, force_positioning of
    the namespace, with a token's or proxy's overrides (None: not overridden) applied."""
    flags = (
        ns.presence,
        ns.join_leave,
        ns.force_push_join_leave,
        ns.force_recovery,
        ns.force_positioning,
    )
    if ov is None:
        return flags
    over = (
        ov.presence,
        ov.join_leave,
        ov.force_push_join_leave,
        ov.force_recovery,
        ov.force_positioning,
    )
    p, j, fp, fr, fpos = (d if o is None else o for o, d in zip(over, flags, strict=True))
    return p, j, fp, fr, fpos
