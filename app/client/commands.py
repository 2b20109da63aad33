"""Channel commands of a connection besides subscribe: unsubscribe, publish, presence,
history, ping, rpc and sub_refresh."""

from __future__ import annotations

import time
from typing import Any

from app.channels import ChannelInfo
from app.client.mapping import PUBLISH_TYPE_MAP, MapFlow
from app.client.polling import PollFlow
from app.client.state import ttl_until
from app.client.tokens import verified
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_SUB_EXPIRED,
    ERROR_BAD_REQUEST,
    ERROR_EXPIRED,
    ERROR_INTERNAL,
    ERROR_METHOD_NOT_FOUND,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    ClientError,
    Disconnect,
)
from app.models import StreamPosition
from app.protocol import DecodeError, get_bool, get_int, get_raw, get_str
from app.proxy import ProxyUnavailable


class ChannelCommands(MapFlow, PollFlow):
    """The channel commands of a connection: the part of `Client`
    (app/client/connection.py) after its subscriptions (`SubscribeFlow`, `MapFlow`)."""

    __slots__ = ()

    # ------------------------------------------------------------ commands

    async def _cmd_unsubscribe(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        await self._subscribe_settled(channel)
        syncs = self._map_syncs
        if syncs is not None and channel in syncs:
            self._drop_map_sync(channel, syncs[channel])  # a map sync given up midway
        sub = self._subs.get(channel)
        if sub is not None:
            await self._drop_subscription(sub)
        return {}

    async def _cmd_publish(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        if len(params) > 2 and get_int(params, "type", signed=True) == PUBLISH_TYPE_MAP:
            return await self._map_publish(params)
        channel = get_str(params, "channel")
        data = get_raw(params, "data")
        if not channel or not data:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        # A JSON client's data is a span of its decoded frame: valid JSON already.
        chinfo = self.node.publication_channel(
            channel, data, known_json=self.codec.name == "json", client_side=True
        )
        ns = chinfo.options
        sub = self._subscribed(channel)
        proxy = self.node.proxies.publish_proxy(ns)
        if proxy is not None:
            # The backend replaces the permission checks and may rewrite the publication.
            try:
                res = await proxy.publish(self.proxy_context(), channel, data)
            except ProxyUnavailable:
                raise ClientError(ERROR_INTERNAL) from None
            await self.node.publish(
                channel,
                res.data if res.data is not None else data,
                info=self._info(sub),
                tags=res.tags,
                skip_history=res.skip_history,
                idempotency_key=res.idempotency_key,
                delta=res.delta,
                version=res.version,
                version_epoch=res.version_epoch,
                client_side=True,
                chinfo=chinfo,
            )
            return {}
        allowed = self.cfg.insecure or (
            (self.user or ns.allow_publish_for_anonymous)
            and (ns.allow_publish_for_client or (ns.allow_publish_for_subscriber and sub))
        )
        if not allowed:
            raise ClientError(ERROR_PERMISSION_DENIED)
        await self.node.publish(
            channel, data, info=self._info(sub), client_side=True, chinfo=chinfo
        )
        return {}

    async def _cmd_presence(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        chinfo = self._channel_for_query(params)
        self._check_presence(chinfo)
        entries = await self.node.presence(chinfo.channel, client_side=True)
        return {"presence": entries}

    async def _cmd_presence_stats(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        chinfo = self._channel_for_query(params)
        self._check_presence(chinfo)
        stats = await self.node.presence_stats(chinfo.channel, client_side=True)
        return {"num_clients": stats.num_clients, "num_users": stats.num_users}

    def _channel_for_query(self, params: dict[str, Any]) -> ChannelInfo:
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        return self.node.resolve(channel, client_side=True)

    def _check_presence(self, chinfo: ChannelInfo) -> None:
        if not chinfo.options.presence:
            raise ClientError(ERROR_NOT_AVAILABLE)
        subscribed = self._subscribed(chinfo.channel) is not None
        if not self._presence_permitted(chinfo.options, subscribed):
            raise ClientError(ERROR_PERMISSION_DENIED)

    async def _cmd_history(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        chinfo = self._channel_for_query(params)
        ns = chinfo.options
        limit = get_int(params, "limit", signed=True)
        reverse = get_bool(params, "reverse")
        since_raw = params.get("since")
        since = None
        if since_raw is not None:
            if not isinstance(since_raw, dict):
                raise DecodeError("since must be an object")
            since = StreamPosition(get_int(since_raw, "offset"), get_str(since_raw, "epoch"))
        if not ns.history_enabled:
            raise ClientError(ERROR_NOT_AVAILABLE)
        if not self._history_permitted(ns, self._subscribed(chinfo.channel) is not None):
            raise ClientError(ERROR_PERMISSION_DENIED)
        if since is not None and reverse and since.offset == 0:
            raise ClientError(ERROR_BAD_REQUEST)
        max_limit = self.cfg.history_max_publication_limit
        if max_limit > 0 and (limit < 0 or limit > max_limit):
            limit = max_limit
        hist = await self.node.history(
            chinfo.channel, limit=limit, since=since, reverse=reverse, client_side=True
        )
        return {
            "publications": hist.publications,
            "epoch": hist.position.epoch,
            "offset": hist.position.offset,
        }

    async def _cmd_ping(self, cmd_id: int, params: dict[str, Any]) -> None:
        raise ClientError(ERROR_NOT_AVAILABLE)

    async def _cmd_rpc(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        method = get_str(params, "method")
        data = get_raw(params, "data")
        ping = self.node.config.rpc.ping
        if ping.enabled and method == ping.method:
            return {}  # the built-in rpc.ping extension answers with an empty result
        proxies = self.node.proxies
        if not proxies.has_rpc_proxies:
            raise ClientError(ERROR_METHOD_NOT_FOUND if ping.enabled else ERROR_NOT_AVAILABLE)
        proxy = proxies.rpc_proxy(method)  # 104 unknown rpc namespace, 108 no proxy there
        try:
            res = await proxy.rpc(self.proxy_context(), method, data or None)
        except ProxyUnavailable:
            raise ClientError(ERROR_INTERNAL) from None
        return {"data": res.data} if res.data else {}

    async def _cmd_sub_refresh(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any] | None:
        channel = get_str(params, "channel")
        token = get_str(params, "token")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        sub = self._subscribed(channel)
        if sub is None:  # as centrifuge: a subscribe still in flight is not subscribed yet
            raise ClientError(ERROR_PERMISSION_DENIED)
        if self._poll_sub_refresh(sub, cmd_id, params):
            return None  # shared poll track/untrack, answered by app/client/polling.py
        if self.node.proxies.sub_refresh_proxy(sub.chinfo.options) is not None:
            raise Disconnect(DISCONNECT_BAD_REQUEST)  # refreshed server-side by the proxy
        if not token:
            raise ClientError(ERROR_BAD_REQUEST)
        claims = await verified(
            self.node.verifier.verify_subscribe_token(token),
            lambda: Disconnect(DISCONNECT_SUB_EXPIRED),
            "subscription refresh token",
        )
        self._check_token_owner(claims, channel)
        if claims.expire_at and claims.expire_at <= time.time():
            raise ClientError(ERROR_EXPIRED)
        sub.expire_at = claims.expire_at
        if claims.info is not None:
            sub.chan_info = claims.info
        result: dict[str, Any] = {}
        if sub.expire_at:
            self._schedule_sub_expiry(sub)
            result["expires"] = True
            result["ttl"] = ttl_until(sub.expire_at)
        elif sub.expire_handle is not None:
            sub.expire_handle.cancel()
            sub.expire_handle = None
        return result
