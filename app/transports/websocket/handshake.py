"""The WebSocket opening handshake, as Centrifugo's upgrader does it: which requests are
upgrades we take, the accept key, the sub-protocol and codec, and what the client offers
of permessage-deflate. (Whether a request is admitted at all, Origin included, is
app/transports/admission.py's `check`, called by every endpoint.)

Protocol selection follows Centrifugo: Protobuf when the client negotiates the
`centrifuge-protobuf` sub-protocol or asks with `?format=protobuf` /
`?cf_protocol=protobuf`; JSON otherwise.

`parse_upgrade` is the lean path's reader of a raw request head
(app/transports/websocket/lean.py); the aiohttp endpoints get the same answers from
`select_subprotocol`, `select_codec` and `refuse_bad_key` on aiohttp's
parsed request.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
from collections.abc import Mapping
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http_websocket import ws_ext_gen, ws_ext_parse
from multidict import CIMultiDict, MultiMapping

from app.protocol import Codec
from app.protocol.json import JSON
from app.protocol.protobuf import PROTOBUF

log = logging.getLogger("centrifugo.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Server preference order, as in Centrifugo's upgrader.
SUBPROTOCOLS = ("centrifuge-json", "centrifuge-protobuf")


def select_subprotocol(headers: MultiMapping[str]) -> str | None:
    """The first of our sub-protocols that the client offers (server preference)."""
    values = headers.getall("Sec-WebSocket-Protocol", ())
    if not values:
        return None
    offered = {p.strip() for h in values for p in h.split(",")}
    for p in SUBPROTOCOLS:
        if p in offered:
            return p
    return None


def select_codec(query: Mapping[str, str], subprotocol: str | None) -> Codec:
    if (
        subprotocol == "centrifuge-protobuf"
        or query.get("format") == "protobuf"
        or query.get("cf_protocol") == "protobuf"
    ):
        return PROTOBUF
    return JSON


def deflate_offer(headers: MultiMapping[str]) -> tuple[int, bool]:
    """What aiohttp will accept of the client's permessage-deflate offer: (window bits,
    server no context takeover); window bits 0 when the client offers no usable
    permessage-deflate. The same parse aiohttp's handshake does (it answers with exactly
    these parameters)."""
    compress, notakeover = ws_ext_parse(headers.get("Sec-WebSocket-Extensions"), isserver=True)
    return int(compress), bool(notakeover)


def refuse_bad_key(request: web.Request) -> web.Response | None:
    """400 for a Sec-WebSocket-Key that is not ASCII, before aiohttp's handshake sees it:
    its b64decode raises ValueError there (HTTP 500 and a traceback). Centrifugo answers
    400 to a malformed key; aiohttp answers the other malformed keys 400 itself."""
    if request.headers.get("Sec-WebSocket-Key", "").isascii():
        return None
    log.info("bad Sec-WebSocket-Key from %s", request.remote)
    return web.Response(status=400, text="bad Sec-WebSocket-Key")


class Upgrade:
    """The parts of an accepted upgrade request the connection needs. `window_bits` is 0
    without permessage-deflate; otherwise the server's LZ77 window, and `notakeover` is
    whether the client asked for server_no_context_takeover."""

    __slots__ = ("headers", "query", "accept", "subprotocol", "window_bits", "notakeover")

    def __init__(
        self,
        headers: CIMultiDict[str],
        query: dict[str, str],
        accept: bytes,
        deflate: tuple[int, bool] = (0, False),
    ) -> None:
        self.headers = headers
        self.query = query
        self.accept = accept
        self.subprotocol = select_subprotocol(headers)
        self.window_bits, self.notakeover = deflate


def accept_key(key: str) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return binascii.b2a_base64(hashlib.sha1(key.encode() + _GUID).digest(), newline=False)


def parse_upgrade(head: bytes, path: bytes, compression: bool) -> Upgrade | None:
    """The upgrade in a request head (up to, without, the blank line), or None when the
    request is anything but a plain WebSocket upgrade to `path` that we serve here.
    `compression`: whether permessage-deflate is on (`websocket.compression`)."""
    line_end = head.find(b"\r\n")
    parts = (head if line_end < 0 else head[:line_end]).split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    target, _, query = parts[1].partition(b"?")
    if target != path:
        return None
    pairs = []
    if line_end >= 0:
        for line in head[line_end + 2 :].decode("utf-8", "surrogateescape").split("\r\n"):
            name, sep, value = line.partition(":")
            value = value.strip(" \t")
            # Names of letters, digits and dashes, printable values: anything else
            # (obs-fold, a space before the colon, control characters, rarer token
            # characters) is left to aiohttp's parser.
            if not (sep and name.isascii() and name.replace("-", "").isalnum()):
                return None
            if not value.isprintable():
                return None
            pairs.append((name, value))
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    if (
        headers.get("Upgrade", "").strip().lower() != "websocket"
        or "upgrade" not in headers.get("Connection", "").lower()
        or headers.get("Sec-WebSocket-Version", "").strip() != "13"
        or "Content-Length" in headers
        or "Transfer-Encoding" in headers
    ):
        return None
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(binascii.a2b_base64(key, strict_mode=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    args: dict[str, str] = {}
    if query:
        for k, v in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True):
            args.setdefault(k, v)  # the first value, as MultiDict.get gives
    # permessage-deflate negotiated as aiohttp's handshake does (one offer header, the
    # first usable offer in it; unusable parameters: no compression, still upgraded).
    deflate = deflate_offer(headers) if compression else (0, False)
    return Upgrade(headers, args, accept_key(key), deflate)


def handshake_response(upgrade: Upgrade) -> bytes:
    out = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + upgrade.accept + b"\r\n"
    ]
    if upgrade.subprotocol:
        out.append(b"Sec-WebSocket-Protocol: " + upgrade.subprotocol.encode() + b"\r\n")
    if upgrade.window_bits:
        ext = ws_ext_gen(upgrade.window_bits, isserver=True, server_notakeover=upgrade.notakeover)
        out.append(b"Sec-WebSocket-Extensions: " + ext.encode() + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)
