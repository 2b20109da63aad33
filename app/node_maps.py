"""A node's map channels (app/maps/): which channels are map channels and how they are
stored, and the writes every caller (client commands, server API, map presence) makes
through the map broker, counted as centrifuge's Node.MapPublish and Node.MapRemove count
them (map_broker_{publish,remove}_suppressed_count)."""

from __future__ import annotations

from collections.abc import Callable

from app import metrics
from app.channels import ChannelInfo
from app.errors import ERROR_NOT_AVAILABLE, ClientError
from app.maps.broker import (
    MapBroker,
    MapChannelOptions,
    MapPublishOptions,
    MapRemoveOptions,
    MapUpdateResult,
)
from app.maps.options import map_channel_options


class NodeMaps:
    def __init__(self, resolve: Callable[[str], ChannelInfo], broker: MapBroker | None) -> None:
        self._resolve = resolve
        self.broker = broker
        self._options: dict[int, MapChannelOptions] = {}  # by id(namespace options)

    def options(self, channel: str) -> MapChannelOptions | None:
        """The map options of `channel`; None when its namespace is not a map type (map,
        map_clients, map_users) or does not exist."""
        try:
            ns = self._resolve(channel).options
        except ClientError:
            return None
        if not ns.is_map:
            return None
        # Validated at config load (cannot raise here); resolved once per namespace.
        chopts = self._options.get(id(ns))
        if chopts is None:
            chopts = self._options[id(ns)] = map_channel_options(ns)
        return chopts

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
