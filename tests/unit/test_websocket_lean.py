"""The lean upgrade path's pure parts: which requests it takes, the 101, unmasking."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from app.transports.websocket.frames import close_frame, unmask
from app.transports.websocket.handshake import handshake_response, parse_upgrade

PATH = b"/connection/websocket"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example


def head(*extra: str, line: str = "GET /connection/websocket HTTP/1.1", key: str = KEY) -> bytes:
    lines = [
        line,
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return "\r\n".join(lines).encode()


def test_plain_upgrade_is_taken_with_the_rfc_accept_key() -> None:
    up = parse_upgrade(head(), PATH, compression=False)
    assert up is not None
    assert up.accept == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
    assert up.subprotocol is None and up.query == {}
    assert up.headers["host"] == "127.0.0.1"  # case-insensitive, as aiohttp's
    assert handshake_response(up) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


def test_subprotocol_and_query() -> None:
    up = parse_upgrade(
        head(
            "Sec-WebSocket-Protocol: foo, centrifuge-protobuf",
            line="GET /connection/websocket?format=protobuf&format=json&x HTTP/1.1",
        ),
        PATH,
        compression=False,
    )
    assert up is not None
    assert up.subprotocol == "centrifuge-protobuf"
    assert up.query == {"format": "protobuf", "x": ""}  # the first value of a name
    assert b"Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" in handshake_response(up)


def test_compression_offer_is_ignored_unless_compression_is_on() -> None:
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    assert parse_upgrade(head(offer), PATH, compression=False) is not None
    assert parse_upgrade(head(offer), PATH, compression=True) is None
    assert parse_upgrade(head(), PATH, compression=True) is not None


@pytest.mark.parametrize(
    "request_head",
    [
        head(line="GET /connection/websocketx HTTP/1.1"),
        head(line="GET /other HTTP/1.1"),
        head(line="POST /connection/websocket HTTP/1.1"),
        head(line="GET /connection/websocket HTTP/1.0"),
        head(line="GET  /connection/websocket HTTP/1.1"),
        head(key="not base64!"),
        head(key=base64.b64encode(b"short").decode()),
        head("Content-Length: 3"),
        head("Transfer-Encoding: chunked"),
        head("X-Folded: a", " continued"),
        head("Bad Name: x"),
        head("X-Ctl: a\x01b"),
        head().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        head().replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        head().replace(b"keep-alive, Upgrade", b"keep-alive"),
    ],
)
def test_anything_unusual_is_left_to_aiohttp(request_head: bytes) -> None:
    assert parse_upgrade(request_head, PATH, compression=False) is None


def test_unmask_matches_bytewise_xor() -> None:
    for n in (0, 1, 3, 4, 5, 125, 126, 65536):
        data, mask = os.urandom(n), os.urandom(4)
        expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert unmask(data, mask) == expected
    assert unmask(b"\x00\x00", b"\x00\x00\x00\x00") == b"\x00\x00"  # leading zeros kept


def test_close_frame() -> None:
    assert close_frame(3501, b"bad request") == b"\x88\x0d\x0d\xadbad request"
    assert len(close_frame(1000, b"x" * 200)) == 2 + 2 + 123


def test_accept_key_is_sha1_of_key_and_guid() -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    up = parse_upgrade(head(key=key), PATH, compression=False)
    assert up is not None
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    assert up.accept == base64.b64encode(digest)
