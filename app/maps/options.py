"""A namespace's `map` section resolved into how its channels are stored (`MapChannelOptions`).

This is centrifuge's ResolveAndValidateMapChannelOptions (map_broker.go, bottom) fed the way
Centrifugo's node.go feeds it (internal/app/node.go, GetMapChannelOptions): the mode string
becomes a MapMode (an unknown or empty one is "not configured"), durations stay seconds, and
the stream defaults are filled in (stream_size 100, stream_ttl 60 s, meta_ttl 10 x stream_ttl
but at least key_ttl for modes that expire keys, 0 = never for persistent).

Config validation (app/config/validation.py) calls it for every map namespace, so a section
centrifuge would refuse at the first map operation fails at start instead, with centrifuge's
message. The node calls it per channel at run time (it cannot fail then).

Page sizes, live_transition_max_publication_limit, subscribe_catch_up_timeout, client_key,
allow_* and remove_client_on_unsubscribe stay on the config object: the client code reads
them there; the map broker needs only what is here.

This module imports no part of app.config at run time (the config package's validation
imports it: an import back would be a cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.maps.broker import MapChannelOptions, MapMode

if TYPE_CHECKING:
    from app.config.schema_channel import ChannelOptions

__all__ = ["MapOptionsError", "map_channel_options"]

# centrifuge's defaults for stream-backed modes (ResolveAndValidateMapChannelOptions).
DEFAULT_STREAM_SIZE = 100
DEFAULT_STREAM_TTL = 60.0
_META_TTL_FACTOR = 10

_MODES = {m.value: m for m in MapMode}


class MapOptionsError(ValueError):
    """The `map` section can not serve a map channel; the message is centrifuge's."""


def map_channel_options(ns: ChannelOptions) -> MapChannelOptions:
    """How channels of namespace `ns` are stored; raises MapOptionsError as centrifuge's
    resolver returns its error (same checks, same order, same words)."""
    m = ns.map
    mode = _MODES.get(m.mode)
    if mode is None:
        raise MapOptionsError("map channel not configured: set Mode")
    key_ttl, stream_ttl, meta_ttl = float(m.key_ttl), float(m.stream_ttl), float(m.meta_ttl)
    stream_size = m.stream_size
    if mode.has_expiry:
        if key_ttl == 0:
            raise MapOptionsError("KeyTTL required for mode with expiry")
        if key_ttl < 0:
            raise MapOptionsError("KeyTTL must be positive")
    elif key_ttl != 0:
        raise MapOptionsError("KeyTTL must be 0 for persistent mode (entries don't expire)")
    if not mode.has_stream:
        if stream_size > 0:
            raise MapOptionsError("StreamSize requires recoverable or persistent mode")
        if stream_ttl > 0:
            raise MapOptionsError("StreamTTL requires recoverable or persistent mode")
        if meta_ttl > 0:
            raise MapOptionsError("MetaTTL requires recoverable or persistent mode")
        # centrifuge keeps whatever non-positive values were given; the broker reads none
        # of them for an ephemeral channel, so the contract's zeros are what it gets.
        return MapChannelOptions(mode=mode, key_ttl=key_ttl)
    if stream_size < 0:
        raise MapOptionsError("StreamSize must be non-negative")
    if stream_ttl < 0:
        raise MapOptionsError("StreamTTL must be non-negative")
    if meta_ttl < 0:
        raise MapOptionsError("MetaTTL must be non-negative")
    stream_size = stream_size or DEFAULT_STREAM_SIZE
    stream_ttl = stream_ttl or DEFAULT_STREAM_TTL
    if meta_ttl == 0 and mode.has_expiry:
        # Derived, so the epoch outlives every stream entry and every key (persistent: 0,
        # the meta never expires).
        meta_ttl = max(stream_ttl * _META_TTL_FACTOR, key_ttl)
    if meta_ttl > 0 and meta_ttl < stream_ttl:
        raise MapOptionsError("MetaTTL must be >= StreamTTL (metadata must outlive stream)")
    if meta_ttl > 0 and key_ttl == 0:
        raise MapOptionsError("MetaTTL must be 0 (permanent) when KeyTTL is 0 (permanent keys)")
    if meta_ttl > 0 and key_ttl > 0 and meta_ttl < key_ttl:
        raise MapOptionsError("MetaTTL must be >= KeyTTL (metadata must outlive keys)")
    return MapChannelOptions(
        mode=mode,
        key_ttl=key_ttl,
        stream_size=stream_size,
        stream_ttl=stream_ttl,
        meta_ttl=meta_ttl,
    )
