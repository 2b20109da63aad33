"""Who may do what in a channel, for one connection: subscribe (a subscription token, the
subscribe proxy, or the namespace's options and user-limited channels), the tags filter
a subscribe may carry, and reading history and presence (research §4.2)."""

from __future__ import annotations

import logging

from app.auth import SubscribeTokenClaims, TokenExpired, TokenInvalid
from app.channels import ChannelInfo
from app.client.state import ClientState, SubRequest
from app.config import ChannelOptions
from app.errors import (
    DISCONNECT_INVALID_TOKEN,
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_PERMISSION_DENIED,
    ERROR_TOKEN_EXPIRED,
    ClientError,
    Disconnect,
)
from app.filter import FilterError, Matcher, compile_filter
from app.proxy import Proxy, ProxyUnavailable

log = logging.getLogger("centrifugo.client")


class Permissions(ClientState):
    """Permission checks: a part of `Client` (app/client/connection.py)."""

    __slots__ = ()

    def _history_permitted(self, ns: ChannelOptions, subscribed: bool) -> bool:
        if self.cfg.insecure:
            return True
        if not self.user and not ns.allow_history_for_anonymous:
            return False
        return ns.allow_history_for_client or (ns.allow_history_for_subscriber and subscribed)

    def _presence_permitted(self, ns: ChannelOptions, subscribed: bool) -> bool:
        if self.cfg.insecure:
            return True
        if not self.user and not ns.allow_presence_for_anonymous:
            return False
        return ns.allow_presence_for_client or (ns.allow_presence_for_subscriber and subscribed)

    async def _authorize_subscribe(self, chinfo: ChannelInfo, req: SubRequest) -> None:
        """Permission order of research §4.2; fills req from a subscription token."""
        if req.token:
            try:
                claims = await self.node.verifier.verify_subscribe_token(req.token)
            except TokenExpired:
                raise ClientError(ERROR_TOKEN_EXPIRED) from None
            except TokenInvalid as e:
                log.info("invalid subscription token: %s", e)
                raise ClientError(ERROR_PERMISSION_DENIED) from None
            self._check_token_owner(claims, chinfo.channel)
            req.grant(claims.expire_at, claims.info, claims.data, claims.override)
            return
        if chinfo.private:
            raise ClientError(ERROR_PERMISSION_DENIED)
        proxy = self.node.proxies.subscribe_proxy(chinfo.options)
        if proxy is not None and chinfo.allowed_users is None:
            await self._proxy_subscribe(proxy, chinfo, req)
            return
        if not self._may_subscribe_without_token(chinfo):
            raise ClientError(ERROR_PERMISSION_DENIED)

    async def _proxy_subscribe(self, proxy: Proxy, chinfo: ChannelInfo, req: SubRequest) -> None:
        """The backend decides; the client's own stream flags are not applied."""
        try:
            res = await proxy.subscribe(
                self.proxy_context(), chinfo.channel, token=req.token, data=req.client_data
            )
        except ProxyUnavailable:
            raise ClientError(ERROR_INTERNAL) from None
        req.grant(res.expire_at, res.info, res.data, res.override)
        req.recoverable = req.positioned = req.join_leave = False

    def _check_token_owner(self, claims: SubscribeTokenClaims, channel: str) -> None:
        """A subscription token is for one channel, user and (optionally) client."""
        if (
            claims.channel != channel
            or claims.user != self.user
            or (claims.client and claims.client != self.uid)
        ):
            raise Disconnect(DISCONNECT_INVALID_TOKEN, detail="subscription token of another")

    def _may_subscribe_without_token(self, chinfo: ChannelInfo) -> bool:
        if chinfo.allowed_users is not None:
            # A user-limited channel admits exactly its listed users.
            return self.user in chinfo.allowed_users
        ns = chinfo.options
        if ns.allow_subscribe_for_client and (self.user or ns.allow_subscribe_for_anonymous):
            return True
        return bool(self.cfg.insecure)

    def _tags_filter(self, chinfo: ChannelInfo, req: SubRequest) -> Matcher:
        """The subscribe's tags filter, compiled; 107 where the namespace does not
        allow one or it is invalid (centrifuge checks both after authorization)."""
        assert req.tf is not None
        if not chinfo.options.allow_tags_filter:
            log.info("tags filter not allowed in %r (client %s)", chinfo.channel, self.uid)
            raise ClientError(ERROR_BAD_REQUEST)
        try:
            return compile_filter(req.tf)
        except FilterError as e:
            log.info("invalid tags filter for %r (client %s): %s", chinfo.channel, self.uid, e)
            raise ClientError(ERROR_BAD_REQUEST) from None
