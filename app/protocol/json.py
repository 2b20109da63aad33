"""Client protocol v2, JSON flavour: decode Commands, encode Replies and Pushes.

Wire rules (research §1.2–1.6): several objects per frame separated by `\\n`;
`bytes` fields (`data`, `info`, `conn_info`, `chan_info`) are raw JSON values, so
they are spliced in with `orjson.Fragment` and never re-parsed; zero values are
omitted except where SDKs rely on a field being present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

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

PING = b"{}"


class DecodeError(ValueError):
    """The frame is not a valid Command; the connection is closed with 3501."""


@dataclass(slots=True)
class Command:
    id: int
    method: str  # "" for an empty command (a pong)
    params: dict[str, Any]


def decode_commands(frame: bytes) -> list[Command]:
    """Split a frame into Commands. Raises DecodeError on anything malformed."""
    out: list[Command] = []
    for line in frame.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise DecodeError("invalid JSON") from e
        out.append(_to_command(obj))
    if not out:
        raise DecodeError("empty frame")
    return out


def _to_command(obj: Any) -> Command:
    if not isinstance(obj, dict):
        raise DecodeError("command is not an object")
    cmd_id = obj.get("id", 0)
    if cmd_id is None:
        cmd_id = 0
    if type(cmd_id) is not int or not 0 <= cmd_id <= 0xFFFFFFFF:
        raise DecodeError("bad command id")
    for method in METHODS:
        params = obj.get(method)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise DecodeError(f"{method} is not an object")
        return Command(cmd_id, method, params)
    return Command(cmd_id, "", {})


# --- typed access to request fields (wrong JSON type => DecodeError => 3501) ---


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
    """A raw-JSON `bytes` field, re-serialised compactly; b"" when absent."""
    if key not in params or params[key] is None:
        return b""
    return orjson.dumps(params[key])


# --- encoding ---


def client_info_obj(info: ClientInfo) -> dict[str, Any]:
    # user and client are always written: SDKs read them unconditionally.
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info:
        out["conn_info"] = orjson.Fragment(info.conn_info)
    if info.chan_info:
        out["chan_info"] = orjson.Fragment(info.chan_info)
    return out


def publication_obj(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {"data": orjson.Fragment(pub.data or b"null")}
    if pub.info is not None:
        out["info"] = client_info_obj(pub.info)
    if pub.offset:
        out["offset"] = pub.offset
    if pub.tags:
        out["tags"] = pub.tags
    if pub.time:
        out["time"] = pub.time
    return out


def encode_reply(cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": cmd_id, method: result})


def encode_error(cmd_id: int, error: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": cmd_id, "error": error})


def encode_push(channel: str, kind: str, body: dict[str, Any]) -> bytes:
    push: dict[str, Any] = {kind: body}
    if channel:
        push = {"channel": channel, kind: body}
    return orjson.dumps({"push": push})


def encode_pub_push(channel: str, pub: Publication) -> bytes:
    """The one frame every JSON subscriber of `channel` receives for `pub`."""
    return encode_push(channel, "pub", publication_obj(pub))


def encode_join_push(channel: str, info: ClientInfo) -> bytes:
    return encode_push(channel, "join", {"info": client_info_obj(info)})


def encode_leave_push(channel: str, info: ClientInfo) -> bytes:
    return encode_push(channel, "leave", {"info": client_info_obj(info)})


def omit_zero(d: dict[str, Any]) -> dict[str, Any]:
    """Drop fields holding zero values, as protobuf JSON with omitempty does."""
    return {k: v for k, v in d.items() if v}
