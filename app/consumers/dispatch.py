"""The dispatcher of consumed messages: a command (`method` + `payload`) or publication data
run through the server API executor, as Centrifugo's internal/api/consuming.go does.

A command's payload is decoded by app/api/request.py and run by app/api/executor.py (one
`ApiExecutor(node, protocol="consuming")` per worker, Centrifugo's "consuming" executor), so
decoding, validation, result codes and the `centrifugo_api_command_*` metrics are the HTTP
API's. What comes back decides the consumer's next step (Centrifugo's rule):

- done: the command ran, or failed for a reason a retry cannot fix (a bad request, an unknown
  channel, a method consumers do not run, a message that does not decode). Those are logged,
  one line each, and the message is acknowledged: a poison message never blocks a partition.
- `Retry`: the server failed (API error 100: the engine or broker is unreachable) and the
  same message must be dispatched again later; for a broadcast, any channel's 100 does.

Methods run: Centrifugo's consuming set (publish, broadcast, subscribe, unsubscribe,
disconnect, history_remove, refresh); any other method is skipped with one info line.

`payload` of the `{"method", "payload"}` envelope may also be a JSON string holding the
request (Centrifugo's JSONRawOrString: Debezium sends JSONB columns that way).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from app.api import request as api_request
from app.errors import ClientError

if TYPE_CHECKING:
    from app.api.executor import ApiExecutor

__all__ = ["CONSUMED_METHODS", "ConsumedPublication", "Dispatcher", "Retry"]

log = logging.getLogger("centrifugo.consumers")

# Centrifugo's Dispatcher.dispatchMethodPayload cases.
CONSUMED_METHODS = frozenset(
    ("publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "history_remove", "refresh")
)
_INTERNAL = 100


class Retry(Exception):
    """The command failed with an internal error: dispatch the same message again later."""

    def __init__(self, method: str, error: ClientError) -> None:
        super().__init__(f"{method}: {error.code} {error.message}")
        self.method = method
        self.code = error.code


@dataclass(frozen=True, slots=True)
class ConsumedPublication:
    """Publication data mode: a message's payload and the publication fields its headers (or
    stream fields) carry (Centrifugo's api.ConsumedPublication)."""

    data: bytes
    idempotency_key: str = ""
    delta: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    version: int = 0
    version_epoch: str = ""


class _Envelope(msgspec.Struct):
    method: str = ""
    payload: msgspec.Raw = msgspec.Raw(b"null")


_ENVELOPE = msgspec.json.Decoder(_Envelope)


class Dispatcher:
    """Runs consumed messages on one worker's node through its API executor."""

    def __init__(self, executor: ApiExecutor) -> None:
        self._executor = executor

    async def dispatch_command(self, method: str, payload: bytes) -> None:
        """Run one command. `method` empty: `payload` is `{"method", "payload"}`.
        Returns when the command is done (ran, or skipped for good); raises `Retry`."""
        if not method:
            try:
                envelope = _ENVELOPE.decode(payload)
            except (msgspec.DecodeError, UnicodeDecodeError) as e:
                log.error("skip malformed consumed message: %s", e)
                return
            method, payload = envelope.method, _raw_or_string(bytes(envelope.payload))
        if method not in CONSUMED_METHODS:
            log.info("skip unsupported API command method %r", method)
            return
        try:
            params = api_request.params(method, payload)
        except api_request.BadBody as e:
            log.error(
                "non retryable error during consuming, skip message: %s: invalid data (%s)",
                method,
                e,
            )
            return
        await self._run(method, params)

    async def dispatch_publication(self, channels: Sequence[str], pub: ConsumedPublication) -> None:
        """Publish `pub` into `channels` (one: publish, several: broadcast); none: nothing.
        Raises `Retry` as `dispatch_command` does."""
        if not channels:
            return
        params: dict[str, Any] = {
            "data": pub.data,
            "idempotency_key": pub.idempotency_key,
            "delta": pub.delta,
            "tags": dict(pub.tags),
            "version": pub.version,
            "version_epoch": pub.version_epoch,
        }
        if len(channels) == 1:
            params["channel"] = channels[0]
            await self._run("publish", params)
        else:
            params["channels"] = list(channels)
            await self._run("broadcast", params)

    async def _run(self, method: str, params: Any) -> None:
        try:
            result = await self._executor.call(method, params)
        except ClientError as e:
            if e.code == _INTERNAL:
                raise Retry(method, e) from None
            log.error(
                "non retryable error during consuming, skip message: %s: %d %s",
                method,
                e.code,
                e.message,
            )
            return
        if method == "broadcast":
            # Any channel's internal error retries the whole broadcast; publishers avoid
            # duplicates in the other channels with an idempotency key (as in Centrifugo).
            for response in result.get("responses", ()):
                error = response.get("error")
                if error and error.get("code") == _INTERNAL:
                    raise Retry(method, ClientError(_INTERNAL, error.get("message", "")))


def _raw_or_string(payload: bytes) -> bytes:
    """A JSON string's content (Centrifugo's JSONRawOrString), any other JSON as it is."""
    if payload[:1] == b'"':
        try:
            text = msgspec.json.decode(payload, type=str)
        except msgspec.DecodeError:
            return payload
        return text.encode()
    return payload
