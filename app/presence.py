"""The PresenceManager contract: who is subscribed to a channel, across all nodes.

Entries expire unless re-added: each node re-adds its clients every
`client.presence_update_interval`, so a dead node's entries vanish after the TTL.
"""

from __future__ import annotations

from typing import Protocol

from app.models import ClientInfo, PresenceStats


class PresenceManager(Protocol):
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Client id -> info for every live entry of the channel."""

    async def presence_stats(self, channel: str) -> PresenceStats:
        """Unique clients and unique users of the channel."""

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        """Add or refresh an entry (refreshing extends its TTL)."""

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None: ...

    async def close(self) -> None: ...
