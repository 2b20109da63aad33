"""Server API request decoding: a method's params (decoded JSON, or gRPC messages turned
into dicts by app/api/grpc.py) into typed values, mirroring Go's encoding/json into
Centrifugo's apiproto structs.

Payload fields (`data`, `info`, `params`) arrive as the bytes received: `msgspec.Raw` spans
of a JSON body (app/api/request.py) or `bytes` from gRPC; they stay so (`_raw`), and
`publication_data` turns them into the Publication's data as they are, never parsed and
re-encoded.

Also the shape of a batch: `batch_item` checks one command and picks its method the way
Centrifugo does.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from app import jsonraw
from app.api.errors import ApiDecodeError, api_error
from app.api.request import PlainPublish
from app.auth import OVERRIDE_FIELDS, SubscribeOverride
from app.models import StreamPosition

# --------------------------------------------------------------------------------------------
# params decoding: JSON values -> typed values, mirroring Go's encoding/json into apiproto
# structs. A null value or a missing key is the zero value; a wrong type is a decode error.


def _str(v: Any, name: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise ApiDecodeError(f"{name}: expected string")


def _bool(v: Any, name: str) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    raise ApiDecodeError(f"{name}: expected bool")


def _int(lo: int, hi: int) -> Callable[[Any, str], int]:
    def conv(v: Any, name: str) -> int:
        if v is None:
            return 0
        # bool is an int subclass in Python but not a JSON number; 1.0 does not fit a Go int.
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
        raise ApiDecodeError(f"{name}: expected integer in [{lo}, {hi}]")

    return conv


_int32 = _int(-(2**31), 2**31 - 1)
_int64 = _int(-(2**63), 2**63 - 1)
_uint32 = _int(0, 2**32 - 1)
_uint64 = _int(0, 2**64 - 1)


def _raw(v: Any, name: str) -> msgspec.Raw | bytes | None:
    # A payload as received: a Raw span of a JSON body, or bytes from gRPC; None when absent.
    if v is None or type(v) is msgspec.Raw or type(v) is bytes:
        return v
    raise ApiDecodeError(f"{name}: expected raw JSON")


def _str_map(v: Any, name: str) -> dict[str, str]:
    if v is None:
        return {}
    if isinstance(v, dict):
        out: dict[str, str] = {}
        for k, item in v.items():
            out[k] = _str(item, f"{name}.{k}")
        return out
    raise ApiDecodeError(f"{name}: expected object of strings")


def _str_list(v: Any, name: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [_str(item, f"{name}[]") for item in v]
    raise ApiDecodeError(f"{name}: expected array of strings")


def _obj(v: Any, name: str) -> dict[str, Any]:
    if v is None:
        return {}
    if isinstance(v, dict):
        return v
    raise ApiDecodeError(f"{name}: expected object")


def _position(v: Any, name: str) -> StreamPosition | None:
    if v is None:
        return None
    p = _obj(v, name)
    return StreamPosition(
        offset=_uint64(p.get("offset"), f"{name}.offset"), epoch=_str(p.get("epoch"), name)
    )


def _bool_value(v: Any, name: str) -> bool | None:
    # Protobuf BoolValue wrapper: {"value": bool}; {} means false, null means not set.
    if v is None:
        return None
    return _bool(_obj(v, name).get("value"), f"{name}.value")


def _override(v: Any, name: str) -> SubscribeOverride | None:
    if v is None:
        return None
    p = _obj(v, name)
    values = {f: _bool_value(p.get(f), f"{name}.{f}") for f in OVERRIDE_FIELDS}
    if all(x is None for x in values.values()):
        return None
    return SubscribeOverride(**values)


@dataclass(slots=True)
class DisconnectSpec:
    code: int
    reason: str | None


def _disconnect(v: Any, name: str) -> DisconnectSpec | None:
    if v is None:
        return None
    p = _obj(v, name)
    code = _uint32(p.get("code"), f"{name}.code")
    reason = p.get("reason")
    return DisconnectSpec(code, _str(reason, f"{name}.reason") if reason is not None else None)


Decoder = Callable[[Any, str], Any]


def decode_request(params: Any, spec: dict[str, Decoder]) -> dict[str, Any]:
    p = _obj(params, "params")
    fixed, fresh = _ZEROS[id(spec)]
    out = dict(fixed)
    for key, zero in fresh:
        out[key] = zero(None, key)
    # Only the fields sent are converted: a batch item usually sets 2 of the 9.
    for key, value in p.items():
        if value is not None:
            conv = spec.get(key)
            if conv is not None:
                out[key] = conv(value, key)
    return out


def _zero_values(
    spec: dict[str, Decoder],
) -> tuple[dict[str, Any], tuple[tuple[str, Decoder], ...]]:
    """A spec's zero values to copy, and the fields whose zero value (a list or a dict)
    is made anew for every request."""
    fixed: dict[str, Any] = {}
    fresh: list[tuple[str, Decoder]] = []
    for key, conv in spec.items():
        zero = conv(None, key)
        if isinstance(zero, (list, dict)):
            fresh.append((key, conv))
        else:
            fixed[key] = zero
    return fixed, tuple(fresh)


_PUBLISH_FIELDS: dict[str, Decoder] = {
    "data": _raw,
    "b64data": _str,
    "skip_history": _bool,
    "tags": _str_map,
    "idempotency_key": _str,
    "delta": _bool,
    # Versioned publish: the broker drops a version not newer than the channel's last one.
    "version": _uint64,
    "version_epoch": _str,
}

SPECS: dict[str, dict[str, Decoder]] = {
    "publish": {"channel": _str, **_PUBLISH_FIELDS},
    "broadcast": {"channels": _str_list, **_PUBLISH_FIELDS},
    "subscribe": {
        "user": _str,
        "channel": _str,
        "expire_at": _int64,
        "info": _raw,
        "b64info": _str,
        "client": _str,
        "session": _str,
        "data": _raw,
        "b64data": _str,
        "recover_since": _position,
        "override": _override,
    },
    "unsubscribe": {"user": _str, "channel": _str, "client": _str, "session": _str},
    "disconnect": {
        "user": _str,
        "client": _str,
        "session": _str,
        "whitelist": _str_list,
        "disconnect": _disconnect,
    },
    "refresh": {
        "user": _str,
        "client": _str,
        "session": _str,
        "expired": _bool,
        "expire_at": _int64,
        "info": _raw,
    },
    "presence": {"channel": _str},
    "presence_stats": {"channel": _str},
    "history": {"channel": _str, "limit": _int32, "since": _position, "reverse": _bool},
    "history_remove": {"channel": _str},
    "channels": {"pattern": _str},
    "info": {},
    "rpc": {"method": _str, "params": _raw},
    # Map channels (api.proto MapPublishRequest ...): stream_data, b64stream_data and score
    # decode (so a wrong type is a 400 as in Go) but Centrifugo's handler ignores them.
    "map_publish": {
        "channel": _str,
        "key": _str,
        "data": _raw,
        "b64data": _str,
        "stream_data": _raw,
        "b64stream_data": _str,
        "tags": _str_map,
        "idempotency_key": _str,
        "delta": _bool,
        "version": _uint64,
        "version_epoch": _str,
        "score": _int64,
        "key_mode": _str,
    },
    "map_remove": {"channel": _str, "key": _str, "idempotency_key": _str},
    "map_read_state": {
        "channel": _str,
        "cursor": _str,
        "limit": _int32,
        "key": _str,
        "asc": _bool,
        "revision_offset": _uint64,
        "revision_epoch": _str,
    },
    "map_read_stream": {
        "channel": _str,
        "since_offset": _uint64,
        "since_epoch": _str,
        "limit": _int32,
        "reverse": _bool,
    },
    "map_stats": {"channel": _str},
    "map_clear": {"channel": _str},
    "shared_poll_publish": {
        "channel": _str,
        "key": _str,
        "data": _raw,
        "b64data": _str,
        "version": _uint64,
        "epoch": _str,
    },
}

# The order in which Centrifugo looks for the one command set in a batch item.
BATCH_ORDER = (
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "history",
    "history_remove",
    "presence",
    "presence_stats",
    "info",
    "rpc",
    "refresh",
    "channels",
    "map_publish",
    "map_remove",
    "map_read_state",
    "map_read_stream",
    "map_stats",
    "map_clear",
    "shared_poll_publish",
)

METHODS = frozenset((*SPECS, "batch"))
_ZEROS = {id(spec): _zero_values(spec) for spec in SPECS.values()}

# A batch command ready to run: (method, request), ("", {}) when it names no method (104),
# None for a null command (107). A plain publish (only channel and data) stays the
# PlainPublish it was decoded as: its request is those two fields, every other at its zero.
BatchCommand = tuple[str, dict[str, Any] | PlainPublish] | None


def as_is(value: Any) -> Any:
    return value


def batch_item(cmd: Any, index: int) -> BatchCommand:
    """A decoded batch command checked and converted; ApiDecodeError if it cannot be."""
    if type(cmd) is PlainPublish:  # the fast lane (app/api/request.py): already typed
        return "publish", cmd
    if cmd is None:
        return None
    if not isinstance(cmd, dict):
        raise ApiDecodeError(f"commands[{index}]: expected object")
    if len(cmd) == 1:
        # The usual shape, one method per command: no need to try every name.
        ((name, value),) = cmd.items()
        spec = SPECS.get(name)
        if spec is None or value is None:
            return "", {}
        return name, decode_request(value, spec)
    # Every known field is decoded (a bad one fails the whole batch, as in Go); the first
    # one set in Centrifugo's order is run; none set means 104.
    chosen: BatchCommand = None
    for name in BATCH_ORDER:
        value = cmd.get(name)
        if value is None:
            continue
        req = decode_request(value, SPECS[name])
        if chosen is None:
            chosen = (name, req)
    return chosen if chosen is not None else ("", {})


def batch_request(params: Any) -> tuple[list[Any], Any]:
    """The commands of a decoded batch request and its `parallel` value (checked when the
    batch runs, by `parallel_flag`)."""
    p = _obj(params, "params")
    commands = p.get("commands")
    if commands is None:
        commands = []
    elif not isinstance(commands, list):
        raise ApiDecodeError("commands: expected array")
    return commands, p.get("parallel")


def parallel_flag(value: Any) -> bool:
    return _bool(value, "parallel")


# --------------------------------------------------------------------------------------------
# payloads


def b64decode(value: str) -> bytes:
    # Go's base64.StdEncoding: padded, standard alphabet, CR/LF ignored.
    s = value.replace("\r", "").replace("\n", "")
    if len(s) % 4:
        raise api_error(107)
    try:
        return binascii.a2b_base64(s.encode(), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise api_error(107) from None


def optional_payload(value: msgspec.Raw | bytes | None) -> bytes | None:
    # None when absent or null: the user action keeps what the connection has.
    return jsonraw.payload(value) or None


def publication_data(req: dict[str, Any]) -> tuple[bytes, bool]:
    """Publication bytes of a publish/broadcast request as received, and whether they are
    known to be JSON (a Raw span of a JSON body, validated by its decoder) rather than
    b64data or gRPC bytes."""
    if req["b64data"]:
        return b64decode(req["b64data"]), False
    data = req["data"]
    return jsonraw.payload(data), type(data) is msgspec.Raw
