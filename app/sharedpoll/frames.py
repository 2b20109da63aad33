"""A shared poll publication and its push frame, encoded once per protocol for all the
connections of a worker that track its key (as app/hub.py's Frames does for streams).

On the wire it is a Publication with `key` and `version` (and `removed` for a key the
backend dropped), the shape centrifuge's keyedWritePublication / keyedWriteRemoval push."""

from __future__ import annotations

from typing import Any

import orjson

from app import jsonraw
from app.protocol import Codec

__all__ = ["PollPub"]


class PollPub:
    __slots__ = ("channel", "key", "data", "version", "removed", "_frames")

    def __init__(
        self, channel: str, key: str, data: bytes, version: int, removed: bool = False
    ) -> None:
        self.channel = channel
        self.key = key
        self.data = data
        self.version = version
        self.removed = removed
        self._frames: dict[str, bytes] = {}

    def frame(self, codec: Codec) -> bytes:
        """The push for `codec`; b"" when the payload is not JSON and the codec is (the
        caller closes such a connection with 3506, as for stream publications)."""
        frame = self._frames.get(codec.name)
        if frame is None:
            frame = self._frames[codec.name] = self._encode(codec)
        return frame

    def _encode(self, codec: Codec) -> bytes:
        body: dict[str, Any] = {}
        if codec.name.startswith("protobuf"):
            if self.data:
                body["data"] = self.data
        elif self.data:
            if not jsonraw.is_json(self.data):
                return b""
            body["data"] = orjson.Fragment(self.data)
        body["key"] = self.key
        if self.removed:
            body["removed"] = True
        if self.version:
            body["version"] = self.version
        return codec.encode_push(self.channel, "pub", body)
