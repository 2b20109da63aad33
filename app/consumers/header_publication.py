"""Publication-data mode read from message headers: what the `nats_jetstream` and `kafka`
consumers publish when `publication_data_mode.enabled` is on.

In that mode the message payload is the publication data itself and everything else comes from
headers named in the config (Centrifugo's `processPublicationDataMessage` in
internal/consuming/nats_jetstream.go and `processPublicationDataRecord` in kafka.go, which do the
same thing over two header types):

- `channels_header`: comma-separated channels, split on "," with nothing trimmed (one channel is
  a publish, several a broadcast); missing or empty: the message is skipped (acknowledged, one
  info line), as is a delta or version header that does not parse (one error line).
- `delta_header`: Go's `strconv.ParseBool` (1 t T TRUE true True / 0 f F FALSE false False).
- `version_header`: Go's `strconv.ParseUint(s, 10, 64)`: ASCII digits only, at most 2^64-1.
- `idempotency_key_header`, `version_epoch_header`: the value as it is.
- `tags_header_prefix`: every header whose name starts with it becomes a tag, the prefix cut.

An empty header name in the config turns that header off (Go's getters answer "" for it).
Pure functions; no I/O. The dispatcher (app/consumers/dispatch.py) publishes the result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from app.consumers.dispatch import ConsumedPublication

__all__ = [
    "HeaderModeConfig",
    "SkipMessage",
    "parse_go_bool",
    "parse_go_uint64",
    "split_channels",
    "tags_from_headers",
    "publication_from_headers",
]

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# ParseUint base 10: no sign, no underscores, no spaces, no non-ASCII digits (Python's int()
# takes all of those, so the text is checked before it is converted).
_DIGITS = re.compile(r"[0-9]+\Z")
_UINT64_MAX = (1 << 64) - 1


class HeaderModeConfig(Protocol):
    """The header names of a `publication_data_mode` section (NATS JetStream and Kafka share
    them: Centrifugo's NatsJetStreamPublicationDataModeConfig / KafkaPublicationDataModeConfig)."""

    @property
    def channels_header(self) -> str: ...
    @property
    def idempotency_key_header(self) -> str: ...
    @property
    def delta_header(self) -> str: ...
    @property
    def version_header(self) -> str: ...
    @property
    def version_epoch_header(self) -> str: ...
    @property
    def tags_header_prefix(self) -> str: ...


class SkipMessage(Exception):
    """The message cannot be published and is acknowledged without a retry (Centrifugo skips
    it: a retry would fail the same way). `level` is the log level Centrifugo uses for it."""

    def __init__(self, reason: str, level: str = "error") -> None:
        super().__init__(reason)
        self.level = level


def parse_go_bool(value: str) -> bool:
    """Go's strconv.ParseBool; ValueError on anything else."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"invalid syntax: {value!r}")


def parse_go_uint64(value: str) -> int:
    """Go's strconv.ParseUint(value, 10, 64); ValueError on anything else."""
    if not _DIGITS.match(value):
        raise ValueError(f"invalid syntax: {value!r}")
    number = int(value)
    if number > _UINT64_MAX:
        raise ValueError(f"value out of range: {value!r}")
    return number


def split_channels(value: str) -> list[str]:
    """Go's strings.Split(value, ","); an empty value is no channel (not one empty one)."""
    if value == "":
        return []
    return value.split(",")


def tags_from_headers(headers: Iterable[tuple[str, str]], prefix: str) -> dict[str, str]:
    """Tags from the headers starting with `prefix` (a later header of one name wins, as in
    Centrifugo's Kafka loop); none when the prefix is empty."""
    if not prefix:
        return {}
    return {key[len(prefix) :]: value for key, value in headers if key.startswith(prefix)}


def publication_from_headers(
    data: bytes, headers: Iterable[tuple[str, str]], mode: HeaderModeConfig
) -> tuple[list[str], ConsumedPublication]:
    """The channels and publication one message asks for; SkipMessage when it has to be
    skipped.

    `headers` are (name, value) pairs in message order; a name looked up alone takes its first
    value (Go's Header.Get and Centrifugo's Kafka getHeaderValue)."""
    pairs = list(headers)
    first: dict[str, str] = {}
    for key, value in pairs:
        first.setdefault(key, value)

    def get(name: str) -> str:
        return first.get(name, "") if name else ""

    try:
        delta = parse_go_bool(get(mode.delta_header)) if get(mode.delta_header) else False
    except ValueError as e:
        raise SkipMessage(f"error parsing delta header {mode.delta_header!r}: {e}") from None
    channels = split_channels(get(mode.channels_header))
    if not channels:
        raise SkipMessage("no channels found", level="info")
    version_text = get(mode.version_header)
    try:
        version = parse_go_uint64(version_text) if version_text else 0
    except ValueError as e:
        raise SkipMessage(f"error parsing version header {mode.version_header!r}: {e}") from None
    return channels, ConsumedPublication(
        data=data,
        idempotency_key=get(mode.idempotency_key_header),
        delta=delta,
        tags=tags_from_headers(pairs, mode.tags_header_prefix),
        version=version,
        version_epoch=get(mode.version_epoch_header),
    )
