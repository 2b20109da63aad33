"""The server API's map methods: map_publish, map_remove, map_read_state, map_read_stream,
map_stats, map_clear (Centrifugo 6.8+, internal/api/api.go MapPublish ... MapClear, with
centrifuge's node.go Map* in between), run on the node's map broker.

Each method checks what Centrifugo's handler checks, in its order, with its codes:
an empty channel (or key, for publish and remove) is 107; a channel whose namespace does not
exist is 102; a namespace that is not a map type (map, map_clients, map_users) is 107 with one
warning line naming the method; a bad b64data or key_mode is 107. Whatever the broker fails
with is 100 (logged), except an unrecoverable position on a read (112). A suppressed write
(idempotency, version, key_mode, ...) is a result, not an error: `suppressed` and its reason.

Results are the api.proto messages as Go's encoding/json writes them (every field
`omitempty`); the executor's `render_payload` keeps `data` raw JSON for HTTP (a Fragment)
and bytes for gRPC.

`MapApi.handlers()` is what the executor adds to its method table; request shapes are in
app/api/decode.py (SPECS), so a method is added in those two places.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.api.decode import b64decode
from app.api.errors import api_error
from app.errors import ERROR_UNKNOWN_CHANNEL, ERROR_UNRECOVERABLE_POSITION, ClientError
from app.jsonraw import payload
from app.maps.broker import (
    KeyMode,
    MapBroker,
    MapChannelOptions,
    MapPublishOptions,
    MapRemoveOptions,
    MapUpdateResult,
)
from app.models import Publication, StreamPosition

if TYPE_CHECKING:
    from app.config import ChannelOptions
    from app.node import Node

log = logging.getLogger("centrifugo.api")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# api.proto MapPublishRequest.key_mode: "" writes always (centrifuge's KeyMode).
_KEY_MODES = {"": KeyMode.REPLACE, "if_new": KeyMode.IF_NEW, "if_exists": KeyMode.IF_EXISTS}


class _Failed(Exception):
    """The broker failed; the API answers 100 (already logged)."""


class MapApi:
    """The six map methods over `node.map_broker`; `render_payload` turns a stored value
    into what the transport's answer carries (JSON fragment, or bytes for gRPC)."""

    def __init__(self, node: Node, render_payload: Callable[[bytes], Any]) -> None:
        self.node = node
        self._render_payload = render_payload

    def handlers(self) -> dict[str, Handler]:
        return {
            "map_publish": self.map_publish,
            "map_remove": self.map_remove,
            "map_read_state": self.map_read_state,
            "map_read_stream": self.map_read_stream,
            "map_stats": self.map_stats,
            "map_clear": self.map_clear,
        }

    # --- the checks every method makes first ---

    def _map_namespace(self, method: str, channel: str) -> ChannelOptions:
        """The channel's namespace options, when it is a map type (Centrifugo's order)."""
        try:
            ns = self.node.resolve(channel).options
        except ClientError as e:
            if e.code == ERROR_UNKNOWN_CHANNEL:
                raise api_error(ERROR_UNKNOWN_CHANNEL) from None
            raise api_error(100) from None
        if not ns.is_map:
            log.warning(
                "%s called on non-map namespace (channel %r, subscription_type %r)",
                method,
                channel,
                ns.subscription_type,
            )
            raise api_error(107)
        return ns

    def _broker(self, channel: str) -> tuple[MapBroker, MapChannelOptions]:
        """The map broker and the channel's storage options; centrifuge answers
        ErrorNotAvailable without a map broker, which the API handler turns into 100."""
        broker = self.node.map_broker
        chopts = self.node.map_channel_options(channel)
        if broker is None or chopts is None:
            log.error("api: no map broker for channel %r", channel)
            raise _Failed()
        return broker, chopts

    async def _run(self, what: str, channel: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`, its failures turned into Centrifugo's answers: 112 passes (reads),
        anything else is logged ("error in map publish") and answers 100."""
        try:
            return await call()
        except ClientError as e:
            if e.code == ERROR_UNRECOVERABLE_POSITION and what.startswith("read"):
                raise api_error(ERROR_UNRECOVERABLE_POSITION) from None
            log.error("error in map %s (channel %r): %s", what, channel, e.message)
            raise api_error(100) from None
        except asyncio.CancelledError:
            raise
        except _Failed:
            raise api_error(100) from None
        except Exception as e:
            log.error("error in map %s (channel %r): %r", what, channel, e)
            raise api_error(100) from None

    # --- writes ---

    async def map_publish(self, req: dict[str, Any]) -> dict[str, Any]:
        channel, key = req["channel"], req["key"]
        if not channel or not key:
            raise api_error(107)
        ns = self._map_namespace("map_publish", channel)
        data = b64decode(req["b64data"]) if req["b64data"] else payload(req["data"])
        key_mode = _KEY_MODES.get(req["key_mode"])
        if key_mode is None:
            log.warning("map_publish: invalid key_mode %r (channel %r)", req["key_mode"], channel)
            raise api_error(107)
        opts = MapPublishOptions(
            data=data,
            tags=req["tags"] or None,
            idempotency_key=req["idempotency_key"],
            delta=req["delta"] or ns.delta_publish,
            version=req["version"],
            version_epoch=req["version_epoch"],
            key_mode=key_mode,
        )

        async def call() -> MapUpdateResult:
            broker, chopts = self._broker(channel)
            return await broker.publish(channel, key, opts, chopts)

        return _update_dict(await self._run("publish", channel, call))

    async def map_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        channel, key = req["channel"], req["key"]
        if not channel or not key:
            raise api_error(107)
        self._map_namespace("map_remove", channel)
        opts = MapRemoveOptions(idempotency_key=req["idempotency_key"])

        async def call() -> MapUpdateResult:
            broker, chopts = self._broker(channel)
            return await broker.remove(channel, key, opts, chopts)

        return _update_dict(await self._run("remove", channel, call))

    async def map_clear(self, req: dict[str, Any]) -> dict[str, Any]:
        channel = req["channel"]
        if not channel:
            raise api_error(107)
        self._map_namespace("map_clear", channel)

        async def call() -> None:
            broker, _ = self._broker(channel)
            await broker.clear(channel)

        await self._run("clear", channel, call)
        return {}

    # --- reads ---

    async def map_read_state(self, req: dict[str, Any]) -> dict[str, Any]:
        channel = req["channel"]
        if not channel:
            raise api_error(107)
        self._map_namespace("map_read_state", channel)
        revision = None
        if req["revision_offset"] > 0 or req["revision_epoch"]:
            revision = StreamPosition(req["revision_offset"], req["revision_epoch"])

        async def call() -> Any:
            # `asc` orders ordered (scored) state only; this server's maps are unordered.
            broker, chopts = self._broker(channel)
            return await broker.read_state(
                channel,
                chopts,
                cursor=req["cursor"],
                limit=req["limit"],
                key=req["key"],
                revision=revision,
            )

        result = await self._run("read state", channel, call)
        out = self._entries(result.publications, result.position)
        if result.cursor:
            out["cursor"] = result.cursor
        return out

    async def map_read_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        channel = req["channel"]
        if not channel:
            raise api_error(107)
        self._map_namespace("map_read_stream", channel)
        since = None
        if req["since_offset"] > 0 or req["since_epoch"]:
            since = StreamPosition(req["since_offset"], req["since_epoch"])
        reverse: bool = req["reverse"]

        async def call() -> Any:
            broker, chopts = self._broker(channel)
            return await broker.read_stream(
                channel, chopts, since=since, limit=req["limit"], reverse=reverse
            )

        result = await self._run("read stream", channel, call)
        pubs: list[Publication] = result.publications
        # centrifuge's node.MapStreamRead: a first entry past since+1 means the entries in
        # between were trimmed away; the reader cannot catch up from its position.
        if not reverse and since is not None and since.offset > 0 and pubs:
            if pubs[0].offset > since.offset + 1:
                raise api_error(ERROR_UNRECOVERABLE_POSITION)
        return self._entries(pubs, result.position)

    async def map_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        channel = req["channel"]
        if not channel:
            raise api_error(107)
        self._map_namespace("map_stats", channel)

        async def call() -> int:
            broker, _ = self._broker(channel)
            return await broker.stats(channel)

        num_keys: int = await self._run("stats", channel, call)
        return {"num_keys": num_keys} if num_keys else {}

    def _entries(self, pubs: list[Publication], position: StreamPosition) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if pubs:
            out["entries"] = [self._entry(p) for p in pubs]
        if position.offset:
            out["offset"] = position.offset
        if position.epoch:
            out["epoch"] = position.epoch
        return out

    def _entry(self, pub: Publication) -> dict[str, Any]:
        """api.proto MapEntry (score is 0: this server's maps are unordered)."""
        out: dict[str, Any] = {}
        if pub.key:
            out["key"] = pub.key
        if pub.data:
            out["data"] = self._render_payload(pub.data)
        if pub.tags:
            out["tags"] = pub.tags
        if pub.offset:
            out["offset"] = pub.offset
        if pub.removed:
            out["removed"] = True
        if pub.time:
            out["time"] = pub.time
        return out


def _update_dict(result: MapUpdateResult) -> dict[str, Any]:
    """api.proto MapPublishResult / MapRemoveResult, zero fields left out."""
    out: dict[str, Any] = {}
    if result.position.offset:
        out["offset"] = result.position.offset
    if result.position.epoch:
        out["epoch"] = result.position.epoch
    if result.suppressed:
        out["suppressed"] = True
        out["suppress_reason"] = result.suppress_reason
    return out
