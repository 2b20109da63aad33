"""Token claims: the typed results of a verified token and the rules that read each claim
from a token's JSON payload (types as Centrifugo's Go structs take them: a wrong type is
`TokenInvalid`, never a default)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from app import jsonraw
from app.auth.errors import TokenInvalid


@dataclass(frozen=True, slots=True)
class SubscribeOverride:
    """Per-subscription overrides of namespace options; None = not overridden."""

    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_recovery: bool | None = None
    force_positioning: bool | None = None


@dataclass(slots=True)
class SubscribeOptionsClaim:
    info: bytes | None = None
    data: bytes | None = None
    override: SubscribeOverride | None = None


@dataclass(slots=True)
class ConnectTokenClaims:
    user: str
    expire_at: int  # unix seconds, 0 = never
    info: bytes | None
    # Centrifugo ignores `channels` when `subs` is non-empty; `channels` is then returned empty
    # so callers can simply subscribe to both.
    channels: list[str]
    subs: dict[str, SubscribeOptionsClaim]
    meta: bytes | None


@dataclass(slots=True)
class SubscribeTokenClaims:
    user: str
    channel: str
    client: str  # "" when absent
    expire_at: int
    info: bytes | None
    data: bytes | None
    override: SubscribeOverride | None


# Claim names of an override object, in SubscribeOverride's order.
OVERRIDE_FIELDS = (
    "presence",
    "join_leave",
    "force_push_join_leave",
    "force_recovery",
    "force_positioning",
)

# Claims whose JSON is kept as the bytes in the token (Centrifugo: json.RawMessage), for
# the connection token and for each entry of its `subs`.
RAW_CLAIMS = frozenset(("info", "data", "meta", "subs"))
_RAW_SUB_OPTIONS = frozenset(("info", "data"))


def _b64std(value: Any, name: str) -> bytes:
    if type(value) is not str:
        raise TokenInvalid(f"{name} claim must be a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid(f"{name} claim is not valid base64") from None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def opt_str(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if type(value) is not str:
        raise TokenInvalid(f"{name} claim must be a string")
    return value


def opt_time(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:
        raise TokenInvalid(f"{name} claim must be a number")
    if not _INT64_MIN <= value <= _INT64_MAX:
        # Past any time Go holds (an int64 of seconds); a later ttl would not fit a reply.
        raise TokenInvalid(f"{name} claim out of range")
    return value


def parse_audience(claims: dict[str, Any]) -> list[str]:
    value = claims.get("aud")
    if value is None:
        return []
    if type(value) is str:
        return [value]
    if type(value) is list and all(type(a) is str for a in value):
        return value
    raise TokenInvalid("aud claim must be a string or a list of strings")


def raw_claim(obj: dict[str, Any], key: str) -> bytes | None:
    """A raw JSON claim as the bytes in the token; None when absent or null."""
    return jsonraw.payload(obj.get(key)) or None


def json_or_b64(obj: dict[str, Any], json_key: str, b64_key: str) -> bytes | None:
    """`b64<x>` (binary, wins when non-empty) or `<x>` (any JSON, as in the token)."""
    b64 = obj.get(b64_key)
    if b64 is not None:
        decoded = _b64std(b64, b64_key)
        if b64:
            return decoded
    return raw_claim(obj, json_key)


def parse_override(value: Any) -> SubscribeOverride | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise TokenInvalid("override claim must be an object")
    fields: dict[str, bool | None] = {}
    for name in OVERRIDE_FIELDS:
        item = value.get(name)
        if item is None:
            fields[name] = None
            continue
        if type(item) is not dict:
            raise TokenInvalid(f"override.{name} must be an object like {{'value': true}}")
        flag = item.get("value")
        if flag is None:
            fields[name] = False  # Go's BoolValue zero value
        elif type(flag) is bool:
            fields[name] = flag
        else:
            raise TokenInvalid(f"override.{name}.value must be a boolean")
    return SubscribeOverride(**fields)


def parse_subs(value: Any) -> dict[str, SubscribeOptionsClaim]:
    raw = jsonraw.payload(value)
    if not raw:
        return {}
    try:
        entries = jsonraw.members(raw)
    except jsonraw.JsonError:
        raise TokenInvalid("subs claim must be an object") from None
    subs: dict[str, SubscribeOptionsClaim] = {}
    for channel, entry in entries.items():
        entry_raw = jsonraw.payload(entry)
        if not entry_raw:
            subs[channel] = SubscribeOptionsClaim()
            continue
        try:
            opts = jsonraw.object_keeping(entry_raw, _RAW_SUB_OPTIONS)
        except jsonraw.JsonError:
            raise TokenInvalid("subs values must be objects") from None
        subs[channel] = SubscribeOptionsClaim(
            info=json_or_b64(opts, "info", "b64info"),
            data=json_or_b64(opts, "data", "b64data"),
            override=parse_override(opts.get("override")),
        )
    return subs


def parse_channels(value: Any) -> list[str]:
    if value is None:
        return []
    if type(value) is not list or not all(type(c) is str for c in value):
        raise TokenInvalid("channels claim must be a list of strings")
    return value


def parse_expire_at(claims: dict[str, Any], exp: float | None) -> int:
    value = claims.get("expire_at")
    if value is None:
        return int(exp) if exp is not None else 0
    if type(value) is not int:
        raise TokenInvalid("expire_at claim must be an integer")
    if not _INT64_MIN <= value <= _INT64_MAX:  # Go's Unmarshal into *int64 refuses it
        raise TokenInvalid("expire_at claim out of range")
    return value if value > 0 else 0


def claim_as_string(value: Any) -> str:
    """A custom user id claim read the way gjson's String() does in Centrifugo."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    return orjson.dumps(value).decode()
