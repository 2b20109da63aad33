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
    """h3.capsules: complete capsules' types, the rest kept (RFC 9297 framing)."""
    from app.transports.webtransport.h3 import CLOSE_WEBTRANSPORT_SESSION, capsules

    grease = b"\x52\x34" + b"\x04" + b"abcd"  # type 0x1234 (a 2-byte varint), 4 bytes
    close = b"\x80\x00\x28\x43\x06" + b"\x00\x00\x0b\xb8ok"  # 0x2843: code 3000, "ok"
    assert capsules(grease) == ([0x1234], b"")
    assert capsules(grease + close[:3]) == ([0x1234], close[:3])
    assert capsules(close[:3] + close[3:]) == ([CLOSE_WEBTRANSPORT_SESSION], b"")
