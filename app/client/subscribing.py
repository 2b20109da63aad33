"""Subscriptions of a connection: subscribe (its request, the channel's reservation while
it is in flight, the subscription itself), their expiry and refresh, server-side
subscriptions, and delivering publications and join/leave to this connection.
Permissions are in permissions.py, positioning and recovery in positioning.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from app import metrics
from app.auth import SubscribeOverride
from app.channels import ChannelInfo
from app.client.permissions import Permissions
from app.client.positioning import Positioning
from app.client.state import State, SubRequest, Subscription, ttl_until
from app.client.sub_request import (
    DELTA_FOSSIL,
    SUB_TYPE_SHARED_POLL,
    SUB_TYPE_STREAM,
    subscribe_flags,
    subscription_type,
    subscription_type_allowed,
)
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CHANNEL_LIMIT,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_INSUFFICIENT_STATE,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_SUB_EXPIRED,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_LIMIT_EXCEEDED,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    UNSUBSCRIBE_EXPIRED,
    UNSUBSCRIBE_INSUFFICIENT_STATE,
    UNSUBSCRIBE_REASONS,
    UNSUBSCRIBE_SERVER,
    ClientError,
    Disconnect,
)
from app.filter import Matcher, from_params
from app.hub import WITHHELD, DeltaFrames, Frames
from app.models import ClientInfo, Publication, StreamPosition
from app.protocol import EncodeError, get_bool, get_int, get_raw, get_str
from app.proxy import REFRESH_RETRY_DELAY, ProxyUnavailable

log = logging.getLogger("centrifugo.client")

# How long an unsubscribe waits for a subscribe to its channel in flight (centrifuge's
# maxWaitTimeout in Client.unsubscribe).
SUBSCRIBE_WAIT = 5.0


class SubscribeFlow(Permissions, Positioning):
    """Subscriptions of a connection: the part of `Client` (app/client/connection.py)
    after its permissions and positioning."""

    __slots__ = ()

    # ------------------------------------------------------------ subscribe

    def _cmd_subscribe(self, cmd_id: int, params: dict[str, Any]) -> Coroutine[Any, Any, None]:
        """Checks the request and reserves its channel before returning the coroutine
        that subscribes: with client.concurrency the reader calls this, in command order,
        as centrifuge checks and reserves in its reader (validateSubscribeRequest)."""
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        sub_type = SUB_TYPE_STREAM if len(params) == 1 else subscription_type(params)
        # Most subscribes name only the channel: then every other field is its default.
        req = (
            SubRequest()
            if len(params) == 1
            else SubRequest(
                token=get_str(params, "token"),
                recover=get_bool(params, "recover"),
                offset=get_int(params, "offset"),
                epoch=get_str(params, "epoch"),
                positioned=get_bool(params, "positioned"),
                recoverable=get_bool(params, "recoverable"),
                join_leave=get_bool(params, "join_leave"),
                client_data=get_raw(params, "data") or None,
                flag=get_int(params, "flag", signed=True),
                delta=get_str(params, "delta"),
            )
        )
        if sub_type == SUB_TYPE_SHARED_POLL:
            # Client never gets here: PollFlow (app/client/polling.py) takes type 4 first,
            # before any other check, as centrifuge routes it. A bare SubscribeFlow has none.
            log.info("shared poll subscribe to %r is not available", channel)
            raise ClientError(ERROR_NOT_AVAILABLE)
        if req.delta and req.delta != DELTA_FOSSIL:
            # An unknown delta type is a bad request; centrifuge checks it right after
            # shared poll routing, before everything else.
            log.info("unknown delta type %r in subscribe to %r", req.delta, channel)
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        if "tf" in params:
            req.tf = from_params(params["tf"])  # wrong types: DecodeError, 3501
        chinfo = self.node.resolve(channel, client_side=True)
        ns_type = chinfo.options.subscription_type
        if ns_type == "shared_poll":
            log.info("subscribe to shared poll channel %r without the shared poll type", channel)
            raise ClientError(ERROR_BAD_REQUEST)
        if channel in self._subs or self._subscribing_to(channel):
            raise ClientError(ERROR_ALREADY_SUBSCRIBED)
        # A map sync's next page (cursor, or a later phase) holds its channel already.
        continues = sub_type != SUB_TYPE_STREAM and self._map_continues(channel, params)
        limit = self.cfg.channel_limit
        if not continues and limit > 0 and self._num_channels() >= limit:
            raise ClientError(ERROR_LIMIT_EXCEEDED)
        if sub_type != SUB_TYPE_STREAM or ns_type:
            self._check_subscription_type(channel, sub_type, ns_type)
        subscribing = self._subscribing
        if subscribing is None:
            subscribing = self._subscribing = {}
        subscribing[channel] = None
        if sub_type != SUB_TYPE_STREAM:
            return self._map_subscribe_reserved(cmd_id, chinfo, req, params)
        return self._subscribe_reserved(cmd_id, chinfo, req)

    # Map subscriptions (app/client/mapping.py MapFlow, a subclass) take these over.

    def _map_continues(self, channel: str, params: dict[str, Any]) -> bool:
        return False

    async def _map_subscribe_reserved(
        self, cmd_id: int, chinfo: ChannelInfo, req: SubRequest, params: dict[str, Any]
    ) -> None:
        self._end_subscribing(chinfo.channel)
        raise ClientError(ERROR_NOT_AVAILABLE)

    async def _map_cleanup(self, sub: Subscription) -> None:
        """What a map subscription leaves behind when it ends."""

    def _check_subscription_type(self, channel: str, sub_type: int, ns_type: str) -> None:
        """103 for a type the namespace does not take (after 105 and the channel limit, as
        in Centrifugo's subscribe handler); a map type without a map broker is 108."""
        if not subscription_type_allowed(sub_type, ns_type):
            log.info(
                "subscription type %d not allowed for namespace of %r (client %s)",
                sub_type,
                channel,
                self.uid,
            )
            raise ClientError(ERROR_PERMISSION_DENIED)
        if sub_type != SUB_TYPE_STREAM and self.node.map_broker is None:
            log.info("map subscribe to %r: no map broker", channel)
            raise ClientError(ERROR_NOT_AVAILABLE)

    async def _subscribe_reserved(self, cmd_id: int, chinfo: ChannelInfo, req: SubRequest) -> None:
        try:
            await self._authorize_subscribe(chinfo, req)
            if req.tf is not None:
                req.tags_filter = self._tags_filter(chinfo, req)
            sub, result = await self._subscribe(chinfo, req, server_side=False)
            reply = self.codec.encode_reply(cmd_id, "subscribe", result)
            self.send(reply, "subscribe", chinfo.namespace)
            self._activate(sub)
        finally:
            self._end_subscribing(chinfo.channel)

    # A client subscribe reserves its channel from its checks to its reply (centrifuge's
    # subscribingCh): a second subscribe to it is 105, client.channel_limit counts it, an
    # unsubscribe of it waits for it, and a server-side subscribe leaves it alone.

    def _subscribed(self, channel: str) -> Subscription | None:
        """The subscription to `channel` once its subscribe has been answered (centrifuge's
        IsSubscribed): permissions for subscribers and sub_refresh need one."""
        sub = self._subs.get(channel)
        return sub if sub is not None and sub.buffer is None else None

    def _subscribing_to(self, channel: str) -> bool:
        return self._subscribing is not None and channel in self._subscribing

    def _num_channels(self) -> int:
        """Subscriptions and reserved channels (a reservation is also in `_subs` from
        the moment `_subscribe` starts; a map sync between its pages is one too)."""
        n = len(self._subs)
        reserved = set(self._subscribing or ())
        # A map subscription still syncing holds its channel between its commands too.
        reserved.update(self._map_syncs or ())
        return n + sum(1 for ch in reserved if ch not in self._subs)

    def _end_subscribing(self, channel: str | None = None) -> None:
        """Drop the reservation of `channel` (of every channel: the connection closes) and
        wake the unsubscribe waiting for it."""
        subscribing = self._subscribing
        if subscribing is None:
            return
        waiters = [subscribing.pop(channel, None)] if channel is not None else subscribing.values()
        for waiter in waiters:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if channel is None or not subscribing:
            self._subscribing = None

    async def _subscribe_settled(self, channel: str) -> None:
        """Wait for a client subscribe to `channel` in flight (client.concurrency) to end,
        as centrifuge's unsubscribe does: 5 s at most, then the connection goes with 3004
        (a subscribe that long means the server is in trouble)."""
        subscribing = self._subscribing
        if subscribing is None or channel not in subscribing:
            return
        waiter = subscribing[channel]
        if waiter is None:
            waiter = subscribing[channel] = self.node.loop.create_future()
        try:
            await asyncio.wait_for(waiter, SUBSCRIBE_WAIT)
        except TimeoutError:
            raise Disconnect(
                DISCONNECT_SERVER_ERROR, detail=f"subscribe to {channel} still in flight"
            ) from None

    async def _subscribe(
        self,
        chinfo: ChannelInfo,
        req: SubRequest,
        *,
        server_side: bool,
        auto_cache_recover: bool = True,
    ) -> tuple[Subscription, dict[str, Any]]:
        """Subscribe this connection; the subscription buffers until `_activate`.

        `auto_cache_recover=False`: the namespace's auto_cache_recover does not apply (the
        server API's subscribe, as Centrifugo's passes no AutoCacheRecover)."""
        ns = chinfo.options
        channel = chinfo.channel
        presence, join_leave, force_push, force_recovery, force_positioning = subscribe_flags(
            ns, req.override
        )
        history_ok = server_side or self._history_permitted(ns, True)

        recoverable = ns.history_enabled and (
            force_recovery or (req.recoverable and (ns.allow_recovery or history_ok))
        )
        if (
            recoverable
            and auto_cache_recover
            and ns.auto_cache_recover
            and ns.force_recovery_mode == "cache"
        ):
            # auto_cache_recover (6.8.3): cache recovery as if asked for, from the client's
            # position if it sent one; the latest publication comes on every (re)subscribe.
            req.recover = True
        positioned = ns.history_enabled and (
            recoverable
            or force_positioning
            or (req.positioned and (ns.allow_positioning or history_ok))
        )
        push_join_leave = join_leave and (
            force_push or server_side or (req.join_leave and self._presence_permitted(ns, True))
        )
        sub = Subscription(
            channel=channel,
            chinfo=chinfo,
            server_side=server_side,
            chan_info=req.info,
            presence=presence,
            join_leave=join_leave,
            push_join_leave=push_join_leave,
            positioned=positioned,
            recoverable=recoverable,
            expire_at=req.expire_at,
            tags_filter=req.tags_filter,
            # Negotiated only where the namespace allows the type; otherwise the
            # subscription goes on without delta (centrifuge's subscribeCmd).
            delta=bool(req.delta) and req.delta in ns.allowed_delta_types,
        )
        self._subs[channel] = sub
        try:
            adding = self.node.subscriptions.add(channel, self)
            if self._inflight is None:
                await adding
            else:
                # A concurrent command is cancelled when its connection closes; the broker
                # subscribe that other connections to the channel may await must not be.
                await asyncio.shield(adding)
            result: dict[str, Any] = {}
            if sub.delta:
                result["delta"] = True
            # A sub_refresh proxy refreshes server-side: no expires/ttl for the client.
            if req.expire_at and self.node.proxies.sub_refresh_proxy(ns) is None:
                result["expires"] = True
                result["ttl"] = ttl_until(req.expire_at)
            if positioned:
                result.update(await self._position(sub, req, ns))
            if req.data:
                result["data"] = req.data
            if presence:
                metrics.action("add_presence", channel)
                await self.node.presence_manager.add_presence(channel, self.uid, self._info(sub))
        except Disconnect:
            await self._drop_subscription(sub, announce=False)
            raise
        except Exception as e:
            await self._drop_subscription(sub, announce=False)
            if isinstance(e, ClientError) and e.code != ERROR_INTERNAL:
                raise
            # The engine failed (Redis away or not answering): as centrifuge does, the
            # connection goes with 3004, a reconnect code, and the SDK comes back and
            # subscribes again.
            raise Disconnect(
                DISCONNECT_SERVER_ERROR, detail=f"subscribe to {channel} failed: {e!r}"
            ) from None
        except BaseException:
            await self._drop_subscription(sub, announce=False)
            raise
        labels = (self._client_name, chinfo.namespace)
        metrics.child(metrics.SUBSCRIPTIONS_ACCEPTED, *labels).inc()
        sub.m_inflight = metrics.child(metrics.SUBSCRIPTIONS_INFLIGHT, *labels)
        sub.m_inflight.inc()
        return sub, result

    def _activate(self, sub: Subscription) -> None:
        """The subscribe reply is queued: release buffered publications after it."""
        buffered = sub.buffer or []
        sub.buffer = None
        for pub, epoch, frames in buffered:
            self.deliver_publication(sub.channel, pub, epoch, frames)
            if sub.channel not in self._subs:
                return
        if sub.expire_at:
            self._schedule_sub_expiry(sub)
        if sub.join_leave:
            self.node.spawn(self.node.broker.publish_join(sub.channel, self._info(sub)))

    def _info(self, sub: Subscription | None = None) -> ClientInfo:
        return ClientInfo(
            self.user, self.uid, self.conn_info, sub.chan_info if sub is not None else None
        )

    def positions_to_check(self) -> list[Subscription]:
        """Positioned subscriptions that received nothing since the last check.

        A subscription whose offset moved was verified by live delivery, so it
        only needs the stream top once it goes quiet."""
        out = []
        for sub in self._subs.values():
            if not sub.positioned or sub.buffer is not None:
                continue
            if sub.offset == sub.checked_offset:
                out.append(sub)
            sub.checked_offset = sub.offset
        return out

    def check_position(self, sub: Subscription, top: StreamPosition) -> None:
        if self._subs.get(sub.channel) is not sub or self.state is not State.CONNECTED:
            return
        if sub.epoch and top.epoch != sub.epoch or top.offset != sub.offset:
            log.info("client %s lost position in %r", self.uid, sub.channel)
            self._insufficient_state(sub)

    def channels(self) -> list[str]:
        return list(self._subs)

    def presence_entries(self) -> list[tuple[str, ClientInfo]]:
        return [(ch, self._info(s)) for ch, s in self._subs.items() if s.presence]

    async def _drop_subscription(self, sub: Subscription, announce: bool = True) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        if sub.m_inflight is not None:
            sub.m_inflight.dec()
            sub.m_inflight = None
        if sub.expire_handle is not None:
            sub.expire_handle.cancel()
        node = self.node
        node.subscriptions.remove(sub.channel, self)
        try:
            if sub.presence:
                metrics.action("remove_presence", sub.channel)
                await node.presence_manager.remove_presence(sub.channel, self.uid, self.user)
            if sub.map and sub.buffer is None:
                await self._map_cleanup(sub)
            if announce and sub.join_leave and sub.buffer is None:
                await node.broker.publish_leave(sub.channel, self._info(sub))
        except Exception as e:  # engine down: the entry expires by itself
            log.error("cleanup of subscription %s failed: %s", sub.channel, e)

    def _schedule_sub_expiry(self, sub: Subscription, delay: float | None = None) -> None:
        if sub.expire_handle is not None:
            sub.expire_handle.cancel()
        loop = self.node.loop
        if self.node.proxies.sub_refresh_proxy(sub.chinfo.options) is not None:
            # Server-side refresh: ask the backend when the subscription expires.
            if delay is None:
                delay = max(sub.expire_at - time.time(), 0)
            sub.expire_handle = loop.call_later(
                delay, lambda: self.node.spawn(self._proxy_sub_refresh(sub))
            )
            return
        delay = max(sub.expire_at - time.time(), 0) + self.cfg.expired_sub_close_delay
        sub.expire_handle = loop.call_later(delay, self._check_sub_expired, sub)

    async def _proxy_sub_refresh(self, sub: Subscription) -> None:
        sub.expire_handle = None
        proxy = self.node.proxies.sub_refresh_proxy(sub.chinfo.options)
        if self._subs.get(sub.channel) is not sub or proxy is None:
            return
        try:
            res = await proxy.sub_refresh(self.proxy_context(), sub.channel)
        except ProxyUnavailable:
            self._schedule_sub_expiry(sub, REFRESH_RETRY_DELAY)
            return
        if self._subs.get(sub.channel) is not sub:
            return
        # A past expire_at ends it too (0 means no expiry any more), as in Centrifugo.
        if res.expired or 0 < res.expire_at < int(time.time()):
            if sub.server_side:
                await self.close(Disconnect(DISCONNECT_SUB_EXPIRED))
            else:
                await self._server_unsubscribe(sub, UNSUBSCRIBE_EXPIRED)
            return
        if res.info is not None:
            sub.chan_info = res.info
        sub.expire_at = res.expire_at
        if sub.expire_at:
            self._schedule_sub_expiry(sub)

    def _check_sub_expired(self, sub: Subscription) -> None:
        sub.expire_handle = None
        if self._subs.get(sub.channel) is not sub:
            return
        if sub.expire_at and sub.expire_at <= time.time():
            if sub.server_side:
                self.disconnect_soon(Disconnect(DISCONNECT_SUB_EXPIRED))
            else:
                self.node.spawn(self._server_unsubscribe(sub, UNSUBSCRIBE_EXPIRED))
        else:
            self._schedule_sub_expiry(sub)

    async def _server_unsubscribe(self, sub: Subscription, code: int) -> None:
        if self._subs.get(sub.channel) is not sub or self.state is not State.CONNECTED:
            return
        await self._drop_subscription(sub)
        metrics.child(metrics.SERVER_UNSUBSCRIBES, str(code), sub.chinfo.namespace).inc()
        body = {"code": code, "reason": UNSUBSCRIBE_REASONS.get(code, "")}
        push = self.codec.encode_push(sub.channel, "unsubscribe", body)
        self.send(push, "push_unsubscribe", sub.chinfo.namespace)

    async def subscribe_server_side(
        self,
        channel: str,
        *,
        info: bytes | None = None,
        data: bytes | None = None,
        recover_since: StreamPosition | None = None,
        expire_at: int = 0,
        override: SubscribeOverride | None = None,
    ) -> None:
        """Server API `subscribe`: add a subscription and tell the client with a push."""
        if self.state is not State.CONNECTED or channel in self._subs:
            return
        if self._subscribing_to(channel):
            return  # the client's own subscribe to it is in flight
        limit = self.cfg.channel_limit
        if limit > 0 and self._num_channels() >= limit:
            # As centrifuge's Client.Subscribe: the connection holding too many goes.
            self.disconnect_soon(Disconnect(DISCONNECT_CHANNEL_LIMIT))
            return
        chinfo = self.node.resolve(channel, client_side=False)
        req = SubRequest(info=info, data=data, expire_at=expire_at, override=override)
        if recover_since is not None:
            req.recover = True
            req.offset = recover_since.offset
            req.epoch = recover_since.epoch
        try:
            sub, result = await self._subscribe(
                chinfo, req, server_side=True, auto_cache_recover=False
            )
        except Disconnect as d:
            self.disconnect_soon(d)
            return
        pubs = result.pop("publications", None)
        for k in ("was_recovering", "recovered", "expires", "ttl"):
            result.pop(k, None)
        try:
            frames = [(self.codec.encode_push(channel, "subscribe", result), "push_subscribe")]
            frames += [
                (self.codec.encode_push(channel, "pub", p), "push_publication") for p in pubs or ()
            ]
        except EncodeError as e:
            self.disconnect_soon(Disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL, detail=str(e)))
            return
        for frame, frame_type in frames:
            self.send(frame, frame_type, chinfo.namespace)
        self._activate(sub)

    async def unsubscribe_server_side(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is not None:
            await self._server_unsubscribe(sub, UNSUBSCRIBE_SERVER)

    # ------------------------------------------------------------ delivery

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frames: Frames | DeltaFrames
    ) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        if sub.buffer is not None:
            sub.buffer.append((pub, epoch, frames))
            return
        if sub.positioned and pub.offset:
            if not sub.epoch:
                sub.epoch = epoch  # stream did not exist at subscribe time
            if epoch != sub.epoch or pub.offset > sub.offset + 1:
                self._insufficient_state(sub)
                return
            if pub.offset <= sub.offset:
                return  # already delivered (recovered or duplicate)
            sub.offset = pub.offset
        if frames is WITHHELD:
            sub.delta_ready = False  # it never got this one: the next goes in full
            return  # its tags filter refused it: only its offset counts
        if type(frames) is DeltaFrames:
            # The first publication after subscribe goes in full; later ones as a patch
            # when there is one (centrifuge's flagDeltaAllowed). Only a positioned
            # subscription gets patches: its offset check above proves it holds the
            # previous publication, the patch's base (centrifuge sends the others full).
            patch = frames.patch
            # A map subscription's patches are per key, against the value the client holds
            # for that key from its sync or live delivery.
            if sub.delta_ready and patch is not None and (sub.positioned or sub.map):
                frames = patch
            else:
                frames = frames.full
                sub.delta_ready = True
        assert isinstance(frames, Frames)  # a PublicationFrames, or a DeltaFrames' half
        frame = frames.get(self.codec)
        if not frame:
            # Binary payload (b64data) cannot travel over the JSON protocol.
            self.disconnect_soon(Disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL))
            return
        writer = self._writer
        m = sub.m_pub
        if m is None and writer.counting:  # one lookup per subscription, not per publication
            m = sub.m_pub = writer.counter("push_publication", sub.chinfo.namespace)
        writer.enqueue(frame, m)

    def tags_filter(self, channel: str) -> Matcher | None:
        sub = self._subs.get(channel)
        return None if sub is None else sub.tags_filter

    def delta_subscription(self, channel: str) -> bool:
        sub = self._subs.get(channel)
        return sub is not None and sub.delta

    def deliver_join_leave(self, channel: str, frames: Frames) -> None:
        sub = self._subs.get(channel)
        if sub is not None and sub.push_join_leave and sub.buffer is None:
            m = self._writer.counter(frames.frame_type, sub.chinfo.namespace)
            self._writer.enqueue(frames.get(self.codec), m)

    def _insufficient_state(self, sub: Subscription) -> None:
        if sub.server_side:
            self.disconnect_soon(Disconnect(DISCONNECT_INSUFFICIENT_STATE))
        else:
            # Remove synchronously so later publications in this loop turn are not sent.
            del self._subs[sub.channel]
            sub.buffer = []  # suppress the leave announcement of a half-dropped sub
            self.node.spawn(self._finish_insufficient(sub))

    async def _finish_insufficient(self, sub: Subscription) -> None:
        await self._drop_subscription(sub, announce=False)
        metrics.child(
            metrics.SERVER_UNSUBSCRIBES, str(UNSUBSCRIBE_INSUFFICIENT_STATE), sub.chinfo.namespace
        ).inc()
        body = {
            "code": UNSUBSCRIBE_INSUFFICIENT_STATE,
            "reason": UNSUBSCRIBE_REASONS[UNSUBSCRIBE_INSUFFICIENT_STATE],
        }
        push = self.codec.encode_push(sub.channel, "unsubscribe", body)
        self.send(push, "push_unsubscribe", sub.chinfo.namespace)
