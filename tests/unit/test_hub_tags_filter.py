"""Hub fan-out with tags filters: one encode per publication and protocol for everyone,
refused publications reach their subscriber as WITHHELD (its position moves), the drop
count per refusing subscriber goes to centrifugo_node_tags_filter_dropped_publications."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import metrics
from app.filter import FilterNode, Matcher, compile_filter
from app.hub import WITHHELD, Frames, Hub
from app.models import Publication


class CountingCodec:
    """Only what Frames asks of a codec: its name and the publication push."""

    name = "counting"

    def __init__(self) -> None:
        self.encodes = 0

    def encode_pub_push(self, channel: str, pub: Publication) -> bytes:
        self.encodes += 1
        return b"push:" + pub.data


CODEC = CountingCodec()


class Recorder:
    """A HubClient that records what the hub hands it."""

    def __init__(self, uid: str, matcher: Matcher | None = None) -> None:
        self.uid = uid
        self.user = uid
        self.session = ""
        self.matcher = matcher
        self.got: list[tuple[int, bytes | None]] = []
        self.codec = CODEC

    def tags_filter(self, channel: str) -> Matcher | None:
        return self.matcher

    def delta_subscription(self, channel: str) -> bool:
        return False

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frames: Frames
    ) -> None:
        frame = None if frames is WITHHELD else frames.get(self.codec)  # type: ignore[arg-type]
        self.got.append((pub.offset, frame))

    def deliver_join_leave(self, channel: str, frames: Frames) -> None:
        pass


@pytest.fixture
def metrics_on() -> Iterator[None]:
    metrics.enable(True)
    yield
    metrics.enable(False)


def eng_only() -> Matcher:
    return compile_filter(FilterNode(key="team", cmp="eq", val="eng"))


def dropped(ns: str) -> float:
    return metrics.TAGS_FILTER_DROPPED.labels(ns)._value.get()


def test_filtered_subscribers_get_withheld_and_others_the_shared_frame(metrics_on: None) -> None:
    hub = Hub()
    plain, eng, eng2 = Recorder("plain"), Recorder("eng", eng_only()), Recorder("eng2", eng_only())
    for c in (plain, eng, eng2):
        hub.add_subscriber("news:a", c)
    before, encodes = dropped("news"), CODEC.encodes
    hub.broadcast_publication("news:a", Publication(b"1", offset=1, tags={"team": "ops"}), "e")
    hub.broadcast_publication("news:a", Publication(b"2", offset=2, tags={"team": "eng"}), "e")
    hub.broadcast_publication("news:a", Publication(b"3", offset=3), "e")  # no tags
    assert CODEC.encodes - encodes == 3  # one per publication, whoever refuses it
    assert [(o, f is not None) for o, f in plain.got] == [(1, True), (2, True), (3, True)]
    for c in (eng, eng2):
        assert [(o, f is not None) for o, f in c.got] == [(1, False), (2, True), (3, False)]
        assert c.got[1][1] == plain.got[1][1]  # the same bytes
    assert dropped("news") - before == 4  # 2 subscribers x 2 refused publications


def test_filter_index_follows_subscribers() -> None:
    hub = Hub()
    eng, plain = Recorder("eng", eng_only()), Recorder("plain")
    hub.add_subscriber("ch", eng)
    hub.add_subscriber("ch", plain)
    assert "ch" in hub._filters
    hub.remove_subscriber("ch", eng)
    assert "ch" not in hub._filters  # the plain loop again
    hub.broadcast_publication("ch", Publication(b"{}", offset=1, tags={"team": "ops"}), "e")
    assert [o for o, f in plain.got if f] == [1]
    assert eng.got == []


def test_channel_without_filters_keeps_the_plain_loop() -> None:
    hub = Hub()
    a, b = Recorder("a"), Recorder("b")
    hub.add_subscriber("ch", a)
    hub.add_subscriber("ch", b)
    assert hub._filters == {}
    hub.broadcast_publication("ch", Publication(b"{}", offset=1, tags={"team": "ops"}), "e")
    assert a.got == b.got and a.got[0][1]
