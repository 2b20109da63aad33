"""Commands cut out of a WebTransport stream (app/transports/webtransport/framing.py), as
centrifugal/protocol's stream decoders cut them: JSON lines, varint-delimited Protobuf,
`message_size_limit` per command, data arriving in any pieces."""

from __future__ import annotations

import pytest

from app.transports.webtransport.framing import (
    DEFAULT_MESSAGE_SIZE_LIMIT,
    FrameTooLarge,
    JsonLines,
    VarintDelimited,
    splitter,
)


def test_json_lines_cut_at_the_last_newline_whatever_the_pieces() -> None:
    s = JsonLines(100)
    assert s.feed(b'{"id":1,') == b""
    assert s.feed(b'"connect":{}}\n{"id":2') == b'{"id":1,"connect":{}}'
    assert s.pending() == len(b'{"id":2')
    assert s.feed(b"}\n") == b'{"id":2}'
    assert s.feed(b'{"id":3}\n{"id":4}\n') == b'{"id":3}\n{"id":4}'
    assert s.pending() == 0


def test_json_limit_counts_each_command_without_its_newline() -> None:
    assert JsonLines(5).feed(b"12345\n") == b"12345"  # exactly the limit is fine
    with pytest.raises(FrameTooLarge):
        JsonLines(5).feed(b"1\n123456\n")
    with pytest.raises(FrameTooLarge):
        JsonLines(5).feed(b"123456")  # refused before its newline arrives


def test_protobuf_messages_by_their_varint_length() -> None:
    s = VarintDelimited(1000)
    one = b"\x03abc"
    big = b"\xac\x02" + b"x" * 300  # 300 as a two-byte varint
    assert s.feed(one + big[:1]) == one  # the prefix itself may be split
    assert s.feed(big[1:100]) == b""
    assert s.feed(big[100:] + b"\x00") == big + b"\x00"  # an empty message (a pong)
    assert s.pending() == 0


def test_protobuf_limit_is_checked_on_the_prefix() -> None:
    with pytest.raises(FrameTooLarge):
        VarintDelimited(10).feed(b"\x0b")  # 11 declared, nothing of it sent yet
    with pytest.raises(ValueError):
        VarintDelimited(10).feed(b"\xff" * 10)  # not a varint


def test_zero_limit_means_centrifugos_default() -> None:
    s = splitter(protobuf=False, limit=0)
    assert s.feed(b"x" * DEFAULT_MESSAGE_SIZE_LIMIT + b"\n")
    with pytest.raises(FrameTooLarge):
        splitter(protobuf=True, limit=0).feed(b"\x81\x80\x04")  # 65537


def test_capsules_on_the_connect_stream() -> None:
    """h3.CapsuleReader: each capsule's type once its header is in, across pieces (RFC 9297
    framing); values are skipped, never kept, whatever length a capsule announces."""
    from app.transports.webtransport.h3 import CLOSE_WEBTRANSPORT_SESSION, CapsuleReader

    grease = b"\x52\x34" + b"\x04" + b"abcd"  # type 0x1234 (a 2-byte varint), 4 bytes
    close = b"\x80\x00\x28\x43\x06" + b"\x00\x00\x0b\xb8ok"  # 0x2843: code 3000, "ok"
    assert CapsuleReader().feed(grease) == [0x1234]
    r = CapsuleReader()
    assert r.feed(grease + close[:3]) == [0x1234]  # a header cut in the middle
    assert r.feed(close[3:]) == [CLOSE_WEBTRANSPORT_SESSION]
    r = CapsuleReader()
    assert r.feed(grease[:4]) == [0x1234]  # header in, value not yet
    assert r.feed(grease[4:] + close) == [CLOSE_WEBTRANSPORT_SESSION]  # value skipped
    # A capsule announcing 2**40 bytes: its value is counted down, not buffered.
    r = CapsuleReader()
    huge = b"\x52\x34" + b"\xc0\x00\x01\x00\x00\x00\x00\x00"  # 8-byte varint 2**40
    assert r.feed(huge + b"x" * 100_000) == [0x1234]
    for _ in range(10):
        assert r.feed(b"x" * 100_000) == []
    assert len(r._head) == 0 and r._skip == 2**40 - 1_100_000
