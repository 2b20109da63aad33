"""HTTP API request bodies decoded against api.proto, payloads kept as the bytes received.

Each method's body is decoded by a decoder built from its protobuf request message
(`app/jsonraw.py`): `data`, `info`, `params` (the message's `bytes` fields) stay `msgspec.Raw`
spans of the body, exactly as sent, and travel as those bytes to the Publication, the
history entry and every subscriber frame (Centrifugo keeps them as `json.RawMessage`). The
other fields decode to plain values that the executor's typed getters check.

A batch body is split, not decoded: `batch()` returns each command's byte span
(`list[Raw]`: 48 bytes a command, the body itself is not copied) so the executor can decode
and run the commands chunk by chunk (`command()`), never holding all of them decoded.
Measured on this machine for a 300k-publish body (16.5 MB): the split takes 0.03 s; decoding
every command 0.2 s more; orjson.loads of the whole body took 1.0 s and ~1.4 GB.

Every failure (syntax, shape, invalid UTF-8, nesting deeper than about 970 levels including
the request's own) is `BadBody`, which the HTTP layer answers with 400.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

import msgspec
from google.protobuf.descriptor import Descriptor

from app import jsonraw
from app.api.gen import api_pb2 as pb

Raw = msgspec.Raw

# api.proto's request message of each HTTP API method.
REQUEST_MESSAGES: dict[str, Descriptor] = {
    "publish": pb.PublishRequest.DESCRIPTOR,
    "broadcast": pb.BroadcastRequest.DESCRIPTOR,
    "subscribe": pb.SubscribeRequest.DESCRIPTOR,
    "unsubscribe": pb.UnsubscribeRequest.DESCRIPTOR,
    "disconnect": pb.DisconnectRequest.DESCRIPTOR,
    "presence": pb.PresenceRequest.DESCRIPTOR,
    "presence_stats": pb.PresenceStatsRequest.DESCRIPTOR,
    "history": pb.HistoryRequest.DESCRIPTOR,
    "history_remove": pb.HistoryRemoveRequest.DESCRIPTOR,
    "channels": pb.ChannelsRequest.DESCRIPTOR,
    "info": pb.InfoRequest.DESCRIPTOR,
    "rpc": pb.RPCRequest.DESCRIPTOR,
    "refresh": pb.RefreshRequest.DESCRIPTOR,
    "batch": pb.BatchRequest.DESCRIPTOR,
    "map_publish": pb.MapPublishRequest.DESCRIPTOR,
    "map_remove": pb.MapRemoveRequest.DESCRIPTOR,
    "map_read_state": pb.MapReadStateRequest.DESCRIPTOR,
    "map_read_stream": pb.MapReadStreamRequest.DESCRIPTOR,
    "map_stats": pb.MapStatsRequest.DESCRIPTOR,
    "map_clear": pb.MapClearRequest.DESCRIPTOR,
    "shared_poll_publish": pb.SharedPollPublishRequest.DESCRIPTOR,
}


class BadBody(ValueError):
    """The body does not decode into the method's request message."""


def _nullable(desc: Descriptor) -> msgspec.json.Decoder[Any]:
    # A JSON null body (or command, or params) is the empty request, as Go's Unmarshal of
    # null into a struct leaves it at its zero value.
    return msgspec.json.Decoder(jsonraw.decoder(desc).type | None)


_PARAMS = {name: _nullable(desc) for name, desc in REQUEST_MESSAGES.items()}
_COMMAND = _nullable(pb.Command.DESCRIPTOR)


class _BatchSpans(TypedDict, total=False):
    commands: list[Raw] | None
    parallel: Any


class _LegacyCommand(TypedDict, total=False):
    id: Any
    method: Any
    params: Raw


_BATCH = msgspec.json.Decoder(_BatchSpans | None)
_LEGACY = msgspec.json.Decoder(_LegacyCommand | None)


def _decode(dec: msgspec.json.Decoder[Any], buf: bytes, *, check_utf8: bool = True) -> Any:
    try:
        return jsonraw.decode(dec, buf, check_utf8=check_utf8)
    except jsonraw.JsonError as e:
        raise BadBody(str(e)) from None


def params(method: str, body: bytes) -> dict[str, Any] | None:
    """The request of `method` (a key of REQUEST_MESSAGES); None for a `null` body."""
    result: dict[str, Any] | None = _decode(_PARAMS[method], body)
    return result


def batch(body: bytes) -> tuple[list[Raw], Any]:
    """A batch body's command spans and its `parallel` value (not yet type-checked)."""
    # Each command's span is checked for UTF-8 when it is decoded (command()), not the whole
    # body (up to 64 MB) at once here.
    value = _decode(_BATCH, body, check_utf8=False)
    if value is None:
        return [], None
    return value.get("commands") or [], value.get("parallel")


class PlainPublish(msgspec.Struct, forbid_unknown_fields=True):
    """A batch command of the shape most batches repeat, `{"publish": {"channel": ...,
    "data": ...}}` and nothing else, decoded in one typed pass (the fast lane of `command`).
    Anything else, a null or a field more included, takes the general decoding, which then
    answers as it always did."""

    channel: str
    data: Raw


class _PlainPublishCommand(msgspec.Struct, forbid_unknown_fields=True):
    publish: PlainPublish


_PLAIN_PUBLISH = msgspec.json.Decoder(_PlainPublishCommand)


def command(span: Raw, *, utf8_checked: bool = False) -> dict[str, Any] | PlainPublish | None:
    """One batch command decoded from its span: a PlainPublish when it is one, else the
    command's dict; None for `null` (answered with 107).

    Measured in instructions (`python -m bench.instructions`: valgrind, deterministic on a
    noisy machine; batches of 500 plain publishes in-process on the Redis engine): decoding
    and converting a command took 18.4k instructions the general way and 10.1k through this
    lane; per publication the batch path went from 68.3k to 59.8k, and publish to delivery
    on a subscribed socket from 127.5k to 120.8k.

    `utf8_checked`: the span lies in a body already known to be UTF-8 (an ASCII body), so it
    is decoded where it lies instead of copied and checked first: 2.9 -> 1.8 µs a plain
    publish command (timeit, 1000 commands)."""
    try:
        if utf8_checked:
            return _PLAIN_PUBLISH.decode(span).publish
        buf = bytes(span)
        jsonraw.require_utf8(buf)
        return _PLAIN_PUBLISH.decode(buf).publish
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        pass
    except jsonraw.JsonError as e:
        raise BadBody(str(e)) from None
    result: dict[str, Any] | None = _decode(_COMMAND, bytes(span), check_utf8=False)
    return result


# --------------------------------------------------------------------------------------------
# the legacy `POST /api` stream: JSON objects `{"id", "method", "params"}` one after another


def legacy_stream(body: bytes) -> list[tuple[Any, Any, Raw | None] | None]:
    """(id, method, params span or None when absent) of each command; None for `null`.

    Usually one command a line; values spread over lines (pretty-printed) are found with the
    standard library's scanner, whose positions index the decoded text.
    """
    try:
        return [_legacy(line) for line in body.splitlines() if line.strip()]
    except BadBody:
        pass
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise BadBody(str(e)) from None
    scanner = json.JSONDecoder()
    out: list[tuple[Any, Any, Raw | None] | None] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos == len(text):
            return out
        try:
            _, end = scanner.raw_decode(text, pos)
        except (ValueError, RecursionError) as e:
            raise BadBody(str(e)) from None
        out.append(_legacy(text[pos:end].encode()))
        pos = end


def _legacy(buf: bytes) -> tuple[Any, Any, Raw | None] | None:
    value = _decode(_LEGACY, buf)
    if value is None:
        return None
    return value.get("id"), value.get("method"), value.get("params")
