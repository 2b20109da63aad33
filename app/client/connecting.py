"""Connecting a connection and keeping it authenticated: the connect command (or a
unidirectional transport's ConnectRequest) in named steps, the connection's expiry and
its refresh, by the client or the server (refresh proxy, server API).

A connect runs, in this order (as Centrifugo's connectCmd):
1. credentials: connect proxy, connection token, trusted user header or anonymous
   (`_connect_credentials`) give the user and a `ConnectGrant`;
2. limits: client.user_connection_limit;
3. the personal channel, after closing the user's other connections when it is single;
4. the channels the client names in `subs`, with their recovery positions;
5. client.channel_limit over all of them, and each channel resolved before any state
   changes;
6. connected: the reply's fields, then the server-side subscriptions (undone together
   if one fails), then the reply, pings and expiry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app import VERSION_STRING, metrics
from app.auth import SubscribeOptionsClaim
from app.channels import ChannelInfo
from app.client.commands import ChannelCommands
from app.client.pings import PingPong
from app.client.state import State, SubRequest, Subscription, ttl_until
from app.client.tokens import verified
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CHANNEL_LIMIT,
    DISCONNECT_CONNECTION_LIMIT,
    DISCONNECT_EXPIRED,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_INSUFFICIENT_STATE,
    DISCONNECT_INVALID_TOKEN,
    DISCONNECT_PERMISSION_DENIED,
    DISCONNECT_SERVER_ERROR,
    ERROR_EXPIRED,
    ERROR_INTERNAL,
    ERROR_TOKEN_EXPIRED,
    ClientError,
    Disconnect,
)
from app.node import Node
from app.protocol import (
    DecodeError,
    EncodeError,
    get_bool,
    get_dict,
    get_int,
    get_raw,
    get_str,
)
from app.proxy import REFRESH_RETRY_DELAY, Proxy, ProxyUnavailable

log = logging.getLogger("centrifugo.client")


@dataclass(slots=True)
class ConnectGrant:
    """What a connect's credentials grant besides the user: the server-side
    subscriptions, ConnectResult.data, and whether the channels the client names in
    `subs` may be added. Those are honoured for token and anonymous connections; with a
    connect proxy the backend decides (as in Centrifugo)."""

    subs: dict[str, SubRequest] = field(default_factory=dict)
    data: bytes | None = None
    client_channels: bool = True


def server_side_subs(
    channels: Iterable[str], subs: Mapping[str, SubscribeOptionsClaim]
) -> dict[str, SubRequest]:
    """The subscriptions a token's or connect proxy's `channels` and `subs` grant."""
    requests = {ch: SubRequest() for ch in channels}
    for ch, opts in subs.items():
        requests[ch] = SubRequest(info=opts.info, data=opts.data, override=opts.override)
    return requests


class ConnectFlow(ChannelCommands, PingPong):
    """Connect, expiry and refresh: the part of `Client` (app/client/connection.py)
    after its commands and pings."""

    __slots__ = ()

    async def _cmd_connect(self, cmd_id: int, params: dict[str, Any]) -> None:
        token = get_str(params, "token")
        # name/version label metrics and, with data, go to the connect proxy.
        name = get_str(params, "name")
        version = get_str(params, "version")
        data = get_raw(params, "data")
        subs_req = get_dict(params, "subs")
        headers = get_dict(params, "headers")
        if headers:
            self._emulated_headers = {str(k).lower(): str(v) for k, v in headers.items()}
        grant = await self._connect_credentials(token, data, name, version, subs_req)
        self._check_user_connection_limit()
        await self._add_personal_channel(grant)
        self._add_client_channels(grant, subs_req)
        resolved = self._resolve_connect_channels(grant)
        self._become_connected()
        result = self._connect_result(grant.data)
        new_subs = await self._subscribe_at_connect(resolved, result)
        self._connect_reply(cmd_id, result, name, version, new_subs)

    # ------------------------------------------------------------ credentials

    async def _connect_credentials(
        self,
        token: str,
        data: bytes | None,
        name: str,
        version: str,
        subs_req: dict[str, Any],
    ) -> ConnectGrant:
        """Who connects: the connect proxy (asked only without a token), the connection
        token, a trusted gateway's user header, or an anonymous connection where allowed;
        sets user, info, meta and expiry."""
        cfg = self.cfg
        client_channels = True
        connect_proxy = self.node.proxies.connect_proxy() if not token else None
        if connect_proxy is not None:
            grant = await self._connect_by_proxy(connect_proxy, data, name, version, subs_req)
            if grant is not None:
                return grant
            client_channels = False
        elif token:
            return await self._connect_by_token(token)
        if cfg.user_id_http_header and self.headers.get(cfg.user_id_http_header):
            # A trusted gateway in front of us has authenticated the user.
            self.user = self.headers[cfg.user_id_http_header]
            return ConnectGrant(client_channels=client_channels)
        if cfg.insecure or cfg.allow_anonymous_connect_without_token:
            self.user = ""
            return ConnectGrant()
        raise Disconnect(DISCONNECT_BAD_REQUEST, detail="connect without credentials")

    async def _connect_by_proxy(
        self,
        proxy: Proxy,
        data: bytes | None,
        name: str,
        version: str,
        subs_req: dict[str, Any],
    ) -> ConnectGrant | None:
        """The connect proxy's grant; None when its reply has no result (no credentials:
        the connection may still be anonymous)."""
        try:
            res = await proxy.connect(
                self.proxy_context(),
                data=data or None,
                name=name,
                version=version,
                channels=list(subs_req),
            )
        except ProxyUnavailable:
            raise ClientError(ERROR_INTERNAL) from None
        if res is None:
            return None
        self.user = res.user
        self.conn_info = res.info
        self.meta = res.meta
        self._accept_expiry(res.expire_at)
        return ConnectGrant(server_side_subs(res.channels, res.subs), res.data, False)

    async def _connect_by_token(self, token: str) -> ConnectGrant:
        claims = await verified(
            self.node.verifier.verify_connect_token(token),
            lambda: ClientError(ERROR_TOKEN_EXPIRED),
            "connection token",
        )
        if claims.user == "" and self.cfg.disallow_anonymous_connection_tokens:
            raise Disconnect(DISCONNECT_PERMISSION_DENIED)
        self.user = claims.user
        self.conn_info = claims.info
        self.meta = claims.meta
        self._accept_expiry(claims.expire_at)
        self._token_channels = tuple(claims.channels) + tuple(claims.subs)
        return ConnectGrant(server_side_subs(claims.channels, claims.subs))

    def _accept_expiry(self, expire_at: int) -> None:
        """The expiry a token or the connect proxy set (ignored with client.insecure);
        one already past is error 110."""
        if expire_at > 0 and not self.cfg.insecure:
            if expire_at < int(time.time()):
                raise ClientError(ERROR_EXPIRED)
            self.expire_at = expire_at

    # ------------------------------------------------------------ limits, channels

    def _check_user_connection_limit(self) -> None:
        limit = self.cfg.user_connection_limit
        if limit > 0 and self.user and len(self.node.hub.user_connections(self.user)) >= limit:
            raise Disconnect(DISCONNECT_CONNECTION_LIMIT)

    async def _add_personal_channel(self, grant: ConnectGrant) -> None:
        personal = self.cfg.subscribe_to_user_personal_channel
        if personal.enabled and self.user:
            channel = self.node.resolver.personal_channel(self.user)
            if personal.single_connection:
                await self._single_connection(self.node, channel)
            grant.subs.setdefault(channel, SubRequest())

    def _add_client_channels(self, grant: ConnectGrant, subs_req: dict[str, Any]) -> None:
        """The connect request names channels with their recovery positions: those
        granted server-side above, and public ones the client could join itself."""
        for ch, raw in subs_req.items():
            if not isinstance(raw, dict):
                raise DecodeError("subs entries must be objects")
            r = grant.subs.get(ch)
            if r is None:
                if not grant.client_channels:
                    continue
                try:
                    chinfo = self.node.resolve(ch, client_side=True)
                except ClientError:
                    raise Disconnect(DISCONNECT_BAD_REQUEST) from None
                if chinfo.private or not self._may_subscribe_without_token(chinfo):
                    continue
                r = grant.subs[ch] = SubRequest()
            r.recover = get_bool(raw, "recover")
            r.offset = get_int(raw, "offset")
            r.epoch = get_str(raw, "epoch")

    def _resolve_connect_channels(
        self, grant: ConnectGrant
    ) -> list[tuple[ChannelInfo, SubRequest]]:
        """Every server-side channel resolved, before any state changes.

        client.channel_limit bounds the subscriptions a connect makes too (token
        `channels`/`subs`, proxy, personal channel, the client's `subs`), as in
        centrifuge: one over the limit and the connection is refused with 3505."""
        channel_limit = self.cfg.channel_limit
        if channel_limit > 0 and len(grant.subs) > channel_limit:
            raise Disconnect(
                DISCONNECT_CHANNEL_LIMIT,
                detail=f"{len(grant.subs)} subscriptions at connect, limit {channel_limit}",
            )
        return [(self.node.resolve(ch, client_side=False), req) for ch, req in grant.subs.items()]

    # ------------------------------------------------------------ connected

    def _become_connected(self) -> None:
        if self._stale_handle is not None:
            self._stale_handle.cancel()
            self._stale_handle = None
        self.state = State.CONNECTED
        self.node.hub.add(self)
        metrics.action("add_client")

    def _connect_result(self, data: bytes | None) -> dict[str, Any]:
        """The ConnectResult's fields but `subs`."""
        cfg = self.cfg
        result: dict[str, Any] = {"client": self.uid, "version": VERSION_STRING}
        # With a refresh proxy the server refreshes: the client must not (Centrifugo's
        # ClientSideRefresh = !refreshProxyEnabled hides expires/ttl).
        if self.expire_at and self.node.proxies.refresh_proxy() is None:
            result["expires"] = True
            result["ttl"] = ttl_until(self.expire_at)
        if self._pings():
            result["ping"] = int(cfg.ping_interval)
            if self._pong_expected():
                result["pong"] = True
        if self.session:
            result["session"] = self.session
            if not self.transport.unidirectional:
                result["node"] = self.node.id  # emulation requests are routed by it
        if cfg.connect_include_server_time:
            result["time"] = int(time.time() * 1000)
        if data:
            result["data"] = data
        return result

    async def _subscribe_at_connect(
        self, resolved: list[tuple[ChannelInfo, SubRequest]], result: dict[str, Any]
    ) -> list[Subscription]:
        """The server-side subscriptions, their results in `result["subs"]`; if one
        fails, every one made is dropped and the connection is connecting again."""
        new_subs: list[Subscription] = []
        if not resolved:
            return new_subs
        subs_result: dict[str, Any] = {}
        try:
            for chinfo, req in resolved:
                sub, res = await self._subscribe(chinfo, req, server_side=True)
                new_subs.append(sub)
                subs_result[chinfo.channel] = res
        except BaseException:
            for sub in new_subs:
                await self._drop_subscription(sub, announce=False)
            self.node.hub.remove(self)
            self.state = State.CONNECTING
            raise
        result["subs"] = subs_result
        return new_subs

    def _connect_reply(
        self,
        cmd_id: int,
        result: dict[str, Any],
        name: str,
        version: str,
        new_subs: list[Subscription],
    ) -> None:
        """Answer (a `connect` push on unidirectional transports), then count the
        connection, release the subscriptions' buffers and start pings and expiry."""
        if self.transport.unidirectional:
            self.send(self.codec.encode_push("", "connect", result), "push_connect")
        else:
            self.send(self.codec.encode_reply(cmd_id, "connect", result), "connect")
        labels = (self.transport.name, self.codec.name, name, version)
        metrics.child(metrics.CONNECTIONS_ACCEPTED, *labels).inc()
        self._m_inflight = metrics.child(metrics.CONNECTIONS_INFLIGHT, *labels)
        self._m_inflight.inc()
        self._client_name = name
        for sub in new_subs:
            self._activate(sub)
        self._schedule_ping(first=True)
        self._schedule_expiry()

    async def _single_connection(self, node: Node, personal_channel: str) -> None:
        """`subscribe_to_user_personal_channel.single_connection`, as Centrifugo does it: a
        user already present in their personal channel (on any worker or node) has those
        connections closed with 3504 before this one is accepted."""
        try:
            stats = await node.presence_stats(personal_channel)
            if stats.num_clients >= 1:
                # Not waiting for the old connections' closing handshakes (a peer that does
                # not read holds one up to 5 s): Centrifugo's Disconnect is asynchronous too.
                await node.disconnect_user(
                    self.user,
                    Disconnect(DISCONNECT_CONNECTION_LIMIT),
                    whitelist=[self.uid],
                    wait_local=False,
                )
        except Exception as e:  # the engine failed: a reconnect code, as in Centrifugo
            raise Disconnect(
                DISCONNECT_SERVER_ERROR, detail=f"single connection check failed: {e!r}"
            ) from None

    async def connect_request(self, request: dict[str, Any]) -> None:
        """Run a ConnectRequest of a unidirectional transport, answering with the
        `connect` push. Raises ClientError / Disconnect / DecodeError as they are, for
        transports that map them themselves (connect_code_to_http_response)."""
        await self._cmd_connect(0, request)

    async def connect_unidirectional(self, request: dict[str, Any]) -> bool:
        """Unidirectional transports: run a ConnectRequest (JSON-shaped dict) and answer
        with a `connect` push. Connect errors become disconnects (research §1.11).
        Returns False when the connection was closed instead."""
        try:
            await self.connect_request(request)
        except ClientError as e:
            await self.close(Disconnect(*self._uni_disconnect_for(e.code)))
            return False
        except Disconnect as d:
            await self.close(d)
            return False
        except DecodeError:
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST))
            return False
        except EncodeError as e:
            await self.close(Disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL, detail=str(e)))
            return False
        return self.state is State.CONNECTED

    def _uni_disconnect_for(self, code: int) -> tuple[int, str]:
        transforms = self.cfg.connect_code_to_unidirectional_disconnect
        if transforms.enabled:
            for t in transforms.transforms:
                if t.get("code") == code:
                    to = t.get("to") or {}
                    return int(to.get("code", 3004)), str(to.get("reason", ""))
        default = {109: 3005, 110: 3005, 111: 3013, 103: 3507}.get(code, 3004)
        return default, Disconnect(default).reason

    # ------------------------------------------------------------ expiry

    def _schedule_expiry(self, delay: float | None = None) -> None:
        if self._expire_handle is not None:
            self._expire_handle.cancel()
            self._expire_handle = None
        if self.expire_at <= 0:
            return
        loop = self.node.loop
        if self.node.proxies.refresh_proxy() is not None:
            # Server-side refresh: ask the backend when the connection expires.
            if delay is None:
                delay = max(self.expire_at - time.time(), 0)
            self._expire_handle = loop.call_later(
                delay, lambda: self.node.spawn(self._proxy_refresh())
            )
            return
        delay = max(self.expire_at - time.time(), 0) + self.cfg.expired_close_delay
        self._expire_handle = loop.call_later(delay, self._check_expired)

    async def _proxy_refresh(self) -> None:
        self._expire_handle = None
        proxy = self.node.proxies.refresh_proxy()
        if self.state is not State.CONNECTED or proxy is None:
            return
        try:
            res = await proxy.refresh(self.proxy_context())
        except ProxyUnavailable:
            # Keep the connection; ask again later.
            self._schedule_expiry(REFRESH_RETRY_DELAY)
            return
        # An expire_at that is not in the future (0 included) leaves the connection
        # expired, as in Centrifugo; rescheduling it would call the proxy in a loop.
        if res.expired or res.expire_at <= int(time.time()):
            await self.close(Disconnect(DISCONNECT_EXPIRED))
            return
        if res.info is not None:
            self.conn_info = res.info
        if res.meta is not None:
            self.meta = res.meta
        self.expire_at = res.expire_at
        self._schedule_expiry()

    def _check_expired(self) -> None:
        self._expire_handle = None
        if self.expire_at and self.expire_at <= time.time():
            self.disconnect_soon(Disconnect(DISCONNECT_EXPIRED))
        else:
            self._schedule_expiry()

    # -------------------------------------------------------------- refresh

    async def _cmd_refresh(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        token = get_str(params, "token")
        if not token or self.node.proxies.refresh_proxy() is not None:
            # With a refresh proxy, refreshing is the server's job.
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        claims = await verified(
            self.node.verifier.verify_connect_token(token),
            lambda: Disconnect(DISCONNECT_EXPIRED),
            "refresh token",
        )
        if claims.user != self.user:
            raise Disconnect(DISCONNECT_INVALID_TOKEN)
        if set(claims.channels) | set(claims.subs) != set(self._token_channels):
            # Server-side subscriptions changed: reconnect to apply them.
            raise Disconnect(DISCONNECT_INSUFFICIENT_STATE)
        if claims.expire_at and claims.expire_at < int(time.time()):
            raise ClientError(ERROR_EXPIRED)
        if claims.info is not None:
            self.conn_info = claims.info
        self.expire_at = 0 if self.cfg.insecure else claims.expire_at
        self._schedule_expiry()
        result: dict[str, Any] = {"client": self.uid, "version": VERSION_STRING}
        if self.expire_at:
            result["expires"] = True
            result["ttl"] = ttl_until(self.expire_at)
        return result

    async def refresh_server_side(
        self, *, expired: bool = False, expire_at: int = 0, info: bytes | None = None
    ) -> None:
        """Server API `refresh`: extend, expire or update info of this connection,
        then tell the client with a `refresh` push (as Centrifugo does)."""
        ttl = expire_at - int(time.time())
        if expired or (expire_at > 0 and ttl <= 0):
            await self.close(Disconnect(DISCONNECT_EXPIRED))
            return
        body: dict[str, Any] = {}
        if expire_at > 0:
            if info:
                self.conn_info = info
            body = {"expires": True, "ttl": ttl_until(expire_at)}
        self.expire_at = expire_at
        self._schedule_expiry()
        self.send(self.codec.encode_push("", "refresh", body), "push_refresh")
