"""Client protocol v2: the Command model and the codec contract.

A codec turns frames into Commands and protocol-neutral results into bytes.
Results are plain dicts whose values may be `bytes` (a raw payload: `data`,
`info`...), `Publication` or `ClientInfo`; each codec renders those its own way
(JSON splices raw JSON, Protobuf writes bytes fields). Every encoded message is
complete on its own; a frame is messages joined by `codec.separator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


def get_int(params: dict[str, Any], key: str, *, signed: bool = False) -> int:
    v = params.get(key)
    if v is None:
        return 0
    if type(v) is str and v.lstrip("-").isdigit():
        # protobuf JSON encodes 64-bit integers as strings; accept both forms.
        v = int(v)
    if type(v) is not int or (v < 0 and not signed):
        raise DecodeError(f"{key} must be an integer")
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
    """A `bytes` field: raw JSON re-serialised compactly, or Protobuf bytes; b"" if absent."""
    v = params.get(key)
    if v is None:
        return b""
    if type(v) is bytes:
        return v
    import orjson

    return orjson.dumps(v)
