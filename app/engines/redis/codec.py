"""Bytes that travel through Redis: stored publications, PUB/SUB frames, presence info.

A publication payload is `<meta JSON>\\n<data>`: the small meta object (client
info, tags, time, delta) is JSON without raw newlines, and the data bytes follow
unchanged, so binary payloads need no escaping and JSON payloads are never
re-parsed. PUB/SUB frames put a header in front (research §3.2):
`__p1:<offset>:<epoch>__<payload>` for publications kept in history, the bare
payload without history, `__j__<info>` / `__l__<info>` for join and leave.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from app.models import ClientInfo, Publication


def _b64(v: bytes | None) -> str | None:
    return None if v is None else base64.b64encode(v).decode()


def _unb64(v: str | None) -> bytes | None:
    return None if v is None else base64.b64decode(v)


def encode_info(info: ClientInfo) -> bytes:
    return orjson.dumps([info.user, info.client, _b64(info.conn_info), _b64(info.chan_info)])


def decode_info(raw: bytes) -> ClientInfo:
    user, client, conn_info, chan_info = orjson.loads(raw)
    return ClientInfo(user, client, _unb64(conn_info), _unb64(chan_info))


def encode_payload(
    data: bytes,
    info: ClientInfo | None,
    tags: dict[str, str] | None,
    time_ms: int,
    delta: bool,
    key: str = "",
    removed: bool = False,
    prev_data: bytes | None = None,
) -> bytes:
    """`key`, `removed` and `prev_data` are a map channel's (app/maps/broker.py)."""
    meta: dict[str, Any] = {}
    if key:
        meta["k"] = key
    if removed:
        meta["rm"] = True
    if prev_data is not None:
        meta["pd"] = _b64(prev_data)
    if info is not None:
        meta["i"] = [info.user, info.client, _b64(info.conn_info), _b64(info.chan_info)]
    if tags:
        meta["t"] = tags
    if time_ms:
        meta["tm"] = time_ms
    if delta:
        meta["dl"] = True
    head = orjson.dumps(meta) if meta else b""
    return head + b"\n" + data


def decode_payload(payload: bytes, offset: int = 0) -> Publication:
    return _decode_at(payload, 0, offset)


def _decode_at(frame: bytes, start: int, offset: int) -> Publication:
    """The payload that begins at frame[start]: read in place, so a PUB/SUB frame's data is
    sliced once, not first its payload and then the data from that."""
    nl = frame.index(b"\n", start)
    pub = Publication(frame[nl + 1 :], None, offset)  # positional: the fan-out hot path
    if nl > start:
        meta = orjson.loads(frame[start:nl])
        i = meta.get("i")
        if i is not None:
            pub.info = ClientInfo(i[0], i[1], _unb64(i[2]), _unb64(i[3]))
        pub.tags = meta.get("t")
        pub.time = meta.get("tm", 0)
        pub.delta = meta.get("dl", False)
        key = meta.get("k")
        if key is not None:
            pub.key = key
            pub.removed = meta.get("rm", False)
            pub.prev_data = _unb64(meta.get("pd"))
    return pub


JOIN = b"__j__"
LEAVE = b"__l__"


def decode_frame(frame: bytes) -> tuple[str, Publication | ClientInfo, str]:
    """Returns (kind, object, epoch); kind is "pub", "join" or "leave"."""
    if frame[0] == 10:
        # b"\n" first: a bare payload without meta, what a publish without history and
        # without client info, tags or delta sends (the server API's common shape): only
        # the data to slice, tested before the prefixes (measured with the reader's other
        # shortcuts: app/engines/redis/pubsub.py).
        return "pub", Publication(frame[1:]), ""
    if frame[:5] == b"__p1:":
        end = frame.index(b"__", 5)
        colon = frame.index(b":", 5, end)
        epoch = frame[colon + 1 : end].decode()
        return "pub", _decode_at(frame, end + 2, int(frame[5:colon])), epoch
    if frame.startswith(JOIN):
        return "join", decode_info(frame[5:]), ""
    if frame.startswith(LEAVE):
        return "leave", decode_info(frame[5:]), ""
    return "pub", decode_payload(frame), ""
