"""A node's map channels (app/maps/): which channels are map channels and how they are
stored, and the writes every caller (client commands, server API, map presence) makes
through the map broker, counted as centrifuge's Node.MapPublish and Node.MapRemove count
them (map_broker_{publish,remove}_suppressed_count)."""

from __future__ import annotations

from app import metrics
from app.config import Config
from app.errors import ERROR_NOT_AVAILABLE, ClientError
from app.maps.broker import (
    MapBroker,
    MapChannelOptions,
    MapPublishOptions,
    MapRemoveOptions,
    MapUpdateResult,
)
from app.maps.resolve import MapOptionsOf, map_options_of


class NodeMaps:
    def __init__(self, cfg: Config, broker: MapBroker | None) -> None:
        self.broker = broker
        # A channel's map options (None: not a map channel): app/maps/resolve.py.
        self.options: MapOptionsOf = map_options_of(cfg)

    def _broker(self) -> MapBroker:
        if self.broker is None:
            raise ClientError(ERROR_NOT_AVAILABLE)
        return self.broker

    async def publish(
        self, channel: str, key: str, opts: MapPublishOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        result = await self._broker().publish(channel, key, opts, chopts)
        if result.suppressed:
            metrics.child(
                metrics.MAP_PUBLISH_SUPPRESSED,
                result.suppress_reason,
                metrics.namespace_of(channel),
            ).inc()
        return result

    async def remove(
        self, channel: str, key: str, opts: MapRemoveOptions, chopts: MapChannelOptions
    ) -> MapUpdateResult:
        result = await self._broker().remove(channel, key, opts, chopts)
        if result.suppressed:
            metrics.child(
                metrics.MAP_REMOVE_SUPPRESSED,
                result.suppress_reason,
                metrics.namespace_of(channel),
            ).inc()
        return result
