"""Per-worker index of local connections: by id, by user, and channel -> subscribers.

Broadcasts encode a frame once per publication and hand the same bytes to every
local subscriber; the per-subscriber work is a dict lookup and a queue append.

Tags filters (app/filter.py) live in a side index, channel -> {subscriber: matcher}, holding
only the subscribers that sent one. A channel without any keeps the plain loop (one more dict
lookup per publication: 1000 subscribers cost the same per delivery as before, within this
machine's noise). In a channel with some, every subscriber costs one dict lookup more and
only the filtered ones a match (measured with 1000 subscribers: ~1.3x the plain loop's time
per subscriber with 10 filtered, ~1.5x with all of them filtered and refusing; the frame is
still encoded once). A publication a filter refuses still reaches its subscriber as
`WITHHELD`, so its stream position advances past it (centrifuge's `wasFiltered`
publications); it is counted once per refusing subscriber in
centrifugo_node_tags_filter_dropped_publications, as centrifuge counts.

Fossil delta (app/fossil.py): subscribers that negotiated it sit in a second side index and
get `DeltaFrames` instead of `Frames`: the full publication (in JSON its data as a JSON
string, as centrifuge sends to delta subscriptions) and, when the publication allows delta,
a patch against the previous publication of the stream, created once per publication and
shared by all of them. The previous publication is the one this hub delivered last in the
channel, used only when its offset is exactly one less in the same epoch: then it is the
stream's previous publication, the one centrifuge's broker hands along (`prevPub`), and it
works the same on both engines. Anything else (no history, a gap, another epoch) goes in
full. Which of the two a subscriber gets is its own state (app/client: the first
publication after subscribe goes in full).

Personal channels (one subscriber each) make the per-publication work the per-delivery
work, so it is kept small: a publication's frames are a `PublicationFrames` (the codec's
publication push, no closure per publication; `Frames` keeps the first protocol's frame in
two slots and makes a dict only for a second protocol), and a channel with one subscriber
and no tags filter is delivered to without the list copy and the `_fan_out` call. With
the subscriber's side (app/client/subscribing.py, app/writer.py), the reader's shortcuts
(app/engines/redis/pubsub.py) and the encoders' (app/protocol/: their own figures there),
`python -m bench.instructions` counts the read path per publication (e2e less api, valgrind).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

import orjson

from app import fossil, metrics
from app.filter import Matcher, Tags
from app.models import ClientInfo, Publication
from app.protocol import Codec


class Frames:
    """One message encoded at most once per protocol, on first need, then shared by
    every subscriber that speaks that protocol."""

    __slots__ = ("_build", "_name", "_frame", "_more", "frame_type")

    def __init__(
        self, build: Callable[[Codec], bytes], frame_type: str = "push_publication"
    ) -> None:
        self._build = build
        # The first protocol asked for and its frame in two slots, other protocols in a
        # dict made only when a second one is asked for: nearly every channel's
        # subscribers speak one protocol, and a dict per publication was the cost there.
        self._name = ""
        self._frame = b""
        self._more: dict[str, bytes] | None = None
        self.frame_type = frame_type  # the transport_messages_sent label (app/metrics.py)

    def get(self, codec: Codec) -> bytes:
        name = codec.name
        if name == self._name:
            return self._frame
        if not self._name:
            self._name = name
            frame = self._frame = self._encode(codec)
            return frame
        more = self._more
        if more is None:
            more = self._more = {}
        other = more.get(name)
        if other is None:
            other = more[name] = self._encode(codec)
        return other

    def _encode(self, codec: Codec) -> bytes:
        return self._build(codec)


class PublicationFrames(Frames):
    """The frames of a publication for subscribers without delta: Frames whose build is
    the codec's publication push, without a closure made per publication."""

    __slots__ = ("_channel", "_pub")

    def __init__(self, channel: str, pub: Publication) -> None:
        # Frames' slots set here rather than through Frames.__init__: one call less per
        # publication, which on personal channels is per delivery.
        self._name = ""
        self._frame = b""
        self._more = None
        self.frame_type = "push_publication"
        self._channel = channel
        self._pub = pub

    def _encode(self, codec: Codec) -> bytes:
        return codec.encode_pub_push(self._channel, self._pub)


def _never_encoded(codec: Codec) -> bytes:
    raise RuntimeError("a withheld publication has no frame")


def json_string(data: bytes) -> bytes | None:
    """`data` as a JSON string literal (the JSON protocol's form of a delta subscription's
    payload), or None when it is not UTF-8 and so cannot be one."""
    try:
        return orjson.dumps(data.decode())
    except UnicodeDecodeError:
        return None


class DeltaFrames:
    """What a delta subscriber gets: `full` always, `patch` only when the publication
    may go as delta, a base exists and the patch is smaller than the data."""

    __slots__ = ("full", "patch")

    def __init__(self, channel: str, pub: Publication, prev: Publication | None) -> None:
        wire = replace(pub, delta=False)  # pub.delta is the publisher's "may use delta"
        self.full = Frames(lambda codec: _frame(codec, channel, wire))
        self.patch: Frames | None = None
        if prev is not None and pub.delta:
            patch = fossil.worth_sending(prev.data, pub.data)
            if patch is not None:
                delta = replace(pub, data=patch, delta=True)
                self.patch = Frames(lambda codec: _frame(codec, channel, delta))


def plain_frames(channel: str, pub: Publication) -> Frames:
    """The frames of a publication for subscribers without delta: pub.delta is the
    publisher's "may use delta", not a patch, so it never reaches this wire."""
    return PublicationFrames(channel, replace(pub, delta=False) if pub.delta else pub)


def _frame(codec: Codec, channel: str, pub: Publication) -> bytes:
    if not codec.name.startswith("json"):
        return codec.encode_pub_push(channel, pub)
    text = json_string(pub.data)
    return b"" if text is None else codec.encode_pub_push(channel, replace(pub, data=text))


# What a subscriber whose tags filter refused a publication gets instead of its frames: it
# accounts for the offset and sends nothing.
WITHHELD = Frames(_never_encoded)
_NO_TAGS: Tags = {}


class HubClient(Protocol):
    """What the hub needs from a connection (satisfied by app.client.Client)."""

    uid: str
    user: str
    session: str

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frames: Frames | DeltaFrames
    ) -> None:
        """`frames` is WITHHELD when the subscriber's tags filter refused `pub`, and
        DeltaFrames for a subscription that negotiated delta."""

    def deliver_join_leave(self, channel: str, frames: Frames) -> None: ...

    def tags_filter(self, channel: str) -> Matcher | None:
        """The matcher of this client's subscription to `channel`, if it sent a filter;
        asked once, when the hub adds the subscriber."""

    def delta_subscription(self, channel: str) -> bool:
        """Whether this client's subscription to `channel` negotiated fossil delta;
        asked once, when the hub adds the subscriber."""


class Hub:
    def __init__(self) -> None:
        self._conns: dict[str, HubClient] = {}
        self._users: dict[str, dict[str, HubClient]] = {}
        # dict keyed by client object keeps insertion order and O(1) removal.
        self._subs: dict[str, dict[HubClient, None]] = {}
        # Only subscribers with a tags filter, only channels that have one.
        self._filters: dict[str, dict[HubClient, Matcher]] = {}
        # Only subscribers that negotiated delta, only channels that have one; and the
        # last publication delivered in each such channel, with its epoch (a patch base).
        self._deltas: dict[str, dict[HubClient, None]] = {}
        self._last: dict[str, tuple[str, Publication]] = {}
        # Since start: publications fanned out to local subscribers, and subscribers they
        # went to (the admin UI's message rates, app/admin/live.py). Two int additions per
        # publication, not per subscriber.
        self.publications = 0
        self.deliveries = 0

    # --- connections ---

    def add(self, client: HubClient) -> None:
        self._conns[client.uid] = client
        self._users.setdefault(client.user, {})[client.uid] = client

    def remove(self, client: HubClient) -> None:
        self._conns.pop(client.uid, None)
        conns = self._users.get(client.user)
        if conns is not None:
            conns.pop(client.uid, None)
            if not conns:
                del self._users[client.user]

    def connection(self, uid: str) -> HubClient | None:
        return self._conns.get(uid)

    def connections(self) -> list[HubClient]:
        return list(self._conns.values())

    def user_connections(self, user: str) -> list[HubClient]:
        return list(self._users.get(user, {}).values())

    # --- subscriptions ---

    def add_subscriber(self, channel: str, client: HubClient) -> bool:
        """Returns True when this is the channel's first local subscriber."""
        matcher = client.tags_filter(channel)
        if matcher is not None:
            self._filters.setdefault(channel, {})[client] = matcher
        if client.delta_subscription(channel):
            self._deltas.setdefault(channel, {})[client] = None
        subs = self._subs.get(channel)
        if subs is None:
            self._subs[channel] = {client: None}
            return True
        subs[client] = None
        return False

    def remove_subscriber(self, channel: str, client: HubClient) -> bool:
        """Returns True when the channel has no local subscribers left."""
        filters = self._filters.get(channel)
        if filters is not None and filters.pop(client, None) is not None and not filters:
            del self._filters[channel]
        deltas = self._deltas.get(channel)
        if deltas is not None and client in deltas:
            del deltas[client]
            if not deltas:
                del self._deltas[channel]
                self._last.pop(channel, None)
        subs = self._subs.get(channel)
        if subs is None:
            return False
        subs.pop(client, None)
        if not subs:
            del self._subs[channel]
            return True
        return False

    def offer_delta_base(self, channel: str, epoch: str, pub: Publication) -> None:
        """A publication of the stream read from history (a delta subscriber's recovery):
        the base of the next patch if the hub holds nothing newer, so the first live
        publication after a recovery can go as a patch, as centrifuge's history-fed
        prevPub allows, even when the channel had no delta subscriber meanwhile."""
        if channel not in self._deltas or not pub.offset:
            return
        last = self._last.get(channel)
        if last is None or last[0] != epoch or last[1].offset < pub.offset:
            self._last[channel] = (epoch, pub)

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._subs

    def channels(self) -> Iterable[str]:
        return self._subs.keys()

    def num_subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    # --- fan-out ---

    def broadcast_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        n = len(subs)
        self.publications += 1
        self.deliveries += n
        deltas = self._deltas.get(channel)
        if deltas is not None:
            self._broadcast_with_delta(channel, pub, epoch, subs, deltas)
            return
        frames = plain_frames(channel, pub)
        if n == 1 and channel not in self._filters:
            # One subscriber (a personal channel): no list copy and no _fan_out call.
            # Unpacked, not iterated: the delivery may unsubscribe it (insufficient state).
            (client,) = subs
            client.deliver_publication(channel, pub, epoch, frames)
            return
        self._fan_out(channel, pub, epoch, list(subs), frames)

    def _broadcast_with_delta(
        self,
        channel: str,
        pub: Publication,
        epoch: str,
        subs: dict[HubClient, None],
        deltas: dict[HubClient, None],
    ) -> None:
        prev: Publication | None = None
        if pub.key:
            # A map channel: each key is its own delta chain, and the map broker hands the
            # key's previous value along (centrifuge's prev_data); no base for a new key.
            if pub.prev_data is not None:
                prev = Publication(pub.prev_data)
        elif pub.offset:
            last = self._last.get(channel)
            if last is not None and last[0] == epoch and last[1].offset == pub.offset - 1:
                prev = last[1]
            self._last[channel] = (epoch, pub)
        else:
            self._last.pop(channel, None)  # no stream: nothing to patch against
        plain = [c for c in subs if c not in deltas]
        self._fan_out(channel, pub, epoch, plain, plain_frames(channel, pub))
        self._fan_out(channel, pub, epoch, list(deltas), DeltaFrames(channel, pub, prev))

    def _fan_out(
        self,
        channel: str,
        pub: Publication,
        epoch: str,
        clients: list[HubClient],
        frames: Frames | DeltaFrames,
    ) -> None:
        filters = self._filters.get(channel)
        if filters is None:
            # A copy: a delivery may unsubscribe its client (insufficient state).
            for client in clients:
                client.deliver_publication(channel, pub, epoch, frames)
            return
        tags = pub.tags or _NO_TAGS
        dropped = 0
        for client in clients:
            match = filters.get(client)
            if match is None or match(tags):
                client.deliver_publication(channel, pub, epoch, frames)
            else:
                dropped += 1
                client.deliver_publication(channel, pub, epoch, WITHHELD)
        if dropped:
            metrics.child(metrics.TAGS_FILTER_DROPPED, metrics.namespace_of(channel)).inc(dropped)

    def broadcast_join(self, channel: str, info: ClientInfo) -> None:
        subs = self._subs.get(channel)
        if subs:
            frames = Frames(lambda codec: codec.encode_join_push(channel, info), "push_join")
            for client in list(subs):
                client.deliver_join_leave(channel, frames)

    def broadcast_leave(self, channel: str, info: ClientInfo) -> None:
        subs = self._subs.get(channel)
        if subs:
            frames = Frames(lambda codec: codec.encode_leave_push(channel, info), "push_leave")
            for client in list(subs):
                client.deliver_join_leave(channel, frames)

    # --- counts ---

    @property
    def num_clients(self) -> int:
        return len(self._conns)

    @property
    def num_users(self) -> int:
        return len(self._users)

    @property
    def num_channels(self) -> int:
        return len(self._subs)

    @property
    def num_subscriptions(self) -> int:
        return sum(len(s) for s in self._subs.values())
