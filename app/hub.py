"""Per-worker index of local connections: by id, by user, and channel -> subscribers.

Broadcasts encode a frame once per publication and hand the same bytes to every
local subscriber; the per-subscriber work is a dict lookup and a queue append.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from app.models import ClientInfo, Publication
from app.protocol import Codec


class Frames:
    """One message encoded at most once per protocol, on first need, then shared by
    every subscriber that speaks that protocol."""

    __slots__ = ("_build", "_cache")

    def __init__(self, build: Callable[[Codec], bytes]) -> None:
        self._build = build
        self._cache: dict[str, bytes] = {}

    def get(self, codec: Codec) -> bytes:
        frame = self._cache.get(codec.name)
        if frame is None:
            frame = self._cache[codec.name] = self._build(codec)
        return frame


class HubClient(Protocol):
    """What the hub needs from a connection (satisfied by app.client.Client)."""

    uid: str
    user: str
    session: str

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frame: bytes
    ) -> None: ...

    def deliver_join_leave(self, channel: str, frame: bytes) -> None: ...


class Hub:
    def __init__(self) -> None:
        self._conns: dict[str, HubClient] = {}
        self._users: dict[str, dict[str, HubClient]] = {}
        # dict keyed by client object keeps insertion order and O(1) removal.
        self._subs: dict[str, dict[HubClient, None]] = {}

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
        subs = self._subs.get(channel)
        if subs is None:
            self._subs[channel] = {client: None}
            return True
        subs[client] = None
        return False

    def remove_subscriber(self, channel: str, client: HubClient) -> bool:
        """Returns True when the channel has no local subscribers left."""
        subs = self._subs.get(channel)
        if subs is None:
            return False
        subs.pop(client, None)
        if not subs:
            del self._subs[channel]
            return True
        return False

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
        frames = Frames(lambda codec: codec.encode_pub_push(channel, pub))
        # Copy: a delivery may unsubscribe its client (insufficient state).
        for client in list(subs):
            client.deliver_publication(channel, pub, epoch, frames)

    def broadcast_join(self, channel: str, info: ClientInfo) -> None:
        subs = self._subs.get(channel)
        if subs:
            frames = Frames(lambda codec: codec.encode_join_push(channel, info))
            for client in list(subs):
                client.deliver_join_leave(channel, frames)

    def broadcast_leave(self, channel: str, info: ClientInfo) -> None:
        subs = self._subs.get(channel)
        if subs:
            frames = Frames(lambda codec: codec.encode_leave_push(channel, info))
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
