"""The map write of a client's map publish or remove (PublishRequest.type 1), and its proxy
branch (Centrifugo's OnMapPublish / OnMapRemove with `map.publish_proxy_enabled` /
`map.remove_proxy_enabled`, internal/proxy/map_publish_handler.go, map_remove_handler.go).

`MapFlow._map_publish` (mapping.py) checks the channel, then either asks the namespace's
map proxy (the functions here: the backend replaces the permission checks and
`map.client_key`) or applies them itself; both end in `write_map`, centrifuge's
Node.MapPublish / MapRemove as a client command answers it.

One difference from Centrifugo 6.9.1, on purpose: its proxy handlers return the reply
with the write done but without `Key`, and centrifuge (v0.38.1-0.20260711082514) answers
a reply without a key with 107 *after* the write happened. Here a successful proxied
write is answered as a success: the publication is in the map and the SDK is told so.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.errors import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_NOT_AVAILABLE,
    ClientError,
)
from app.maps.broker import MapPublishOptions, MapRemoveOptions
from app.models import ClientInfo
from app.proxy import Proxy, ProxyContext, ProxyUnavailable

if TYPE_CHECKING:
    from app.node import Node

__all__ = ["write_map", "proxied_map_publish", "proxied_map_remove"]

log = logging.getLogger("centrifugo.client")


async def write_map(
    node: Node, channel: str, key: str, opts: MapPublishOptions | MapRemoveOptions
) -> None:
    """Write `key` of a map channel for a client: no key -> 107 (Node.MapPublish's
    ErrorBadRequest), no map broker -> 108, a namespace that is no map -> 100 with one
    log line; a ClientError of the broker passes, any other failure is logged and 100."""
    if not key:
        raise ClientError(ERROR_BAD_REQUEST)
    if node.map_broker is None:
        raise ClientError(ERROR_NOT_AVAILABLE)
    chopts = node.map_channel_options(channel)
    if chopts is None:
        log.info("map publish to %r: not a map channel", channel)
        raise ClientError(ERROR_INTERNAL)
    try:
        if isinstance(opts, MapRemoveOptions):
            await node.maps.remove(channel, key, opts, chopts)
        else:
            await node.maps.publish(channel, key, opts, chopts)
    except ClientError:
        raise
    except Exception as e:
        log.error("map publish to %r failed: %s", channel, e)
        raise ClientError(ERROR_INTERNAL) from None


async def proxied_map_publish(
    node: Node,
    proxy: Proxy,
    ctx: ProxyContext,
    channel: str,
    key: str,
    data: bytes,
    info: ClientInfo,
) -> None:
    """Ask the map publish proxy, then publish what it decided. Its `error` / `disconnect`
    raise (ClientError / Disconnect) before anything is written; an unusable answer is 100."""
    try:
        res = await proxy.map_publish(ctx, channel, key, data)
    except ProxyUnavailable:
        raise ClientError(ERROR_INTERNAL) from None
    opts = MapPublishOptions(
        data=res.data if res.data is not None else data,
        tags=res.tags,
        client_info=info,
        # The result's own flag: Centrifugo's handler leaves the namespace's delta_publish
        # out of the proxied path.
        delta=res.delta,
        idempotency_key=res.idempotency_key,
        version=res.version,
        version_epoch=res.version_epoch,
        key_mode=res.key_mode,
    )
    await write_map(node, channel, res.key or key, opts)


async def proxied_map_remove(
    node: Node, proxy: Proxy, ctx: ProxyContext, channel: str, key: str
) -> None:
    """Ask the map remove proxy, then remove the key it decided (tags and idempotency key
    from its result)."""
    try:
        res = await proxy.map_remove(ctx, channel, key)
    except ProxyUnavailable:
        raise ClientError(ERROR_INTERNAL) from None
    opts = MapRemoveOptions(idempotency_key=res.idempotency_key, tags=res.tags)
    await write_map(node, channel, res.key or key, opts)
