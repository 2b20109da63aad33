"""Map subscriptions of a connection (Centrifugo 6.8+; centrifuge's client_map.go): the
paged sync (state pages, then stream pages since the state's position, then live), map
publish and remove from the client, and the map presence a map subscription keeps.

A map subscribe is several subscribe commands for one channel. The first (phase STATE,
no cursor) is authorized like a stream subscribe and reserves the channel in `_map_syncs`
(centrifuge's mapSubscribing); the next ones continue without authorization. The last one
goes live: the connection joins the hub (publications arriving meanwhile wait in the
subscription's buffer, as for a stream subscribe), reads the stream from the client's
position, replies, and releases the buffer, whose publications the subscription's offset
deduplicates (deliver_publication in subscribing.py).

Bounds: a sync counts against client.channel_limit like a subscription, and is forgotten
once its catch-up timeout (map.subscribe_catch_up_timeout, 5 s by default) has passed; one
page is at most map.max_page_size entries (1000 by default), one live transition reads at
most map.live_transition_max_publication_limit stream entries (else 112 and a resync).

Ephemeral maps keep no stream: the live reply carries the last state page and live
publications follow. Recoverable and persistent maps are positioned: a reconnecting SDK
goes straight to the live phase with its offset and epoch, or gets 112 and resyncs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from app.channels import ChannelInfo
from app.client.map_pages import MAX_PAGE_SIZE, as_json_strings, delta_chains, page_size
from app.client.map_writes import proxied_map_publish, proxied_map_remove, write_map
from app.client.positioning import matching
from app.client.state import MapSync, SubRequest, Subscription
from app.client.subscribing import SubscribeFlow
from app.config import ChannelOptions
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_SLOW,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    ERROR_UNRECOVERABLE_POSITION,
    ClientError,
    Disconnect,
)
from app.maps.broker import (
    KeyMode,
    MapBroker,
    MapChannelOptions,
    MapPublishOptions,
    MapRemoveOptions,
)
from app.models import Publication, StreamPosition
from app.protocol import get_bool, get_int, get_raw, get_str

log = logging.getLogger("centrifugo.client")

# SubscribeRequest.phase / SubscribeResult.phase (centrifuge's MapPhase*).
PHASE_LIVE = 0
PHASE_STREAM = 1
PHASE_STATE = 2
# SubscribeResult.type of every map subscription reply.
RESULT_TYPE_MAP = 1
# SubscribeRequest.type values that are map subscriptions (map, map_clients, map_users).
MAP_SUB_TYPES = (1, 2, 3)
# PublishRequest.type of a map publish or remove.
PUBLISH_TYPE_MAP = 1

# The catch-up deadline of a sync (SubscribeCatchUpTimeout's default).
CATCH_UP_TIMEOUT = 5.0
_R = TypeVar("_R")


class MapFlow(SubscribeFlow):
    """Map subscriptions: the part of `Client` (app/client/connection.py) after its
    stream subscriptions."""

    __slots__ = ()

    # ------------------------------------------------------------ subscribe

    def _map_broker(self) -> MapBroker:
        broker = self.node.map_broker
        if broker is None:
            raise ClientError(ERROR_NOT_AVAILABLE)
        return broker

    def _map_options(self, chinfo: ChannelInfo) -> MapChannelOptions:
        chopts = self.node.map_channel_options(chinfo.channel)
        if chopts is None:  # _check_subscription_type let only map namespaces through
            raise ClientError(ERROR_INTERNAL)
        return chopts

    def _map_continues(self, channel: str, params: dict[str, Any]) -> bool:
        """A command that continues this channel's sync (a cursor, or a phase after
        STATE): allowed while the sync is reserved (centrifuge's validateSubscribeRequest)."""
        syncs = self._map_syncs
        if syncs is None or channel not in syncs:
            return False
        return bool(get_str(params, "cursor")) or get_int(params, "phase") != PHASE_STATE

    async def _map_subscribe_reserved(
        self, cmd_id: int, chinfo: ChannelInfo, req: SubRequest, params: dict[str, Any]
    ) -> None:
        channel = chinfo.channel
        try:
            result, sub = await self._map_subscribe(chinfo, req, params)
            reply = self.codec.encode_reply(cmd_id, "subscribe", result)
            self.send(reply, "subscribe", chinfo.namespace)
            if sub is not None:
                self._activate(sub)
                await self._map_went_live(sub)
        finally:
            self._end_subscribing(channel)

    async def _map_subscribe(
        self, chinfo: ChannelInfo, req: SubRequest, params: dict[str, Any]
    ) -> tuple[dict[str, Any], Subscription | None]:
        channel = chinfo.channel
        broker = self._map_broker()
        chopts = self._map_options(chinfo)
        phase = get_int(params, "phase", signed=True)
        cursor = get_str(params, "cursor")
        self._sweep_map_syncs(channel)
        syncs = self._map_syncs
        sync = None if syncs is None else syncs.get(channel)
        if sync is not None and (cursor or phase != PHASE_STATE):
            if time.monotonic() - sync.started > self._catch_up_timeout(chinfo.options):
                log.info("map subscribe catch-up timeout in %r (client %s)", channel, self.uid)
                self._drop_map_sync(channel, sync)
                raise Disconnect(DISCONNECT_SLOW)
            # A continuation: authorized by the first command; the sync's grants hold.
            req.tags_filter = sync.req.tags_filter
            req.info, req.expire_at = sync.req.info, sync.req.expire_at
        elif cursor:
            log.info("map subscription %r not authorized for a cursor", channel)
            raise ClientError(ERROR_PERMISSION_DENIED)
        else:
            await self._authorize_subscribe(chinfo, req)
            if req.tf is not None:
                req.tags_filter = self._tags_filter(chinfo, req)
        # No pagination lock (centrifuge's 113) is needed: the channel's reservation while a
        # command for it runs (subscribing.py) already answers a concurrent one with 105.
        if phase == PHASE_STATE:
            return await self._map_state_page(broker, chopts, chinfo, req, params, sync)
        if phase == PHASE_STREAM:
            return await self._map_stream_page(broker, chopts, chinfo, req, params, sync)
        if phase == PHASE_LIVE:
            if sync is not None and req.epoch and sync.epoch and req.epoch != sync.epoch:
                self._drop_map_sync(channel, sync)
                raise ClientError(ERROR_UNRECOVERABLE_POSITION)
            since = StreamPosition(req.offset, req.epoch)
            sub, result = await self._map_go_live(
                broker, chopts, chinfo, req, since, state=None, recovery=True
            )
            return result, sub
        log.info("invalid map phase %d for %r (client %s)", phase, channel, self.uid)
        if sync is not None:
            self._drop_map_sync(channel, sync)
        raise ClientError(ERROR_BAD_REQUEST)

    async def _map_state_page(
        self,
        broker: MapBroker,
        chopts: MapChannelOptions,
        chinfo: ChannelInfo,
        req: SubRequest,
        params: dict[str, Any],
        sync: MapSync | None,
    ) -> tuple[dict[str, Any], Subscription | None]:
        channel = chinfo.channel
        cursor = get_str(params, "cursor")
        if sync is None:
            if cursor:
                raise ClientError(ERROR_PERMISSION_DENIED)
            sync = self._reserve_map_sync(chinfo, req)
        elif not cursor:
            raise ClientError(ERROR_ALREADY_SUBSCRIBED)
        limit = page_size(get_int(params, "limit", signed=True), chinfo.options)
        revision = StreamPosition(req.offset, req.epoch) if req.offset or req.epoch else None
        res = await self._map_read(
            broker.read_state(channel, chopts, cursor=cursor, limit=limit, revision=revision),
            sync,
            "state",
        )
        if not cursor:
            sync.epoch, sync.offset = res.position.epoch, res.position.offset
            sync.offset_captured = True
        pubs = res.publications
        if revision is not None:
            # Entries written after the client's position come from the stream instead.
            pubs = [p for p in pubs if p.offset <= revision.offset]
        pubs = matching(req.tags_filter, pubs)
        # The position of the first page: changes during the paging come from the stream.
        frozen = StreamPosition(sync.offset, sync.epoch) if cursor else res.position
        if not res.cursor:
            if not chopts.mode.has_stream:
                return await self._map_state_to_live(
                    broker, chopts, chinfo, req, sync, pubs, frozen
                )
            top = await self._map_top(broker, chopts, channel, sync)
            if frozen.offset + limit >= top.offset:
                return await self._map_state_to_live(
                    broker, chopts, chinfo, req, sync, pubs, frozen
                )
        result: dict[str, Any] = {
            "type": RESULT_TYPE_MAP,
            "phase": PHASE_STATE,
            "epoch": res.position.epoch,
        }
        if res.cursor:
            result["cursor"] = res.cursor
        if frozen.offset:
            result["offset"] = frozen.offset
        if pubs:
            result["state"] = self._map_delta_form(chinfo, req, pubs)
        return result, None

    async def _map_state_to_live(
        self,
        broker: MapBroker,
        chopts: MapChannelOptions,
        chinfo: ChannelInfo,
        req: SubRequest,
        sync: MapSync,
        pubs: list[Publication],
        since: StreamPosition,
    ) -> tuple[dict[str, Any], Subscription | None]:
        sub, result = await self._map_go_live(
            broker, chopts, chinfo, req, since, state=pubs, recovery=False
        )
        return result, sub

    async def _map_top(
        self, broker: MapBroker, chopts: MapChannelOptions, channel: str, sync: MapSync
    ) -> StreamPosition:
        res = await self._map_read(broker.read_stream(channel, chopts, limit=0), sync, "top")
        return res.position

    async def _map_read(self, read: Awaitable[_R], sync: MapSync, what: str) -> _R:
        """A map broker read during a sync: on failure the sync is dropped, 112 stays 112
        (the SDK resyncs), anything else is logged once and answered 100."""
        try:
            return await read
        except Exception as e:
            self._drop_map_sync(sync.chinfo.channel, sync)
            if isinstance(e, ClientError) and e.code == ERROR_UNRECOVERABLE_POSITION:
                raise
            log.error("reading map %s of %r failed: %s", what, sync.chinfo.channel, e)
            raise ClientError(ERROR_INTERNAL) from None

    def _reserve_map_sync(
        self, chinfo: ChannelInfo, req: SubRequest, *, epoch: str = ""
    ) -> MapSync:
        """Reserve `chinfo`'s channel for a sync from its first command on."""
        sync = MapSync(chinfo, req, time.monotonic(), epoch=epoch)
        if self._map_syncs is None:
            self._map_syncs = {}
        self._map_syncs[chinfo.channel] = sync
        return sync

    async def _map_stream_page(
        self,
        broker: MapBroker,
        chopts: MapChannelOptions,
        chinfo: ChannelInfo,
        req: SubRequest,
        params: dict[str, Any],
        sync: MapSync | None,
    ) -> tuple[dict[str, Any], Subscription | None]:
        channel = chinfo.channel
        if not chopts.mode.has_stream:
            if sync is not None:
                self._drop_map_sync(channel, sync)
            raise ClientError(ERROR_BAD_REQUEST)
        if sync is None:
            if not req.recover:
                log.info("map stream phase of %r without a sync (client %s)", channel, self.uid)
                raise ClientError(ERROR_PERMISSION_DENIED)
            # A reconnecting SDK resumes its stream catch-up without a state phase.
            sync = self._reserve_map_sync(chinfo, req, epoch=req.epoch)
        if req.epoch and sync.epoch and req.epoch != sync.epoch:
            self._drop_map_sync(channel, sync)
            raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        if not sync.stream_start_captured:
            sync.stream_start = (await self._map_top(broker, chopts, channel, sync)).offset
            sync.stream_start_captured = True
        limit = page_size(get_int(params, "limit", signed=True), chinfo.options)
        since = StreamPosition(req.offset, req.epoch)
        if req.offset + limit >= sync.stream_start:
            live, live_result = await self._map_go_live(
                broker, chopts, chinfo, req, since, state=None, recovery=True
            )
            return live_result, live
        res = await self._map_read(
            broker.read_stream(channel, chopts, since=since, limit=limit), sync, "stream"
        )
        pubs = res.publications
        offset = pubs[-1].offset if pubs else req.offset
        pubs = matching(req.tags_filter, pubs)
        result: dict[str, Any] = {
            "type": RESULT_TYPE_MAP,
            "phase": PHASE_STREAM,
            "epoch": res.position.epoch,
        }
        if offset:
            result["offset"] = offset
        if pubs:
            result["publications"] = self._map_delta_form(chinfo, req, pubs)
        return result, None

    def _map_delta_form(
        self, chinfo: ChannelInfo, req: SubRequest, pubs: list[Publication]
    ) -> list[Publication]:
        """State and stream pages of a subscription that will negotiate delta, over JSON:
        data as JSON strings (centrifuge's escapeStateForDelta)."""
        delta = req.delta and req.delta in chinfo.options.allowed_delta_types
        if delta and self.codec.name.startswith("json"):
            return as_json_strings(pubs)
        return pubs

    async def _map_go_live(
        self,
        broker: MapBroker,
        chopts: MapChannelOptions,
        chinfo: ChannelInfo,
        req: SubRequest,
        since: StreamPosition,
        *,
        state: list[Publication] | None,
        recovery: bool,
    ) -> tuple[Subscription, dict[str, Any]]:
        """centrifuge's handleMapTransitionToLive: join the hub (buffering), read the
        stream from `since`, reply; the caller releases the buffer after the reply."""
        channel = chinfo.channel
        ns = chinfo.options
        positioned = chopts.mode.has_stream
        syncs = self._map_syncs
        sync = None if syncs is None else syncs.get(channel)
        if sync is None:
            # A direct live join (recovery): reserve like the other phases do.
            sync = self._reserve_map_sync(chinfo, req, epoch=req.epoch)
        presence, join_leave = ns.presence, ns.join_leave
        delta = bool(req.delta) and req.delta in ns.allowed_delta_types
        sub = Subscription(
            channel=channel,
            chinfo=chinfo,
            server_side=False,
            chan_info=req.info,
            presence=presence,
            join_leave=join_leave,
            push_join_leave=join_leave and ns.force_push_join_leave,
            positioned=positioned,
            recoverable=positioned,
            expire_at=req.expire_at,
            tags_filter=req.tags_filter,
            delta=delta,
            map=True,
        )
        self._subs[channel] = sub
        result: dict[str, Any] = {"type": RESULT_TYPE_MAP, "phase": PHASE_LIVE}
        try:
            await self.node.subscriptions.add(channel, self)
            if positioned:
                limit = ns.map.live_transition_max_publication_limit or (
                    ns.map.max_page_size or MAX_PAGE_SIZE
                )
                res = await broker.read_stream(channel, chopts, since=since, limit=limit + 1)
                top = res.position
                if (recovery or since.epoch) and since.epoch != top.epoch:
                    raise ClientError(ERROR_UNRECOVERABLE_POSITION)
                pubs = res.publications
                if len(pubs) > limit:
                    raise ClientError(ERROR_UNRECOVERABLE_POSITION)
                sub.epoch = top.epoch
                sub.offset = max(top.offset, pubs[-1].offset if pubs else 0, since.offset)
                result["epoch"] = top.epoch
                if sub.offset:
                    result["offset"] = sub.offset
                pubs = matching(sub.tags_filter, pubs)
                if pubs:
                    as_json = self.codec.name.startswith("json")
                    result["publications"] = delta_chains(pubs, as_json) if delta else pubs
                result["recoverable"] = True
                if recovery and req.recover:
                    result["was_recovering"] = True
                    result["recovered"] = True
            elif since.epoch:
                result["epoch"] = since.epoch
            if delta:
                result["delta"] = True
                # The client holds every key's value (state or stream): patches may follow
                # at once (centrifuge sets flagDeltaAllowed for map subscriptions).
                sub.delta_ready = True
            if state:
                result["state"] = self._map_delta_form(chinfo, req, state)
            if presence:
                await self.node.presence_manager.add_presence(channel, self.uid, self._info(sub))
        except BaseException as e:
            await self._drop_subscription(sub, announce=False)
            self._drop_map_sync(channel, sync)
            if isinstance(e, ClientError | Disconnect) or not isinstance(e, Exception):
                raise
            log.error("map subscribe to %r failed: %s", channel, e)
            raise ClientError(ERROR_INTERNAL) from None
        self._drop_map_sync(channel, sync)
        return sub, result

    async def _map_went_live(self, sub: Subscription) -> None:
        """After the live reply: the connection's entries in the map presence channels
        (centrifuge's setupMapPresenceAndJoin)."""
        for presence_channel, key, info in self._map_presence_of(sub):
            try:
                await self._map_presence_publish(presence_channel, key, info)
            except Exception as e:
                log.error("adding map presence in %r failed: %s", presence_channel, e)

    def _map_presence_of(self, sub: Subscription) -> list[tuple[str, str, Any]]:
        """(presence channel, key, client info or None) of this subscription."""
        ns = sub.chinfo.options
        out: list[tuple[str, str, Any]] = []
        if ns.map_clients_presence_channel_prefix:
            out.append(
                (ns.map_clients_presence_channel_prefix + sub.channel, self.uid, self._info(sub))
            )
        if ns.map_users_presence_channel_prefix and self.user:
            out.append((ns.map_users_presence_channel_prefix + sub.channel, self.user, None))
        return out

    async def _map_presence_publish(self, channel: str, key: str, info: Any) -> None:
        chopts = self.node.map_channel_options(channel)
        if chopts is None:
            log.error("map presence channel %r is not a map channel", channel)
            return
        opts = MapPublishOptions(
            client_info=info, key_mode=KeyMode.IF_NEW, refresh_ttl_on_suppress=True
        )
        await self.node.maps.publish(channel, key, opts, chopts)

    async def refresh_map_presence(self) -> None:
        """Keep this connection's map presence entries alive (centrifuge's
        updateMapPresence, on client.presence_update_interval)."""
        for sub in list(self._subs.values()):
            if not sub.map or sub.buffer is not None:
                continue
            for channel, key, info in self._map_presence_of(sub):
                try:
                    await self._map_presence_publish(channel, key, info)
                except Exception as e:
                    log.error("map presence refresh in %r failed: %s", channel, e)

    async def _map_cleanup(self, sub: Subscription) -> None:
        """On unsubscribe or disconnect (centrifuge's removeMapPresence): the client's
        entry in the clients presence channel (user entries expire by TTL: the user may
        have other connections), and its own key with remove_client_on_unsubscribe."""
        ns = sub.chinfo.options
        removals: list[tuple[str, str]] = []
        if ns.map_clients_presence_channel_prefix:
            removals.append((ns.map_clients_presence_channel_prefix + sub.channel, self.uid))
        if ns.map.remove_client_on_unsubscribe:
            removals.append((sub.channel, self.uid))
        for channel, key in removals:
            chopts = self.node.map_channel_options(channel)
            if chopts is None:
                continue
            try:
                await self.node.maps.remove(channel, key, MapRemoveOptions(), chopts)
            except Exception as e:
                log.error("removing map entry %r of %r failed: %s", key, channel, e)

    # ------------------------------------------------------------ syncs

    def _catch_up_timeout(self, ns: ChannelOptions) -> float:
        timeout = ns.map.subscribe_catch_up_timeout
        return CATCH_UP_TIMEOUT if timeout == 0 else (float("inf") if timeout < 0 else timeout)

    def _drop_map_sync(self, channel: str, sync: MapSync) -> None:
        syncs = self._map_syncs
        if syncs is not None and syncs.get(channel) is sync:
            del syncs[channel]
            if not syncs:
                self._map_syncs = None

    def _sweep_map_syncs(self, skip: str) -> None:
        """Forget syncs abandoned past their catch-up timeout (the client stopped paging
        but stayed connected): a bound on what a connection can hold."""
        syncs = self._map_syncs
        if not syncs:
            return
        now = time.monotonic()
        for channel, sync in list(syncs.items()):
            if channel != skip and now - sync.started > self._catch_up_timeout(sync.chinfo.options):
                self._drop_map_sync(channel, sync)

    # ------------------------------------------------------------ publish

    async def _map_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        """A client's map publish or remove (PublishRequest.type 1; Centrifugo's
        OnMapPublish / OnMapRemove)."""
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        removed = get_bool(params, "removed")
        chinfo = self.node.resolve(channel, client_side=True)
        m = chinfo.options.map
        sub = self._subscribed(channel)
        proxies = self.node.proxies
        proxy = (
            proxies.map_remove_proxy(chinfo.options)
            if removed
            else proxies.map_publish_proxy(chinfo.options)
        )
        if proxy is not None:
            # The backend decides instead of the permissions and map.client_key (the config
            # refuses client_key with either proxy): map_writes.py.
            key, ctx = get_str(params, "key"), self.proxy_context()
            if removed:
                await proxied_map_remove(self.node, proxy, ctx, channel, key)
            else:
                data, info = get_raw(params, "data"), self._info(sub)
                await proxied_map_publish(self.node, proxy, ctx, channel, key, data, info)
            return {}
        if removed:
            for_client, for_sub, for_anon = (
                m.allow_remove_for_client,
                m.allow_remove_for_subscriber,
                m.allow_remove_for_anonymous,
            )
        else:
            for_client, for_sub, for_anon = (
                m.allow_publish_for_client,
                m.allow_publish_for_subscriber,
                m.allow_publish_for_anonymous,
            )
        known = bool(self.user) or for_anon
        allowed = (
            (for_client and known) or (for_sub and sub is not None and known) or self.cfg.insecure
        )
        if not allowed:
            log.info(
                "map %s in %r without permission (client %s)",
                "remove" if removed else "publish",
                channel,
                self.uid,
            )
            raise ClientError(ERROR_PERMISSION_DENIED)
        if m.client_key == "client_id":
            key = self.uid
        elif m.client_key == "user_id":
            if not self.user:
                raise ClientError(ERROR_PERMISSION_DENIED)
            key = self.user
        else:
            key = get_str(params, "key")
        if removed:
            await write_map(self.node, channel, key, MapRemoveOptions())
        else:
            opts = MapPublishOptions(
                data=get_raw(params, "data"),
                client_info=self._info(sub),
                delta=chinfo.options.delta_publish,
            )
            await write_map(self.node, channel, key, opts)
        return {}
