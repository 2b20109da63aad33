"""Which proxy serves which event, and the typed calls.

A ProxyManager is built once per node from the Config. It resolves, like Centrifugo's
`buildProxyMap`: `client.proxy.connect|refresh` (when `enabled`), the channel proxies of
each namespace (`*_proxy_enabled` + `*_proxy_name`, where "default" or "" means the
`channel.proxy.<kind>` section and any other name a `proxies[]` entry; the map proxies are
`map.publish_proxy_*` / `map.remove_proxy_*` with `channel.proxy.map_publish|map_remove`),
the shared poll refresh proxies and the RPC proxies of `rpc.without_namespace` /
`rpc.namespaces` (same naming, `rpc.proxy` is "default").
A named proxy used by several kinds or namespaces is one Proxy object.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

from app import metrics
from app.config import ChannelOptions, Config, ProxyConfig, RpcOptions
from app.errors import ERROR_METHOD_NOT_FOUND, ERROR_NOT_AVAILABLE, ClientError

from . import maps as mp
from . import models as m
from .grpc import GRPCCaller
from .http import HTTPCaller, new_session
from .maps import MapPublishProxyResult, MapRemoveProxyResult
from .models import (
    ConnectProxyResult,
    ProxyContext,
    ProxyUnavailable,
    PublishProxyResult,
    RefreshProxyResult,
    RPCProxyResult,
    SharedPollRefreshResult,
    SubRefreshProxyResult,
    SubscribeProxyResult,
)

__all__ = ["Proxy", "ProxyManager", "DEFAULT_PROXY_NAME", "REFRESH_RETRY_DELAY"]

log = logging.getLogger("centrifugo.proxy")
_R = TypeVar("_R")

DEFAULT_PROXY_NAME = "default"

# Seconds a connection or subscription lives on after its refresh proxy failed
# (Centrifugo retries a minute later rather than disconnecting).
REFRESH_RETRY_DELAY_ENV = "CFPY_PROXY_REFRESH_RETRY_DELAY"


def _refresh_retry_delay() -> float:
    # Not a Centrifugo option: the environment variable only exists so that end-to-end
    # tests can watch a retry happen without waiting a minute.
    raw = os.environ.get(REFRESH_RETRY_DELAY_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return 60.0
    return value if value > 0 else 60.0


REFRESH_RETRY_DELAY = _refresh_retry_delay()


class _CallMetrics:
    """The labelled metric children of one (proxy, kind) pair."""

    __slots__ = ("summary", "histogram", "errors", "inflight")

    def __init__(self, protocol: str, kind: str, name: str) -> None:
        labels = (protocol, kind, name)
        self.summary = metrics.child(metrics.PROXY_DURATION, *labels)
        self.histogram = metrics.child(metrics.PROXY_DURATION_HISTOGRAM, *labels)
        self.errors = metrics.child(metrics.PROXY_ERRORS, *labels)
        self.inflight = metrics.child(metrics.PROXY_INFLIGHT, *labels)


def _is_http(endpoint: str) -> bool:
    return endpoint.startswith(("http://", "https://"))


class Proxy:
    """One configured proxy endpoint; every kind of call can go through it.

    Each call raises `ClientError` / `Disconnect` when the backend answers with `error` /
    `disconnect` (connect, subscribe, publish, rpc), and `ProxyUnavailable` when the
    backend cannot be asked or its answer is unusable.
    """

    def __init__(
        self, name: str, cfg: ProxyConfig, session: Callable[[], aiohttp.ClientSession]
    ) -> None:
        self.name = name
        self.config = cfg
        self.protocol = "http" if _is_http(cfg.endpoint) else "grpc"
        self.binary = cfg.binary_encoding
        self.include_meta = cfg.include_connection_meta
        self._caller: HTTPCaller | GRPCCaller
        if self.protocol == "http":
            self._caller = HTTPCaller(name, cfg, session)
        else:
            self._caller = GRPCCaller(name, cfg)
        self._metrics: dict[str, _CallMetrics] = {}

    def __repr__(self) -> str:
        return f"Proxy({self.name!r}, {self.protocol}, {self.config.endpoint!r})"

    async def _call(self, kind: str, fields: Mapping[str, Any], ctx: ProxyContext) -> Any:
        m = self._metrics.get(kind)
        if m is None:
            m = self._metrics[kind] = _CallMetrics(self.protocol, kind, self.name)
        m.inflight.inc()
        started = time.monotonic()
        try:
            return await self._caller.call(kind, fields, ctx)
        except ProxyUnavailable:
            # Like Centrifugo: only calls that got no usable answer count as errors;
            # error/disconnect replies are answers.
            m.errors.inc()
            raise
        finally:
            elapsed = time.monotonic() - started
            m.summary.observe(elapsed)
            m.histogram.observe(elapsed)
            m.inflight.dec()

    @property
    def _from_json(self) -> bool:
        return self.protocol == "http"

    def _parsed(self, kind: str, parse: Callable[..., _R], reply: Any) -> _R:
        """`parse(reply)`; a reply it refuses (a wrong type, a number past its field's
        type, bad base64) failed the call as one that got no answer: one error line and
        the error metric, as the transport does for an undecodable body."""
        try:
            return parse(reply, from_json=self._from_json)
        except ProxyUnavailable as e:
            log.error("error proxying %s to %s: %s", kind, self.name, e)
            self._metrics[kind].errors.inc()
            raise

    async def connect(
        self,
        ctx: ProxyContext,
        *,
        data: bytes | None = None,
        name: str = "",
        version: str = "",
        channels: Sequence[str] = (),
    ) -> ConnectProxyResult | None:
        """None when the reply has no `result`: the connection then has no credentials
        (Centrifugo falls back to anonymous when allowed, else rejects it)."""
        fields = m.connect_request(
            ctx, binary=self.binary, data=data, name=name, version=version, channels=channels
        )
        reply = await self._call("connect", fields, ctx)
        return self._parsed("connect", m.parse_connect, reply)

    async def refresh(self, ctx: ProxyContext) -> RefreshProxyResult:
        """`expired=True` also for replies without a result (error/disconnect included)."""
        fields = m.refresh_request(ctx, binary=self.binary, include_meta=self.include_meta)
        reply = await self._call("refresh", fields, ctx)
        return self._parsed("refresh", m.parse_refresh, reply)

    async def subscribe(
        self, ctx: ProxyContext, channel: str, *, token: str = "", data: bytes | None = None
    ) -> SubscribeProxyResult:
        fields = m.subscribe_request(
            ctx, channel, binary=self.binary, include_meta=self.include_meta, token=token, data=data
        )
        reply = await self._call("subscribe", fields, ctx)
        return self._parsed("subscribe", m.parse_subscribe, reply)

    async def publish(
        self, ctx: ProxyContext, channel: str, data: bytes | None
    ) -> PublishProxyResult:
        fields = m.publish_request(
            ctx, channel, data, binary=self.binary, include_meta=self.include_meta
        )
        reply = await self._call("publish", fields, ctx)
        return self._parsed("publish", m.parse_publish, reply)

    async def rpc(self, ctx: ProxyContext, method: str, data: bytes | None) -> RPCProxyResult:
        fields = m.rpc_request(
            ctx, method, data, binary=self.binary, include_meta=self.include_meta
        )
        reply = await self._call("rpc", fields, ctx)
        return self._parsed("rpc", m.parse_rpc, reply)

    async def sub_refresh(self, ctx: ProxyContext, channel: str) -> SubRefreshProxyResult:
        """`expired=True` also for replies without a result (error/disconnect included)."""
        fields = m.sub_refresh_request(
            ctx, channel, binary=self.binary, include_meta=self.include_meta
        )
        reply = await self._call("sub_refresh", fields, ctx)
        return self._parsed("sub_refresh", m.parse_sub_refresh, reply)

    async def map_publish(
        self, ctx: ProxyContext, channel: str, key: str, data: bytes | None
    ) -> MapPublishProxyResult:
        """A client's map publish; `key` is the client's (may be empty)."""
        fields = mp.map_publish_request(
            ctx, channel, key, data, binary=self.binary, include_meta=self.include_meta
        )
        reply = await self._call("map_publish", fields, ctx)
        return self._parsed("map_publish", mp.parse_map_publish, reply)

    async def map_remove(self, ctx: ProxyContext, channel: str, key: str) -> MapRemoveProxyResult:
        """A client's map remove; `key` is the client's (may be empty)."""
        fields = mp.map_remove_request(
            ctx, channel, key, binary=self.binary, include_meta=self.include_meta
        )
        reply = await self._call("map_remove", fields, ctx)
        return self._parsed("map_remove", mp.parse_map_remove, reply)

    async def shared_poll_refresh(
        self, channel: str, items: Sequence[tuple[str, int]]
    ) -> SharedPollRefreshResult:
        """One refresh of a shared poll channel's (key, version) items. Not a connection's
        call: no client fields, only the proxy's static headers or metadata go along."""
        fields = m.shared_poll_refresh_request(channel, items)
        reply = await self._call("shared_poll_refresh", fields, _POLL_CONTEXT)
        return self._parsed("shared_poll_refresh", m.parse_shared_poll_refresh, reply)

    async def close(self) -> None:
        await self._caller.close()


# A shared poll refresh serves every subscriber of a channel, so it carries no connection.
_POLL_CONTEXT = ProxyContext(client="", transport="")


class ProxyManager:
    """All proxies of one node; see the package docstring for how callers use it."""

    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self._session: aiohttp.ClientSession | None = None
        self._named: dict[str, ProxyConfig] = {p.name: p for p in cfg.proxies}
        # (section, name) -> Proxy; section is the kind for "default", "" for named ones.
        self._proxies: dict[tuple[str, str], Proxy] = {}
        self._rpc_boundary = cfg.rpc.namespace_boundary
        self._rpc_namespaces: dict[str, RpcOptions] = {ns.name: ns for ns in cfg.rpc.namespaces}

        client_proxy = cfg.client.proxy
        self._connect = (
            self._get("connect", DEFAULT_PROXY_NAME, client_proxy.connect)
            if client_proxy.connect.enabled
            else None
        )
        self._refresh = (
            self._get("refresh", DEFAULT_PROXY_NAME, client_proxy.refresh)
            if client_proxy.refresh.enabled
            else None
        )
        # Build every enabled proxy up front so a bad setting fails at start-up.
        for opts in (cfg.channel.without_namespace, *cfg.channel.namespaces):
            for kind in ("subscribe", "publish", "sub_refresh"):
                self._channel_proxy(kind, opts)
            self.map_publish_proxy(opts)
            self.map_remove_proxy(opts)
            if opts.subscription_type == "shared_poll":
                self.shared_poll_proxy(opts)
        self.has_rpc_proxies = False
        for rpc_opts in (cfg.rpc.without_namespace, *cfg.rpc.namespaces):
            if rpc_opts.proxy_enabled:
                self._rpc_options_proxy(rpc_opts)
                self.has_rpc_proxies = True

    # ------------------------------------------------------------------ resolution

    def _http_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    def _get(self, section: str, name: str, default_cfg: ProxyConfig | None) -> Proxy:
        if not name or name == DEFAULT_PROXY_NAME:
            key = (section, DEFAULT_PROXY_NAME)
            cfg = default_cfg
            label = DEFAULT_PROXY_NAME
        else:
            key = ("", name)
            cfg = self._named.get(name)
            label = name
        proxy = self._proxies.get(key)
        if proxy is not None:
            return proxy
        if cfg is None:
            raise ValueError(f"{section} proxy not found: {name}")
        if not cfg.endpoint:
            raise ValueError(f"{section} proxy {label!r}: endpoint not set")
        proxy = self._proxies[key] = Proxy(label, cfg, self._http_session)
        log.info("%s proxy %r enabled: %s", section, label, proxy.protocol)
        return proxy

    def _channel_proxy(self, kind: str, opts: ChannelOptions) -> Proxy | None:
        if not getattr(opts, f"{kind}_proxy_enabled"):
            return None
        name = getattr(opts, f"{kind}_proxy_name")
        return self._get(kind, name, getattr(self.config.channel.proxy, kind))

    def _rpc_options_proxy(self, opts: RpcOptions) -> Proxy:
        return self._get("rpc", opts.proxy_name, self.config.rpc.proxy)

    # ------------------------------------------------------------------ public lookups

    def connect_proxy(self) -> Proxy | None:
        """The connect proxy (`client.proxy.connect.enabled`); used only without a token."""
        return self._connect

    def refresh_proxy(self) -> Proxy | None:
        """The refresh proxy (`client.proxy.refresh.enabled`): server-side refresh."""
        return self._refresh

    def subscribe_proxy(self, opts: ChannelOptions) -> Proxy | None:
        """The subscribe proxy of a namespace, None when `subscribe_proxy_enabled` is off."""
        return self._channel_proxy("subscribe", opts)

    def publish_proxy(self, opts: ChannelOptions) -> Proxy | None:
        return self._channel_proxy("publish", opts)

    def sub_refresh_proxy(self, opts: ChannelOptions) -> Proxy | None:
        return self._channel_proxy("sub_refresh", opts)

    def map_publish_proxy(self, opts: ChannelOptions) -> Proxy | None:
        """The map publish proxy of a namespace, None when `map.publish_proxy_enabled` is
        off (Centrifugo's OnMapPublish then applies the namespace's permissions)."""
        m_opts = opts.map
        if not m_opts.publish_proxy_enabled:
            return None
        return self._get(
            "map_publish", m_opts.publish_proxy_name, self.config.channel.proxy.map_publish
        )

    def map_remove_proxy(self, opts: ChannelOptions) -> Proxy | None:
        """The map remove proxy of a namespace, None when `map.remove_proxy_enabled` is off."""
        m_opts = opts.map
        if not m_opts.remove_proxy_enabled:
            return None
        return self._get(
            "map_remove", m_opts.remove_proxy_name, self.config.channel.proxy.map_remove
        )

    def shared_poll_proxy(self, opts: ChannelOptions) -> Proxy:
        """The refresh proxy of a shared poll namespace: `shared_poll.proxy_name`, where
        "" or "default" is `channel.proxy.shared_poll_refresh` (Centrifugo's buildProxyMap;
        a missing one fails the start)."""
        return self._get(
            "shared_poll_refresh",
            opts.shared_poll.proxy_name,
            self.config.channel.proxy.shared_poll_refresh,
        )

    def rpc_options(self, method: str) -> RpcOptions | None:
        """RPC namespace options of a method (`ns` + `rpc.namespace_boundary` + rest);
        None for an unknown namespace."""
        boundary = self._rpc_boundary
        if boundary and boundary in method:
            return self._rpc_namespaces.get(method.split(boundary, 1)[0])
        return self.config.rpc.without_namespace

    def rpc_proxy(self, method: str) -> Proxy:
        """The proxy for an RPC method, as Centrifugo's RPC handler picks it.

        Raises ClientError 104 (method not found) for an unknown RPC namespace and 108
        (not available) when the namespace has no proxy enabled.
        """
        opts = self.rpc_options(method)
        if opts is None:
            raise ClientError(ERROR_METHOD_NOT_FOUND)
        if not opts.proxy_enabled:
            raise ClientError(ERROR_NOT_AVAILABLE)
        return self._rpc_options_proxy(opts)

    @property
    def proxies(self) -> list[Proxy]:
        return list(self._proxies.values())

    def forwarded_headers(self) -> frozenset[str]:
        """Lower-cased names of the connection request headers a proxy forwards (their
        `http_headers`): all a connection needs to keep of its request for its proxies."""
        configs = [p.config for p in self._proxies.values()] + list(self._named.values())
        return frozenset(h.lower() for c in configs for h in c.http_headers)

    async def close(self) -> None:
        for proxy in self._proxies.values():
            await proxy.close()
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
