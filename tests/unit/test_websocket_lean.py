"""The lean upgrade path's pure parts: which requests it takes, the 101, unmasking."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Callable

import pytest

from app.transports.websocket import frames
from app.transports.websocket.deflate import Inflater
from app.transports.websocket.frames import FrameReader, ProtocolError, close_frame, unmask
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


def test_compression_offer_is_negotiated_only_when_compression_is_on() -> None:
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    off = parse_upgrade(head(offer), PATH, compression=False)
    assert off is not None and off.window_bits == 0
    assert b"Extensions" not in handshake_response(off)
    on = parse_upgrade(head(offer), PATH, compression=True)
    assert on is not None and (on.window_bits, on.notakeover) == (15, False)
    assert b"Sec-WebSocket-Extensions: permessage-deflate\r\n" in handshake_response(on)
    plain = parse_upgrade(head(), PATH, compression=True)
    assert plain is not None and plain.window_bits == 0


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        # aiohttp's handshake answers these offers with exactly these parameters.
        (
            "permessage-deflate; server_no_context_takeover",
            b"permessage-deflate; server_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            b"permessage-deflate; server_max_window_bits=10",
        ),
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate", b"permessage-deflate"),
        ("permessage-deflate; server_max_window_bits=8", None),  # zlib has no 8: no compression
        ("x-webkit-deflate-frame", None),
    ],
)
def test_compression_parameters_as_aiohttp_answers_them(offer: str, answer: bytes | None) -> None:
    up = parse_upgrade(head(f"Sec-WebSocket-Extensions: {offer}"), PATH, compression=True)
    assert up is not None
    response = handshake_response(up)
    if answer is None:
        assert b"Extensions" not in response
    else:
        assert b"Sec-WebSocket-Extensions: " + answer + b"\r\n" in response


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


@pytest.mark.parametrize("compiled", [True, False], ids=["aiohttp-xor", "big-integer-xor"])
def test_unmask_matches_bytewise_xor(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ways frames.py unmasks: aiohttp's compiled XOR where it is built, the big-integer
    # one otherwise; the reader's in-place use of the first is checked through it too.
    if not compiled:
        monkeypatch.setattr(frames, "_mask_in_place", None)
    elif frames._mask_in_place is None:
        pytest.skip("aiohttp is built without its C extensions")
    for n in (0, 1, 3, 4, 5, 125, 126, 65536):
        data, mask = os.urandom(n), os.urandom(4)
        expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert unmask(data, mask) == expected
        sink = Sink()
        FrameReader(0).feed(frames.server_frame(0x82, b"")[:1] + _masked(data, mask), sink)
        assert sink.got == [("message", data)]
    assert unmask(b"\x00\x00", b"\x00\x00\x00\x00") == b"\x00\x00"  # leading zeros kept


def _masked(payload: bytes, mask: bytes) -> bytes:
    """A client frame's length, mask and masked payload (after its first byte)."""
    n = len(payload)
    if n < 126:
        length = bytes((0x80 | n,))
    elif n < 65536:
        length = bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        length = bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return length + mask + masked


def test_close_frame() -> None:
    assert close_frame(3501, b"bad request") == b"\x88\x0d\x0d\xadbad request"
    assert len(close_frame(1000, b"x" * 200)) == 2 + 2 + 123


def test_accept_key_is_sha1_of_key_and_guid() -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    up = parse_upgrade(head(key=key), PATH, compression=False)
    assert up is not None
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    assert up.accept == base64.b64encode(digest)


class Sink:
    """A FrameSink that records what the reader hands it."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def on_message(self, payload: bytes) -> None:
        self.got.append(("message", payload))

    def on_ping(self, payload: bytes) -> None:
        self.got.append(("ping", payload))

    def on_close(self, payload: bytes) -> None:
        self.got.append(("close", payload))


def client_frame(first: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes((first, 0x80 | len(payload))) + mask + unmask(payload, mask)


def deflate_stream() -> Callable[[bytes], bytes]:
    """A client's compressor with context takeover (RFC 7692 §7.2.1: the tail dropped)."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return lambda m: (z.compress(m) + z.flush(zlib.Z_SYNC_FLUSH)).removesuffix(b"\x00\x00\xff\xff")


def test_reader_inflates_whole_fragmented_and_taken_over_messages() -> None:
    deflate = deflate_stream()
    first = deflate(b'{"id":1}')
    second = deflate(b'{"id":1}{"id":2}')  # refers back to the first message's window
    data = (
        client_frame(0xC1, first)  # FIN, RSV1, text
        + client_frame(0x41, second[:3])  # RSV1 on the first fragment only
        + client_frame(0x89, b"p")  # RSV1 clear on a ping between fragments
        + client_frame(0x80, second[3:])
        + client_frame(0xC9, b"q")  # RSV1 on a control frame: ignored, as aiohttp
        + client_frame(0x82, b"plain")  # uncompressed messages stay allowed
    )
    for i in range(len(data)):  # split anywhere, each time a new connection's reader
        sink, reader = Sink(), FrameReader(1000, Inflater(1000))
        reader.feed(data[:i], sink)
        reader.feed(data[i:], sink)
        assert sink.got == [
            ("message", b'{"id":1}'),
            ("ping", b"p"),
            ("message", b'{"id":1}{"id":2}'),
            ("ping", b"q"),
            ("message", b"plain"),
        ]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (client_frame(0xC1, b"x"), 1002),  # RSV1 without permessage-deflate
        (client_frame(0x41, b"x") + client_frame(0xC0, b"y"), 1002),  # RSV1 on a continuation
        (client_frame(0xA1, b"x"), 1002),  # RSV2
    ],
    # Named ids: the frames carry random masks, and pytest-xdist's workers must collect
    # the same test ids.
    ids=["rsv1-not-negotiated", "rsv1-on-continuation", "rsv2"],
)
def test_reader_refuses_reserved_bits_not_negotiated(frames: bytes, code: int) -> None:
    inflater = None if frames[0] == 0xC1 else Inflater(0)
    with pytest.raises(ProtocolError) as e:
        FrameReader(0, inflater).feed(frames, Sink())
    assert e.value.code == code


def test_reader_inflated_limit_closes_1009_and_bad_data_1007() -> None:
    big = deflate_stream()(b"a" * 101)
    assert len(big) < 20  # small on the wire
    FrameReader(100, Inflater(101)).feed(client_frame(0xC1, big), Sink())  # exactly the limit
    with pytest.raises(ProtocolError) as e:
        FrameReader(100, Inflater(100)).feed(client_frame(0xC1, big), Sink())
    assert e.value.code == 1009
    with pytest.raises(ProtocolError) as e:
        FrameReader(100, Inflater(100)).feed(client_frame(0xC1, b"\xff\xff\xff"), Sink())
    assert e.value.code == 1007
