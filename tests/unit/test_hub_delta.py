"""Hub fan-out with fossil delta subscribers: one patch per publication shared by all of
them, the plain subscribers' one-encode path untouched (and never told `delta`), a patch only
against the stream's previous publication (offset - 1, same epoch) and only when the
publisher allowed delta."""

from __future__ import annotations

import json

from app import fossil
from app.hub import WITHHELD, DeltaFrames, Frames, Hub
from app.models import Publication
from app.protocol.json import JSON


class Recorder:
    """A HubClient that takes what the hub hands it the way app.client does: a delta
    subscriber gets the full frame first, then the patch whenever there is one."""

    def __init__(self, uid: str, delta: bool) -> None:
        self.uid = self.user = uid
        self.session = ""
        self.delta = delta
        self.ready = False
        self.got: list[bytes] = []
        self.handed: list[Frames | DeltaFrames] = []

    def tags_filter(self, channel: str) -> None:
        return None

    def delta_subscription(self, channel: str) -> bool:
        return self.delta

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frames: Frames | DeltaFrames
    ) -> None:
        assert frames is not WITHHELD
        self.handed.append(frames)
        if isinstance(frames, DeltaFrames):
            if self.ready and frames.patch is not None:
                frames = frames.patch
            else:
                frames, self.ready = frames.full, True
        self.got.append(frames.get(JSON))

    def deliver_join_leave(self, channel: str, frames: Frames) -> None:
        pass


def doc(n: int) -> bytes:
    return json.dumps({f"k{i}": "v" * 30 for i in range(40)} | {"n": n}).encode()


def pub_of(frame: bytes) -> dict:
    return json.loads(frame)["push"]["pub"]


def test_delta_subscribers_share_one_patch_and_plain_ones_are_untouched() -> None:
    hub = Hub()
    plain, d1, d2 = Recorder("p", False), Recorder("d1", True), Recorder("d2", True)
    for c in (plain, d1, d2):
        hub.add_subscriber("ch", c)
    for n in range(1, 4):
        hub.broadcast_publication("ch", Publication(doc(n), offset=n, delta=True), "e")

    # Plain: the data as JSON, no delta flag (pub.delta is the publisher's option).
    assert [json.loads(f)["push"]["pub"] for f in plain.got] == [
        {"data": json.loads(doc(n)), "offset": n} for n in range(1, 4)
    ]
    # Delta subscribers: the same frame objects (one patch, one encode, shared).
    assert all(a is b for a, b in zip(d1.got, d2.got, strict=True))
    first, *later = (pub_of(f) for f in d1.got)
    assert json.loads(first["data"]) == json.loads(doc(1)) and "delta" not in first
    for n, p in enumerate(later, start=2):
        assert p["delta"] is True
        assert p["data"].encode() == fossil.create(doc(n - 1), doc(n))
        assert len(p["data"]) < len(doc(n)) / 10


def test_no_patch_without_the_previous_offset_or_without_delta_allowed() -> None:
    hub = Hub()
    d = Recorder("d", True)
    hub.add_subscriber("ch", d)
    hub.broadcast_publication("ch", Publication(doc(1), offset=1, delta=True), "e")
    hub.broadcast_publication("ch", Publication(doc(3), offset=3, delta=True), "e")  # a gap
    hub.broadcast_publication("ch", Publication(doc(4), offset=4, delta=True), "other")  # epoch
    hub.broadcast_publication("ch", Publication(doc(5), offset=5), "other")  # not allowed
    hub.broadcast_publication("ch", Publication(doc(6), offset=0, delta=True), "")  # no stream
    assert [f.patch for f in d.handed if isinstance(f, DeltaFrames)] == [None] * 5
    hub.broadcast_publication("ch", Publication(doc(7), offset=6, delta=True), "other")
    # offset 6 follows 5? No: the offset-less publication dropped the base.
    assert d.handed[-1].patch is None  # type: ignore[union-attr]


def test_offered_history_base_and_cleanup() -> None:
    hub = Hub()
    d = Recorder("d", True)
    hub.add_subscriber("ch", d)
    hub.offer_delta_base("ch", "e", Publication(doc(4), offset=4))
    hub.broadcast_publication("ch", Publication(doc(5), offset=5, delta=True), "e")
    patch = d.handed[-1].patch  # type: ignore[union-attr]
    assert patch is not None
    hub.remove_subscriber("ch", d)
    hub.add_subscriber("ch", d)
    hub.broadcast_publication("ch", Publication(doc(6), offset=6, delta=True), "e")
    # The last delta subscriber left: the base went with it.
    assert d.handed[-1].patch is None  # type: ignore[union-attr]
