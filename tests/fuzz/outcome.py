"""What a server may answer to bad input, checked on the bytes it wrote to one socket.

The documented set: an HTTP response other than a 5xx (aiohttp answering a request the
WebSocket path did not take), or a 101 followed by well-formed server frames (FIN, no
reserved bits, no mask, a known opcode), whose replies carry Centrifugo's error codes but
never 100 ("internal": a server fault, not a client mistake), and whose close frame, if
any, carries a WebSocket code (1000-1011) or a Centrifugo disconnect code (3000-3999).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.protocol.gen import client_pb2 as pb

WS_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011))
ERROR_INTERNAL = 100


def allowed_close_code(code: int) -> bool:
    return code in WS_CLOSE_CODES or 3000 <= code <= 3999


@dataclass
class Outcome:
    """The server's answer on one connection, parsed."""

    status: int = 0  # HTTP status of the response head (101 for an upgrade), 0 if none
    replies: list[dict[str, Any]] = field(default_factory=list)  # JSON-shaped replies
    close_code: int | None = None
    close_reason: str = ""
    pings: int = 0
    pongs: int = 0


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _pb_replies(payload: bytes) -> list[dict[str, Any]]:
    out = []
    pos = 0
    while pos < len(payload):
        n, pos = _varint(payload, pos)
        assert pos + n <= len(payload), f"truncated protobuf reply in {payload!r}"
        reply = pb.Reply.FromString(payload[pos : pos + n])
        pos += n
        item: dict[str, Any] = {"id": reply.id}
        if reply.HasField("error"):
            item["error"] = {"code": reply.error.code, "message": reply.error.message}
        out.append(item)
    return out


def _complete_frame(buf: bytes, pos: int) -> bool:
    if len(buf) - pos < 2:
        return False
    n = buf[pos + 1] & 0x7F
    head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
    if len(buf) - pos < head:
        return False
    if n >= 126:
        n = int.from_bytes(buf[pos + 2 : pos + head], "big")
    return len(buf) - pos >= head + n


def parse_server_bytes(data: bytes, *, protobuf: bool = False, reset: bool = False) -> Outcome:
    """Parse what the server wrote; an AssertionError names the first thing out of spec.
    `reset`: the connection ended with a TCP reset (the server aborts a socket it closed),
    which may discard the tail of what it wrote: parsing stops at a cut frame."""
    out = Outcome()
    if not data:
        return out
    # aiohttp answers a request it cannot parse as HTTP/1.0, and an HTTP/0.9 request
    # line ("GET /path") as HTTP/0.9 (which it still upgrades to a WebSocket).
    assert re.match(rb"HTTP/\d\.\d \d\d\d ", data), f"not an HTTP response: {data[:200]!r}"
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0 and reset:
        return out
    assert head_end > 0, f"unterminated response head: {data[:400]!r}"
    out.status = int(data[9:12])
    assert out.status < 500, f"server error for bad input: {data[:400]!r}"
    if out.status != 101:
        return out  # aiohttp's own answer (its body, then maybe more responses)
    buf = data[head_end + 4 :]
    pos = 0
    while pos < len(buf):
        if reset and not _complete_frame(buf, pos):
            break
        assert len(buf) - pos >= 2, f"truncated frame header: {buf[pos:]!r}"
        b0, b1 = buf[pos], buf[pos + 1]
        assert b0 & 0x80, f"server frames are never fragmented: {buf[pos : pos + 20]!r}"
        assert not b0 & 0x70, f"reserved bits in a server frame: {buf[pos : pos + 20]!r}"
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n = int.from_bytes(buf[pos : pos + 2], "big")
            pos += 2
        elif n == 127:
            n = int.from_bytes(buf[pos : pos + 8], "big")
            pos += 8
        assert pos + n <= len(buf), f"truncated frame: {buf[pos - 10 :][:200]!r}"
        payload = buf[pos : pos + n]
        pos += n
        op = b0 & 0x0F
        assert out.close_code is None, f"a frame after the close frame: op {op} {payload!r}"
        if op == 1:
            text = payload.decode()  # a text frame must be UTF-8
            for line in text.split("\n"):
                if line.strip():
                    out.replies.append(orjson.loads(line))
        elif op == 2:
            out.replies.extend(_pb_replies(payload) if protobuf else [{"binary": payload}])
        elif op == 8:
            assert len(payload) != 1, "a close payload is empty or holds a code"
            code = int.from_bytes(payload[:2], "big") if payload else 1005
            assert payload == b"" or allowed_close_code(code), f"close code {code}"
            out.close_code = code
            out.close_reason = payload[2:].decode()
        elif op == 9:
            out.pings += 1
        elif op == 10:
            out.pongs += 1
        else:
            raise AssertionError(f"unknown server opcode {op}")
    for reply in out.replies:
        err = reply.get("error")
        if err is not None:
            assert err.get("code") != ERROR_INTERNAL, f"error 100 for bad input: {reply}"
    return out


def answered(data: bytes, *, protobuf: bool = False) -> bool:
    """The server's bytes so far hold an answer: a response other than 101, or a 101 and
    then a reply or a close frame."""
    try:
        out = parse_server_bytes(data, protobuf=protobuf)
    except (AssertionError, IndexError):
        return False  # incomplete so far (a real violation shows in the final parse)
    return (out.status not in (0, 101)) or bool(out.replies) or out.close_code is not None
