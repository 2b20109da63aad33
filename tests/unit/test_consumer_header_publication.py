"""Publication-data mode from message headers (app/consumers/header_publication.py), the part
the nats_jetstream and kafka consumers share: Go's ParseBool/ParseUint, channel splitting, tags
and the skip cases of Centrifugo's processPublicationDataMessage / processPublicationDataRecord."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.config.schema_consumers import KafkaPublicationDataModeConfig
from app.consumers.dispatch import ConsumedPublication
from app.consumers.header_publication import (
    SkipMessage,
    parse_go_bool,
    parse_go_uint64,
    publication_from_headers,
    split_channels,
    tags_from_headers,
)


def mode(**changes: object) -> KafkaPublicationDataModeConfig:
    """publication_data_mode with Centrifugo's default header names (`changes` applied)."""
    return replace(KafkaPublicationDataModeConfig(enabled=True), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_bool_true(text: str) -> None:
    assert parse_go_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_bool_false(text: str) -> None:
    assert parse_go_bool(text) is False


@pytest.mark.parametrize("text", ["yes", "tRUE", " true", "2", "on", ""])
def test_go_bool_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_bool(text)


def test_go_uint64_bounds() -> None:
    assert parse_go_uint64("0") == 0
    assert parse_go_uint64("007") == 7
    assert parse_go_uint64("18446744073709551615") == 2**64 - 1
    with pytest.raises(ValueError, match="out of range"):
        parse_go_uint64("18446744073709551616")


@pytest.mark.parametrize("text", ["+1", "-1", " 1", "1_000", "1.0", "٣", "0x10", ""])
def test_go_uint64_rejects_what_python_int_would_take(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_uint64(text)


def test_split_channels_as_go_strings_split() -> None:
    assert split_channels("") == []
    assert split_channels("a") == ["a"]
    assert split_channels("a,b") == ["a", "b"]
    # Nothing trimmed, empty items kept: the API then refuses the empty channel.
    assert split_channels("a, b,") == ["a", " b", ""]


def test_tags_by_prefix_later_header_wins() -> None:
    headers = [("centrifugo-tag-a", "1"), ("other", "x"), ("centrifugo-tag-a", "2")]
    assert tags_from_headers(headers, "centrifugo-tag-") == {"a": "2"}
    assert tags_from_headers(headers, "") == {}
    assert tags_from_headers([("other", "x")], "centrifugo-tag-") == {}


def test_full_publication_from_headers() -> None:
    headers = [
        ("centrifugo-channels", "news,sport"),
        ("centrifugo-idempotency-key", "k1"),
        ("centrifugo-delta", "true"),
        ("centrifugo-version", "42"),
        ("centrifugo-version-epoch", "e1"),
        ("centrifugo-tag-source", "billing"),
    ]
    channels, pub = publication_from_headers(b'{"x":1}', headers, mode())
    assert channels == ["news", "sport"]
    assert pub == ConsumedPublication(
        data=b'{"x":1}',
        idempotency_key="k1",
        delta=True,
        tags={"source": "billing"},
        version=42,
        version_epoch="e1",
    )


def test_first_value_of_a_repeated_header_is_read() -> None:
    headers = [("centrifugo-channels", "a"), ("centrifugo-channels", "b")]
    assert publication_from_headers(b"{}", headers, mode())[0] == ["a"]


def test_missing_channels_skip_at_info() -> None:
    with pytest.raises(SkipMessage) as e:
        publication_from_headers(b"{}", [("centrifugo-version", "1")], mode())
    assert e.value.level == "info"
    with pytest.raises(SkipMessage):
        publication_from_headers(b"{}", [("centrifugo-channels", "")], mode())


@pytest.mark.parametrize(
    "header", [("centrifugo-delta", "yes"), ("centrifugo-version", "-1")], ids=["delta", "version"]
)
def test_unparsable_header_skips_at_error(header: tuple[str, str]) -> None:
    with pytest.raises(SkipMessage) as e:
        publication_from_headers(b"{}", [("centrifugo-channels", "a"), header], mode())
    assert e.value.level == "error"
    assert header[0] in str(e.value)


def test_empty_header_name_turns_that_header_off() -> None:
    m = mode(delta_header="", version_header="", tags_header_prefix="")
    headers = [("centrifugo-channels", "a"), ("", "true"), ("centrifugo-tag-x", "1")]
    _, pub = publication_from_headers(b"{}", headers, m)
    assert (pub.delta, pub.version, pub.tags) == (False, 0, {})
