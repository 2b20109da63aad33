"""Which channels are map channels under a config, and how each is stored: the one lookup
the node (app/node_maps.py) and a broker that needs a channel's mode without a call naming
it (the PostgreSQL broker's delivery and expiry) share."""

from __future__ import annotations

from collections.abc import Callable

from app.channels import ChannelResolver
from app.config import Config
from app.errors import ClientError
from app.maps.broker import MapChannelOptions
from app.maps.options import map_channel_options

MapOptionsOf = Callable[[str], "MapChannelOptions | None"]


def map_options_of(cfg: Config) -> MapOptionsOf:
    """A channel's map options under `cfg`; None when its namespace is not a map type (map,
    map_clients, map_users) or does not exist. Resolved once per namespace."""
    resolver = ChannelResolver(cfg)
    cache: dict[int, MapChannelOptions] = {}

    def options_of(channel: str) -> MapChannelOptions | None:
        try:
            ns = resolver.resolve(channel).options
        except ClientError:
            return None
        if not ns.is_map:
            return None
        chopts = cache.get(id(ns))
        if chopts is None:  # validated at config load: cannot raise
            chopts = cache[id(ns)] = map_channel_options(ns)
        return chopts

    return options_of
