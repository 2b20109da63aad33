"""Commands cut out of a WebTransport stream's bytes, as centrifuge's stream decoders cut them.

A WebTransport stream is a byte stream, not a sequence of messages (Centrifugo's
internal/wt/handler.go reads it with centrifugal/protocol's StreamCommandDecoder):

- JSON: commands end with "\\n" (centrifuge-js sends `data + "\\n"`, `data` being its
  commands joined by "\\n"); a line longer than `message_size_limit` is refused
  (JSONStreamCommandDecoder's ErrMessageTooLarge, the delimiter not counted).
- Protobuf: each command is preceded by its length as a varint
  (ProtobufStreamCommandDecoder); a declared length over the limit is refused before any of
  the body is awaited.

`StreamSplitter.feed` returns the complete commands received so far, still encoded and
joined as the codec's frames are (JSON lines with "\\n", Protobuf messages with their
prefixes), so the connection hands them to the Client as one frame; what is incomplete
waits for the next read. Pure: no I/O.
"""

from __future__ import annotations

from typing import Protocol

from app.protocol.protobuf import read_varint_prefix


class FrameTooLarge(ValueError):
    """A command over `webtransport.message_size_limit` (centrifuge's ErrMessageTooLarge)."""


class StreamSplitter(Protocol):
    def feed(self, data: bytes) -> bytes:
        """The complete commands now buffered (b"" when none); raises FrameTooLarge or
        ValueError (a malformed length prefix)."""

    def pending(self) -> int:
        """Bytes of an incomplete command held back."""


class JsonLines:
    """Newline-terminated JSON commands."""

    __slots__ = ("_limit", "_buf")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._buf = buf
            if len(buf) > self._limit:
                raise FrameTooLarge(f"command over {self._limit} bytes")
            return b""
        complete, self._buf = buf[:cut], buf[cut + 1 :]
        if len(self._buf) > self._limit:
            raise FrameTooLarge(f"command over {self._limit} bytes")
        # Each line's length is checked here only when the read held several: one long
        # line per read is the common case of an oversized command and was caught above.
        if len(complete) > self._limit and any(
            len(line) > self._limit for line in complete.split(b"\n")
        ):
            raise FrameTooLarge(f"command over {self._limit} bytes")
        return complete

    def pending(self) -> int:
        return len(self._buf)


class VarintDelimited:
    """Protobuf commands, each after its varint length."""

    __slots__ = ("_limit", "_buf")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        end = len(buf)
        pos = 0
        while pos < end:
            length, body = read_varint_prefix(buf, pos, end)
            if body < 0:
                break  # the prefix itself is still incomplete
            if length > self._limit:
                raise FrameTooLarge(f"command of {length} bytes over {self._limit}")
            if body + length > end:
                break
            pos = body + length
        self._buf = buf[pos:]
        return buf[:pos]

    def pending(self) -> int:
        return len(self._buf)


def splitter(protobuf: bool, limit: int) -> StreamSplitter:
    """The splitter of one stream; `limit` <= 0 means Centrifugo's default (65536): the
    stream decoder would treat 0 as unbounded, which handler.go refuses to allow."""
    limit = limit if limit > 0 else DEFAULT_MESSAGE_SIZE_LIMIT
    return VarintDelimited(limit) if protobuf else JsonLines(limit)


# internal/wt/transport.go defaultWebTransportMessageSizeLimit.
DEFAULT_MESSAGE_SIZE_LIMIT = 65536

_json: type[StreamSplitter] = JsonLines
_protobuf: type[StreamSplitter] = VarintDelimited
