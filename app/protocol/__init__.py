"""Client protocol v2: the Command model and the codec contract.

A codec turns frames into Commands and protocol-neutral results into bytes.
Results are plain dicts whose values may be `bytes` (a raw payload: `data`,
`info`...), `Publication` or `ClientInfo`; each codec renders those its own way
(JSON splices raw JSON, Protobuf writes bytes fields). Every encoded message is
complete on its own; a frame is messages joined by `codec.separator`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from app import jsonraw
from app.models import ClientInfo, Publication

# Request fields a Command may carry, in the order the server looks for them.
METHODS = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)


class DecodeError(ValueError):
    """The frame is not a valid Command; the connection is closed with 3501."""


class EncodeError(ValueError):
    """A reply or push cannot be written in this protocol (binary data for a JSON client);
    the connection is closed with 3506 (inappropriate protocol), as Centrifugo does."""


@dataclass(slots=True)
class Command:
    id: int
    method: str  # "" for an empty command (a pong)
    params: dict[str, Any]


class Codec(Protocol):
    name: str  # "json" or "protobuf"
    separator: bytes  # joins encoded messages into one frame
    ping: bytes  # an empty Reply (bidirectional) / empty Push (unidirectional)

    def decode_commands(self, frame: bytes) -> list[Command]: ...

    def encode_reply(self, cmd_id: int, method: str, result: dict[str, Any]) -> bytes: ...

    def encode_error(self, cmd_id: int, error: dict[str, Any]) -> bytes: ...

    def encode_push(self, channel: str, kind: str, body: dict[str, Any]) -> bytes:
        """A Push: inside a Reply for bidirectional codecs, bare for unidirectional ones."""

    def encode_pub_push(self, channel: str, pub: Publication) -> bytes:
        """The frame every subscriber of `channel` receives for `pub`; b"" when the
        payload cannot travel over this protocol (binary data on JSON)."""

    def encode_join_push(self, channel: str, info: ClientInfo) -> bytes: ...

    def encode_leave_push(self, channel: str, info: ClientInfo) -> bytes: ...


# --- typed access to request fields (wrong type => DecodeError => 3501) ---
# Params come from JSON (parsed values) or Protobuf (bytes for bytes fields).


def get_str(params: dict[str, Any], key: str) -> str:
    v = params.get(key)
    if v is None:
        return ""
    if type(v) is not str:
        raise DecodeError(f"{key} must be a string")
    return v


# 64-bit integers as protobuf's JSON mapping writes them (a decimal string); ASCII digits
# only and at most 20 of them, so "--5", "²" or 5,000 digits are refused before int() sees them.
_INT_STRING = re.compile(r"-?[0-9]{1,20}")
_U64_MAX = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def get_int(params: dict[str, Any], key: str, *, signed: bool = False) -> int:
    """An integer field: a JSON number or a decimal string (protobuf JSON's form for
    64-bit integers), within uint64 (int64 when `signed`); anything else is a DecodeError."""
    v = params.get(key)
    if v is None:
        return 0
    if type(v) is str and _INT_STRING.fullmatch(v):
        v = int(v)
    if type(v) is not int:
        raise DecodeError(f"{key} must be an integer")
    if not (_I64_MIN <= v <= _I64_MAX if signed else 0 <= v <= _U64_MAX):
        raise DecodeError(f"{key} is out of range")
    return v


def get_bool(params: dict[str, Any], key: str) -> bool:
    v = params.get(key)
    if v is None:
        return False
    if type(v) is not bool:
        raise DecodeError(f"{key} must be a boolean")
    return v


def get_dict(params: dict[str, Any], key: str) -> dict[str, Any]:
    v = params.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise DecodeError(f"{key} must be an object")
    return v


def get_raw(params: dict[str, Any], key: str) -> bytes:
    """A `bytes` field: the JSON received (app.jsonraw keeps it as msgspec.Raw) or Protobuf
    bytes; b"" if absent or null."""
    try:
        return jsonraw.payload(params.get(key))
    except jsonraw.JsonError:
        raise DecodeError(f"{key} must be raw JSON or bytes") from None
