"""Per-client accounting of the chaos soak: publications lost and delivered twice.

Pure functions over what the publisher and the clients recorded; no I/O.

Every publication carries a unique id in its data. The publisher records, for each one the
server acknowledged, its channel and its stream position (epoch, offset) from the API reply.
Each client records its subscription's timeline in arrival order: a `Subscribed` for every
subscribe reply (first subscribe and every resubscribe, with the reply's stream position and
its `recovered` flag) and a `Received` for every publication event.

A client must receive every acknowledged publication of its channel that lies after the
position it started from, except inside a window that the server announced as a gap:

* A subscribe reply with `recovered=false` (the first subscribe, or a resubscribe the server
  could not recover) starts a *segment* at the reply's position. Replies with
  `recovered=true` continue the segment: the server promised the client everything since its
  last offset.
* Inside a segment that a later `recovered=false` closes, the publications required are those
  between its start and the last one the client received in it: a hole behind a later
  delivery was lost, while what follows the last delivery is what the `recovered=false`
  excuses (the "window").
* The last segment requires everything acknowledged after its start, up to the end of the
  run (the soak drains before it counts).

Positions are ordered across epochs by when each epoch was first seen (a Redis restart
without persistence starts a new epoch; nothing is ever published in the old one again).

A duplicate is an id delivered more than once, whatever the segments. A reorder is a
delivery whose offset does not exceed the previous one within a session (reported only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Ack:
    """A publication the server acknowledged: where it is in its channel's stream."""

    channel: str
    epoch: str
    offset: int
    at: float  # monotonic time of the acknowledgement


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscribe reply as the SDK reported it (SubscribedContext)."""

    epoch: str
    offset: int
    recovered: bool
    was_recovering: bool
    at: float


@dataclass(frozen=True, slots=True)
class Received:
    """A publication event: the id from its data and the offset the SDK gave."""

    pub_id: int
    offset: int


Event = Subscribed | Received


@dataclass(slots=True)
class ClientResult:
    name: str
    channel: str
    received: int = 0
    required: int = 0
    lost: list[int] = field(default_factory=list)  # ids
    duplicates: int = 0
    excused: int = 0  # acknowledged after the start but inside a recovered=false window
    unrecovered: int = 0  # resubscribes answered recovered=false
    resubscribes: int = 0
    reordered: int = 0
    unknown: int = 0  # ids never acknowledged (the publisher gave up; not an error)
    recovered_epoch_change: int = 0  # recovered=true with another epoch than the segment's


@dataclass(frozen=True, slots=True)
class Epochs:
    """Epochs ordered by the first time anyone saw them (an ack or a subscribe reply)."""

    first_seen: Mapping[str, float]
    rank: Mapping[str, int]

    @classmethod
    def of(cls, acks: Iterable[Ack], timelines: Iterable[Sequence[Event]]) -> Epochs:
        first: dict[str, float] = {}
        for a in acks:
            if a.epoch not in first or a.at < first[a.epoch]:
                first[a.epoch] = a.at
        for tl in timelines:
            for ev in tl:
                if isinstance(ev, Subscribed) and ev.epoch:
                    if ev.epoch not in first or ev.at < first[ev.epoch]:
                        first[ev.epoch] = ev.at
        order = sorted(first, key=lambda e: first[e])
        return cls(first, {e: i for i, e in enumerate(order)})

    def start_of(self, ev: Subscribed) -> tuple[int, int]:
        """A subscribe reply's position. An empty epoch means the stream did not exist
        then: the position is before the first epoch that appeared after the reply."""
        if ev.epoch:
            return (self.rank[ev.epoch], ev.offset)
        return (sum(1 for t in self.first_seen.values() if t <= ev.at), 0)


@dataclass(slots=True)
class _Segment:
    start: tuple[int, int]
    epoch: str
    got: list[int] = field(default_factory=list)  # ids received in it


def account(
    name: str,
    channel: str,
    timeline: Sequence[Event],
    acks: Mapping[int, Ack],
    by_channel: Sequence[tuple[tuple[int, int], int]],
    epochs: Epochs,
) -> ClientResult:
    """One client's result. `by_channel`: its channel's acknowledged (position, id) pairs."""
    res = ClientResult(name, channel)
    segments: list[_Segment] = []
    counts: Counter[int] = Counter()
    last_offset = 0
    for ev in timeline:
        if isinstance(ev, Subscribed):
            if segments:
                res.resubscribes += 1
            if ev.recovered and segments:
                seg = segments[-1]
                if not seg.epoch:
                    seg.epoch = ev.epoch  # the stream appeared since (see Epochs.start_of)
                elif ev.epoch != seg.epoch:
                    res.recovered_epoch_change += 1
            else:
                if segments:
                    res.unrecovered += 1
                segments.append(_Segment(epochs.start_of(ev), ev.epoch))
            last_offset = 0
            continue
        res.received += 1
        counts[ev.pub_id] += 1
        if ev.offset and ev.offset <= last_offset:
            res.reordered += 1
        last_offset = max(last_offset, ev.offset)
        if ev.pub_id not in acks:
            res.unknown += 1
        if segments:
            segments[-1].got.append(ev.pub_id)
    res.duplicates = sum(n - 1 for n in counts.values() if n > 1)

    def pos(pub_id: int) -> tuple[int, int]:
        a = acks[pub_id]
        return (epochs.rank[a.epoch], a.offset)

    required: set[int] = set()
    covered: set[int] = set()  # after some segment's start (required or excused)
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        ends = [pos(p) for p in seg.got if p in acks]
        end = max(ends) if ends else seg.start
        for p_pos, pub_id in by_channel:
            if p_pos <= seg.start:
                continue
            covered.add(pub_id)
            if last or p_pos <= end:
                required.add(pub_id)
    res.required = len(required)
    res.excused = len(covered - required)
    res.lost = sorted(required - counts.keys())
    return res


def account_all(
    clients: Iterable[tuple[str, str, Sequence[Event]]], acks: Mapping[int, Ack]
) -> list[ClientResult]:
    """Every client's result; `clients` yields (name, channel, timeline)."""
    items = list(clients)
    epochs = Epochs.of(acks.values(), (tl for _, _, tl in items))
    per_channel: dict[str, list[tuple[tuple[int, int], int]]] = {}
    for pub_id, a in acks.items():
        per_channel.setdefault(a.channel, []).append(((epochs.rank[a.epoch], a.offset), pub_id))
    return [account(n, ch, tl, acks, per_channel.get(ch, []), epochs) for n, ch, tl in items]
