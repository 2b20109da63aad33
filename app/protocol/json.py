"""Client protocol v2, JSON flavour.

Wire rules (research §1.2–1.6): several objects per frame separated by `\\n`;
`bytes` fields (`data`, `info`, `conn_info`, `chan_info`) are raw JSON values: decoded
as the bytes received (app/jsonraw.py) and spliced into replies with `orjson.Fragment`,
never re-parsed or re-serialised; zero values are omitted except where SDKs rely on a
field being present. A payload that is not JSON (published in binary by a Protobuf client
or with `b64data`) cannot be written into a text frame: encoding it raises EncodeError.
"""

from __future__ import annotations

from typing import Any

import orjson

from app import jsonraw
from app.models import ClientInfo, Publication
from app.protocol import METHODS, Command, DecodeError, EncodeError
from app.protocol.gen.client_pb2 import Command as PbCommand

_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS


_COMMAND = jsonraw.decoder(PbCommand.DESCRIPTOR)


def _raw(data: bytes) -> orjson.Fragment:
    """A payload spliced as it is, once it is known to be JSON text."""
    if not jsonraw.is_json(data):
        raise EncodeError("binary payload on the JSON protocol")
    return orjson.Fragment(data)


def client_info_obj(info: ClientInfo) -> dict[str, Any]:
    # user and client are always written: SDKs read them unconditionally.
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info:
        out["conn_info"] = _raw(info.conn_info)
    if info.chan_info:
        out["chan_info"] = _raw(info.chan_info)
    return out


def publication_obj(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = (
        {"data": _raw(pub.data) if pub.data else orjson.Fragment(b"null")}
        if pub.data or not pub.removed
        else {}  # a map removal carries no data, and Centrifugo's JSON omits it
    )
    if pub.info is not None:
        out["info"] = client_info_obj(pub.info)
    if pub.offset:
        out["offset"] = pub.offset
    if pub.tags:
        out["tags"] = pub.tags
    if pub.delta:
        out["delta"] = True  # data is a fossil patch (app/hub.py DeltaFrames)
    if pub.time:
        out["time"] = pub.time
    if pub.channel:
        out["channel"] = pub.channel
    if pub.key:
        out["key"] = pub.key
        if pub.removed:
            out["removed"] = True
    return out


def _default(obj: Any) -> Any:
    """How protocol-neutral values look in JSON."""
    if type(obj) is bytes:
        return _raw(obj)  # raw JSON payload, spliced as is
    if type(obj) is Publication:
        return publication_obj(obj)
    if type(obj) is ClientInfo:
        return client_info_obj(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


# orjson hands back the buffer it grew while writing, which keeps at least 4 KB however short
# the output (orjson 3.13, measured: 4,123 bytes held for a 16-byte frame, 8,176 for a
# 1,006-byte one). Frames wait in per-connection queues (and a slow peer's queue is bounded by
# client.queue_max_size counted in frame bytes), so short ones are copied into an object of
# their own size: ~0.19 us a frame, as much as the dumps itself, against 27x less memory held
# for a 150-byte reply.
_TIGHT_BELOW = 8192


def _tight(out: bytes) -> bytes:
    return bytes(memoryview(out)) if len(out) < _TIGHT_BELOW else out


def _dumps(obj: Any) -> bytes:
    try:
        return _tight(orjson.dumps(obj, default=_default, option=_OPTS))
    except TypeError as e:
        # orjson wraps what `default` raised in a TypeError: unwrap ours.
        if isinstance(e.__cause__, EncodeError):
            raise e.__cause__ from None
        raise


def _to_command(obj: Any) -> Command:
    if not isinstance(obj, dict):
        raise DecodeError("command is not an object")
    cmd_id = obj.get("id", 0)
    if cmd_id is None:
        cmd_id = 0
    if type(cmd_id) is not int or not 0 <= cmd_id <= 0xFFFFFFFF:
        raise DecodeError("bad command id")
    for method in METHODS:
        params = obj.get(method)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise DecodeError(f"{method} is not an object")
        return Command(cmd_id, method, params)
    return Command(cmd_id, "", {})


class JsonCodec:
    """bare=False: pushes wrapped in a Reply (bidirectional transports);
    bare=True: pushes sent as they are (unidirectional transports)."""

    separator = b"\n"
    ping = b"{}"

    def __init__(self, bare: bool = False) -> None:
        self.bare = bare
        self.name = "json_uni" if bare else "json"
        # A publication push's bytes before its data, by channel (bounded, cleared when
        # full), and after it: encode_pub_push's common shape is head + data + tail.
        self._pub_heads: dict[str, bytes] = {}
        self._pub_close = b"}}" if bare else b"}}}"

    def decode_commands(self, frame: bytes) -> list[Command]:
        out: list[Command] = []
        for line in frame.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = jsonraw.decode(_COMMAND, line)
            except jsonraw.JsonError as e:
                raise DecodeError(f"invalid command: {e}") from None
            out.append(_to_command(obj))
        if not out:
            raise DecodeError("empty frame")
        return out

    def encode_reply(self, cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
        return _dumps({"id": cmd_id, method: result})

    def encode_error(self, cmd_id: int, error: dict[str, Any]) -> bytes:
        return _tight(orjson.dumps({"id": cmd_id, "error": error}))

    def encode_push(self, channel: str, kind: str, body: dict[str, Any]) -> bytes:
        push = {"channel": channel, kind: body} if channel else {kind: body}
        return _dumps(push if self.bare else {"push": push})

    def encode_pub_push(self, channel: str, pub: Publication) -> bytes:
        # b"" for a payload that is not JSON text: its JSON subscribers get 3506 instead.
        if (
            pub.info is None
            and not pub.tags
            and not pub.time
            and not pub.delta
            and not pub.key
            and not pub.channel
            and pub.data
        ):
            # The common shape (API publications) spliced by hand: the same bytes orjson
            # writes for the dict below, at a third of the cost on the fan-out path. The
            # bytes before the data are cached per channel and the push is one join:
            # 9.3k -> 7.1k instructions a push of 100 bytes (valgrind, 1000 channels).
            data = pub.data
            if not jsonraw.is_json(data):
                return b""
            head = self._pub_heads.get(channel)
            if head is None:
                head = self._pub_head(channel)
            close = self._pub_close
            tail = b',"offset":%d%b' % (pub.offset, close) if pub.offset else close
            return b"".join((head, data, tail))
        try:
            push = {"channel": channel, "pub": publication_obj(pub)}  # checks every payload
        except EncodeError:
            return b""
        return _tight(orjson.dumps(push if self.bare else {"push": push}))

    def _pub_head(self, channel: str) -> bytes:
        head = b'{"channel":' + orjson.dumps(channel) + b',"pub":{"data":'
        if not self.bare:
            head = b'{"push":' + head
        heads = self._pub_heads
        if len(heads) >= 16384:
            heads.clear()
        heads[channel] = head
        return head

    def encode_join_push(self, channel: str, info: ClientInfo) -> bytes:
        return self.encode_push(channel, "join", {"info": info})

    def encode_leave_push(self, channel: str, info: ClientInfo) -> bytes:
        return self.encode_push(channel, "leave", {"info": info})


JSON = JsonCodec()
JSON_UNI = JsonCodec(bare=True)
