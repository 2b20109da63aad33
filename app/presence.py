"""The PresenceManager contract: who is subscribed to a channel, across all nodes.

Entries expire unless re-added: each node re-adds its clients every
`client.presence_update_interval`, so a dead node's entries vanish after the TTL.

Modelled on centrifuge's `presence.go`. Implementations: `engines/memory.py` and
`engines/redis/presence.py`, each stating its conformance in one typed line.
"""

from __future__ import annotations

from typing import Protocol

from app.models import ClientInfo, PresenceStats


class PresenceManager(Protocol):
    """Who is in a channel, across all nodes (centrifuge's PresenceManager)."""

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Client id -> info for every live entry of the channel."""

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Unique clients and unique users of the channel."""

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        """Add or refresh an entry (refreshing extends its TTL)."""

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None:
        """Drop an entry now (its user's count drops once none of the user's are left)."""

    async def close(self) -> None:
        """Release what the manager holds. Called once, at shutdown, after the broker's."""
