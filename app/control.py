"""Node-to-node control messages (API actions by user), encoded as JSON.

The node that receives an API call applies it to its own connections directly
and broadcasts the same message; every other node applies it to its own. A node
ignores its own broadcasts. Bytes fields travel base64-encoded.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.auth import SubscribeOverride
from app.models import StreamPosition


@dataclass(slots=True)
class UserAction:
    op: str  # "subscribe" | "unsubscribe" | "disconnect" | "refresh"
    user: str
    channel: str = ""
    client: str = ""
    session: str = ""
    info: bytes | None = None
    data: bytes | None = None
    recover_since: StreamPosition | None = None
    expire_at: int = 0
    expired: bool = False
    override: SubscribeOverride | None = None
    code: int = 0
    reason: str = ""
    whitelist: list[str] = field(default_factory=list)


def _b64(v: bytes | None) -> str | None:
    return None if v is None else base64.b64encode(v).decode()


# Message kinds.
ACTION = "a"  # a UserAction
NODE = "n"  # heartbeat: a node's info for the `info` API
SURVEY = "s"  # a question to every node (the `channels` API)
REPLY = "r"  # a node's answer to a survey, sent to the asking node only
SHUTDOWN = "x"  # the node is leaving: drop it from the registry now
EMULATION = "e"  # commands for an emulated (SSE / HTTP-stream) session owned by that node


def encode_message(kind: str, origin: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"t": kind, "origin": origin, "b": body})


def decode_message(data: bytes) -> tuple[str, str, Any]:
    """Returns (kind, origin node id, body); a UserAction body for ACTION."""
    try:
        msg = orjson.loads(data)
        kind = msg["t"]
        if kind == ACTION:
            return kind, *decode(data)
        return kind, msg["origin"], msg["b"]
    except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as e:
        raise ValueError(f"malformed control message: {e}") from e


def encode(origin: str, action: UserAction) -> bytes:
    body: dict[str, Any] = {
        "t": ACTION,
        "origin": origin,
        "op": action.op,
        "user": action.user,
        "channel": action.channel,
        "client": action.client,
        "session": action.session,
        "info": _b64(action.info),
        "data": _b64(action.data),
        "expire_at": action.expire_at,
        "expired": action.expired,
        "code": action.code,
        "reason": action.reason,
        "whitelist": action.whitelist,
    }
    if action.recover_since is not None:
        body["recover_since"] = [action.recover_since.offset, action.recover_since.epoch]
    if action.override is not None:
        body["override"] = dataclasses.asdict(action.override)
    return orjson.dumps(body)


def decode(data: bytes) -> tuple[str, UserAction]:
    """Returns (origin node id, action). Raises ValueError on a malformed message."""
    try:
        b = orjson.loads(data)
        since = b.get("recover_since")
        ov = b.get("override")
        action = UserAction(
            op=b["op"],
            user=b["user"],
            channel=b.get("channel", ""),
            client=b.get("client", ""),
            session=b.get("session", ""),
            info=base64.b64decode(b["info"]) if b.get("info") is not None else None,
            data=base64.b64decode(b["data"]) if b.get("data") is not None else None,
            recover_since=StreamPosition(since[0], since[1]) if since else None,
            expire_at=b.get("expire_at", 0),
            expired=b.get("expired", False),
            override=SubscribeOverride(**ov) if ov else None,
            code=b.get("code", 0),
            reason=b.get("reason", ""),
            whitelist=list(b.get("whitelist", [])),
        )
        return b["origin"], action
    except (KeyError, TypeError, IndexError, AttributeError, orjson.JSONDecodeError) as e:
        raise ValueError(f"malformed control message: {e}") from e
