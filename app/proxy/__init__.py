"""Event proxies: connect, refresh, subscribe, publish, rpc, sub_refresh, map_publish,
map_remove and shared_poll_refresh (research §6).

Transport-independent: the backend is reached over HTTP (`http://`, `https://`: JSON POST)
or gRPC (`grpc://host:port`: the `centrifugal.centrifugo.proxy.CentrifugoProxy` service),
chosen by each proxy's endpoint. Payloads stay raw bytes end to end.

Interface for the client state machine
--------------------------------------

    proxies = ProxyManager(cfg)          # once per node; `await proxies.close()` at shutdown

    ctx = ProxyContext(client=uid, transport="websocket", protocol="json", user=user,
                       meta=conn_meta, headers=request.headers,
                       emulated_headers=connect_cmd_headers)   # grpc_metadata for uni_grpc

    proxies.connect_proxy() -> Proxy | None        (client.proxy.connect.enabled)
    proxies.refresh_proxy() -> Proxy | None        (client.proxy.refresh.enabled)
    proxies.subscribe_proxy(ns_opts) -> Proxy | None     (ns subscribe_proxy_enabled)
    proxies.publish_proxy(ns_opts) -> Proxy | None       (ns publish_proxy_enabled)
    proxies.sub_refresh_proxy(ns_opts) -> Proxy | None   (ns sub_refresh_proxy_enabled)
    proxies.map_publish_proxy(ns_opts) -> Proxy | None   (ns map.publish_proxy_enabled)
    proxies.map_remove_proxy(ns_opts) -> Proxy | None    (ns map.remove_proxy_enabled)
    proxies.has_rpc_proxies: bool
    proxies.rpc_proxy(method) -> Proxy   raises ClientError(104) unknown rpc namespace,
                                         ClientError(108) namespace without proxy

    await proxy.connect(ctx, data=, name=, version=, channels=) -> ConnectProxyResult | None
    await proxy.refresh(ctx) -> RefreshProxyResult
    await proxy.subscribe(ctx, channel, token=, data=) -> SubscribeProxyResult
    await proxy.publish(ctx, channel, data) -> PublishProxyResult
    await proxy.rpc(ctx, method, data) -> RPCProxyResult
    await proxy.sub_refresh(ctx, channel) -> SubRefreshProxyResult
    await proxy.map_publish(ctx, channel, key, data) -> MapPublishProxyResult
    await proxy.map_remove(ctx, channel, key) -> MapRemoveProxyResult

Outcomes of a call:

- reply `disconnect` -> raises `app.errors.Disconnect(code, reason)`; reply `error` ->
  raises `app.errors.ClientError(code, message, temporary)` (connect, subscribe, publish,
  rpc, map_publish, map_remove). Refresh and sub_refresh never raise these: a reply without `result` (error and
  disconnect included) comes back as `expired=True`, as in Centrifugo.
- `ProxyUnavailable`: timeout, connection refused, non-200 status (unless
  `http.status_to_code_transforms` maps the status to an error/disconnect, which then
  behaves as a reply), invalid JSON, a malformed reply or bad base64. Map it to
  ClientError(100) for bidirectional clients, Disconnect(3004) for a unidirectional
  connect; for refresh/sub_refresh keep the connection/subscription and try again in
  `REFRESH_RETRY_DELAY` (60) seconds (the environment variable
  `CFPY_PROXY_REFRESH_RETRY_DELAY` shortens it for tests).

Every call is measured with Centrifugo's proxy metrics, labelled (protocol, type, name):
`proxy_duration_seconds` (+ `_histogram`), `proxy_inflight_requests`, and `proxy_errors`
for calls ending in ProxyUnavailable (error/disconnect replies are answers, not errors).

How Centrifugo applies the results (for the caller):

- connect: only when the client sent no token. `None` = no credentials: fall back to
  anonymous when `allow_anonymous_connect_without_token`/`insecure`, else 3501. Otherwise
  `user`, `expire_at` (past -> error 110), `info` -> conn info, `data` -> ConnectResult.data,
  `channels` + `subs` (claims like a token's; unknown channel -> error 102) become
  server-side subscriptions, `meta` (None = keep none) is the connection meta for later
  calls (`ctx.meta`). The client's own connect `subs` are not auto-subscribed here.
- refresh (server-side, near expiry; a client `refresh` command is then 3501): `expired` ->
  disconnect 3005; else new `expire_at`, `info` (when not None), `meta` (when not None).
- subscribe: order in Centrifugo's OnSubscribe: private channel without token -> 103;
  a token -> token path; allowed user-limited channel -> allowed; then, for channels that
  are not user-limited, `subscribe_proxy_enabled` -> the proxy decides (no further
  permission checks, and the client's recoverable/positioned/join_leave flags are not
  applied). Result: `expire_at` (0 = none), `info` -> channel info, `data` ->
  SubscribeResult.data, `override` over the namespace presence/join_leave/
  force_push_join_leave/force_recovery/force_positioning. With `sub_refresh_proxy_enabled`
  the subscription is refreshed server-side (sub_refresh proxy), else by the client.
- publish: after channel checks and data-format validation, instead of the permission
  checks; runs before publishing; `data` (None = keep client's) is published, with
  `skip_history` (no history), `tags`, `idempotency_key`, `delta`.
- rpc: `data` (None = empty) is the RPC reply data. Built-in `rpc.ping` is answered by the
  caller first; with no rpc proxies and no ping, rpc is error 108, with ping only 104.
- sub_refresh: `expired` -> unsubscribe 2501 (client-side sub) / disconnect 3006
  (server-side); else new `expire_at` and `info`.
- map_publish / map_remove (app/proxy/maps.py): after channel checks, instead of the
  namespace's permission checks and `map.client_key`; the result's `key` ("" = the
  client's; none at all -> 107), `data`, `tags`, `key_mode`, `idempotency_key`, `delta`,
  `version`, `version_epoch` (remove: `key`, `tags`, `idempotency_key`) go to the map write.
"""

from .manager import DEFAULT_PROXY_NAME, REFRESH_RETRY_DELAY, Proxy, ProxyManager
from .maps import MapPublishProxyResult, MapRemoveProxyResult
from .models import (
    ConnectProxyResult,
    ProxyContext,
    ProxyUnavailable,
    PublishProxyResult,
    RefreshProxyResult,
    RPCProxyResult,
    SubRefreshProxyResult,
    SubscribeProxyResult,
)

__all__ = [
    "DEFAULT_PROXY_NAME",
    "REFRESH_RETRY_DELAY",
    "Proxy",
    "ProxyManager",
    "ProxyContext",
    "ProxyUnavailable",
    "ConnectProxyResult",
    "RefreshProxyResult",
    "SubscribeProxyResult",
    "PublishProxyResult",
    "RPCProxyResult",
    "SubRefreshProxyResult",
    "MapPublishProxyResult",
    "MapRemoveProxyResult",
]
