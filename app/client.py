"""One connection: its state machine, command dispatch, subscriptions and timers.

Transport-agnostic: a transport feeds frames to `handle_frame` and provides
`write`/`close`. Rules follow Centrifugo's client protocol v2 (research §1, §3–§5):
connect first, 3501 for malformed input, errors as replies, disconnects as
close codes, recovery and positioning per subscription.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app import VERSION_STRING, metrics
from app.auth import SubscribeOverride, TokenExpired, TokenInvalid
from app.channels import ChannelInfo
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CONNECTION_LIMIT,
    DISCONNECT_EXPIRED,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_INSUFFICIENT_STATE,
    DISCONNECT_INVALID_TOKEN,
    DISCONNECT_NO_PONG,
    DISCONNECT_NOT_AVAILABLE,
    DISCONNECT_PERMISSION_DENIED,
    DISCONNECT_STALE,
    DISCONNECT_SUB_EXPIRED,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_BAD_REQUEST,
    ERROR_EXPIRED,
    ERROR_INTERNAL,
    ERROR_LIMIT_EXCEEDED,
    ERROR_METHOD_NOT_FOUND,
    ERROR_NOT_AVAILABLE,
    ERROR_PERMISSION_DENIED,
    ERROR_TOKEN_EXPIRED,
    UNSUBSCRIBE_EXPIRED,
    UNSUBSCRIBE_INSUFFICIENT_STATE,
    UNSUBSCRIBE_REASONS,
    UNSUBSCRIBE_SERVER,
    ClientError,
    Disconnect,
)
from app.hub import Frames
from app.models import ClientInfo, HistoryFilter, HistoryResult, Publication, StreamPosition
from app.node import Node
from app.protocol import Command, DecodeError, get_bool, get_dict, get_int, get_raw, get_str
from app.proxy import REFRESH_RETRY_DELAY, ProxyContext, ProxyUnavailable
from app.recovery import cache_recovered, stream_recovered
from app.writer import Transport, Writer

log = logging.getLogger("centrifugo.client")


class State(enum.Enum):
    CONNECTING = 1
    CONNECTED = 2
    CLOSED = 3


@dataclass(slots=True)
class Subscription:
    channel: str
    chinfo: ChannelInfo
    server_side: bool
    chan_info: bytes | None = None
    presence: bool = False
    join_leave: bool = False  # this subscription emits join/leave events
    push_join_leave: bool = False  # this client receives join/leave pushes
    positioned: bool = False
    recoverable: bool = False
    offset: int = 0
    epoch: str = ""
    expire_at: int = 0
    expire_handle: asyncio.TimerHandle | None = None
    checked_offset: int = -1  # offset at the last periodic position check
    m_inflight: Any = None  # subscriptions_inflight metric child
    # Publications that arrive while the subscribe is in flight wait here.
    buffer: list[tuple[Publication, str, Frames]] | None = field(default_factory=list)


@dataclass(slots=True)
class _SubRequest:
    """What a subscribe asks for, from a client command, a token or the server API."""

    token: str = ""
    recover: bool = False
    offset: int = 0
    epoch: str = ""
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    data: bytes | None = None  # SubscribeResult.data, from a token or the subscribe proxy
    info: bytes | None = None
    expire_at: int = 0
    override: SubscribeOverride | None = None
    client_data: bytes | None = None  # the client's own subscribe data (for the proxy)


class Client:
    # Slots, not an instance dict: ~0.5 KB less per idle connection (issue 7's 16 KB).
    __slots__ = (
        "node",
        "cfg",
        "transport",
        "codec",
        "uid",
        "session",
        "headers",
        "user",
        "conn_info",
        "state",
        "expire_at",
        "meta",
        "_token_channels",
        "_connect_failed",
        "_subs",
        "_writer",
        "_waiting_pong",
        "_ping_handle",
        "_pong_handle",
        "_expire_handle",
        "_stale_handle",
        "_inbox",
        "_m_received",
        "_m_received_size",
        "_m_inflight",
        "_emulated_headers",
        "_client_name",
        "__weakref__",
    )

    def __init__(
        self,
        node: Node,
        transport: Transport,
        session: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.cfg = node.config.client
        self.transport = transport
        self.codec = transport.codec
        self.uid = str(uuid.uuid4())
        self.session = session
        self.headers = headers or {}
        self.user = ""
        self.conn_info: bytes | None = None
        self.state = State.CONNECTING
        self.expire_at = 0
        self._token_channels: tuple[str, ...] = ()
        self._connect_failed = False
        self._subs: dict[str, Subscription] = {}
        # Issue 7: an idle connection holds no task or asyncio.Event (~0.8 KB each); the
        # writer schedules itself only while it has data, and nothing awaited `_closed`.
        self._writer = Writer(transport, self.cfg.queue_max_size, self._on_writer_error)
        self._waiting_pong = False
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self._expire_handle: asyncio.TimerHandle | None = None
        self._inbox: asyncio.Queue[bytes] | None = None
        self._m_received = metrics.child(metrics.TRANSPORT_RECEIVED, transport.name, "", "")
        self._m_received_size = metrics.child(
            metrics.TRANSPORT_RECEIVED_SIZE, transport.name, "", ""
        )
        self._m_inflight: Any = None  # connections_inflight child once connected
        self.meta: bytes | None = None  # server-only JSON from token or connect proxy
        self._emulated_headers: dict[str, str] | None = None
        self._client_name = ""
        loop = asyncio.get_running_loop()
        self._stale_handle: asyncio.TimerHandle | None = loop.call_later(
            self.cfg.stale_close_delay, self._on_stale
        )
        node.clients.add(self)

    # ------------------------------------------------------------------ I/O

    def send(self, data: bytes) -> None:
        self._writer.enqueue(data)

    def enqueue_frame(self, data: bytes) -> None:
        """Emulation: frames arrive by HTTP POST, possibly concurrently; process them
        one after another as a socket reader would."""
        if self._inbox is None:
            self._inbox = asyncio.Queue()
            self.node.spawn(self._drain_inbox())
        self._inbox.put_nowait(data)

    async def _drain_inbox(self) -> None:
        assert self._inbox is not None
        while True:
            data = await self._inbox.get()
            if self.state is State.CLOSED or not await self.handle_frame(data):
                return

    async def handle_frame(self, data: bytes) -> bool:
        """Process one incoming frame. Returns False once the connection is closing."""
        if self.state is State.CLOSED:
            return False
        self._m_received.inc()
        self._m_received_size.inc(len(data))
        try:
            commands = self.codec.decode_commands(data)
        except DecodeError as e:
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST, detail=f"bad frame: {e}"))
            return False
        for cmd in commands:
            if not await self._handle_command(cmd):
                return False
        return True

    async def _handle_command(self, cmd: Command) -> bool:
        method = cmd.method
        if method == "send":
            # Centrifugo OSS registers no message handler; unauthenticated senders are
            # simply bad requests.
            code = (
                DISCONNECT_NOT_AVAILABLE
                if self.state is State.CONNECTED
                else DISCONNECT_BAD_REQUEST
            )
            await self.close(Disconnect(code))
            return False
        if cmd.id == 0:
            if method == "" and self._waiting_pong and self.state is State.CONNECTED:
                self._on_pong()
                return True
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST, detail="command id 0"))
            return False
        if method == "":
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST))
            return False
        if self.state is State.CONNECTING:
            if method != "connect" or self._connect_failed:
                await self.close(Disconnect(DISCONNECT_BAD_REQUEST))
                return False
        elif method == "connect":
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST))
            return False
        handler = getattr(self, "_cmd_" + method)
        channel = cmd.params.get("channel")
        ns = metrics.namespace_of(channel) if type(channel) is str else ""
        started = time.perf_counter()
        try:
            result = await handler(cmd.id, cmd.params)
            if result is not None:
                self.send(self.codec.encode_reply(cmd.id, method, result))
        except ClientError as e:
            if method == "connect":
                self._connect_failed = True
            metrics.child(metrics.REPLY_ERRORS, method, str(e.code), ns).inc()
            self.send(self.codec.encode_error(cmd.id, e.to_dict()))
        except Disconnect as d:
            await self.close(d)
            return False
        except DecodeError as e:
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST, detail=f"bad {method}: {e}"))
            return False
        except Exception:
            log.exception("error handling %s for client %s", method, self.uid)
            if method == "connect":
                self._connect_failed = True
            self.send(self.codec.encode_error(cmd.id, ClientError(ERROR_INTERNAL).to_dict()))
        finally:
            elapsed = time.perf_counter() - started
            metrics.child(metrics.COMMAND_DURATION, method, ns).observe(elapsed)
            metrics.child(metrics.COMMAND_DURATION_HISTOGRAM, method, ns).observe(elapsed)
        return self.state is not State.CLOSED

    # ------------------------------------------------------------- closing

    def _on_writer_error(self, disconnect: Disconnect) -> None:
        self.node.spawn(self.close(disconnect))

    def disconnect_soon(self, disconnect: Disconnect) -> None:
        """Close from a synchronous context (timers, fan-out)."""
        if self.state is not State.CLOSED:
            self.node.spawn(self.close(disconnect))

    async def close(self, disconnect: Disconnect | None = None) -> None:
        """Tear the connection down once; the transport gets the close code."""
        if self.state is State.CLOSED:
            return
        was_connected = self.state is State.CONNECTED
        self.state = State.CLOSED
        self.node.clients.discard(self)
        if self._inbox is not None:
            self._inbox.put_nowait(b"")  # wake the emulation reader so it ends
        for h in (self._ping_handle, self._pong_handle, self._expire_handle, self._stale_handle):
            if h is not None:
                h.cancel()
        if self._m_inflight is not None:
            self._m_inflight.dec()
        if disconnect is not None:
            metrics.child(metrics.SERVER_DISCONNECTS, str(disconnect.code)).inc()
        if disconnect is not None and disconnect.code != 3000:
            log.info(
                "disconnect client %s user %r: %d %s%s",
                self.uid,
                self.user,
                disconnect.code,
                disconnect.reason,
                f" ({disconnect.detail})" if disconnect.detail else "",
            )
        if was_connected:
            self.node.hub.remove(self)
            for sub in list(self._subs.values()):
                await self._drop_subscription(sub)
        if disconnect is not None and self.transport.disconnect_push:
            self._writer.reopen_for_last()
            self.send(
                self.codec.encode_push(
                    "", "disconnect", {"code": disconnect.code, "reason": disconnect.reason}
                )
            )
        await self._writer.close()
        if disconnect is not None:
            try:
                await self.transport.close(disconnect)
            except Exception:
                log.debug("transport close failed", exc_info=True)

    async def transport_closed(self) -> None:
        """The peer went away: clean up without sending anything."""
        await self.close(None)

    def _on_stale(self) -> None:
        self._stale_handle = None
        if self.state is State.CONNECTING:
            self.disconnect_soon(Disconnect(DISCONNECT_STALE))

    # ------------------------------------------------------------ ping/pong

    def _pong_expected(self) -> bool:
        return (
            self.cfg.ping_interval > 0
            and self.cfg.pong_timeout > 0
            and not self.transport.unidirectional
        )

    def _pings(self) -> bool:
        # uni_grpc relies on HTTP/2 keepalive instead of protocol pings.
        return self.cfg.ping_interval > 0 and getattr(self.transport, "pings", True)

    def _schedule_ping(self, first: bool = False) -> None:
        interval = self.cfg.ping_interval
        if not self._pings():
            return
        # Spread the first ping so that a reconnect wave does not ping in lockstep.
        delay = random.uniform(interval / 2, interval) if first else interval
        self._ping_handle = asyncio.get_running_loop().call_later(delay, self._on_ping_time)

    def _on_ping_time(self) -> None:
        if self.state is not State.CONNECTED:
            return
        self.send(self.codec.ping)
        if self._pong_expected() and not self._waiting_pong:
            self._waiting_pong = True
            self._pong_handle = asyncio.get_running_loop().call_later(
                self.cfg.pong_timeout, self._on_no_pong
            )
        self._schedule_ping()

    def _on_pong(self) -> None:
        self._waiting_pong = False
        if self._pong_handle is not None:
            self._pong_handle.cancel()
            self._pong_handle = None

    def _on_no_pong(self) -> None:
        if self._waiting_pong:
            self.disconnect_soon(Disconnect(DISCONNECT_NO_PONG))

    # -------------------------------------------------------------- connect

    async def _cmd_connect(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any] | None:
        token = get_str(params, "token")
        # name/version label metrics and, with data, go to the connect proxy.
        name = get_str(params, "name")
        version = get_str(params, "version")
        data = get_raw(params, "data")
        subs_req = get_dict(params, "subs")
        headers = get_dict(params, "headers")
        if headers:
            self._emulated_headers = {str(k).lower(): str(v) for k, v in headers.items()}
        cfg = self.cfg
        node = self.node
        sub_requests: dict[str, _SubRequest] = {}
        result_data: bytes | None = None
        # Channels the client names in `subs` are honoured for token and anonymous
        # connections; with a connect proxy the backend decides (as in Centrifugo).
        client_channels = True
        connect_proxy = node.proxies.connect_proxy() if not token else None
        proxy_result = None
        if connect_proxy is not None:
            try:
                proxy_result = await connect_proxy.connect(
                    self.proxy_context(),
                    data=data or None,
                    name=name,
                    version=version,
                    channels=list(subs_req),
                )
            except ProxyUnavailable:
                raise ClientError(ERROR_INTERNAL) from None
            client_channels = False
        if proxy_result is not None:
            self.user = proxy_result.user
            self.conn_info = proxy_result.info
            self.meta = proxy_result.meta
            result_data = proxy_result.data
            if proxy_result.expire_at > 0 and not cfg.insecure:
                if proxy_result.expire_at < int(time.time()):
                    raise ClientError(ERROR_EXPIRED)
                self.expire_at = proxy_result.expire_at
            for ch in proxy_result.channels:
                sub_requests[ch] = _SubRequest()
            for ch, opts in proxy_result.subs.items():
                sub_requests[ch] = _SubRequest(
                    info=opts.info, data=opts.data, override=opts.override
                )
        elif token:
            try:
                claims = await node.verifier.verify_connect_token(token)
            except TokenExpired:
                raise ClientError(ERROR_TOKEN_EXPIRED) from None
            except TokenInvalid as e:
                raise Disconnect(
                    DISCONNECT_INVALID_TOKEN, detail=f"invalid connection token: {e}"
                ) from None
            if claims.user == "" and cfg.disallow_anonymous_connection_tokens:
                raise Disconnect(DISCONNECT_PERMISSION_DENIED)
            self.user = claims.user
            self.conn_info = claims.info
            self.meta = claims.meta
            if claims.expire_at > 0 and not cfg.insecure:
                if claims.expire_at < int(time.time()):
                    raise ClientError(ERROR_EXPIRED)
                self.expire_at = claims.expire_at
            self._token_channels = tuple(claims.channels) + tuple(claims.subs)
            for ch in claims.channels:
                sub_requests[ch] = _SubRequest()
            for ch, opts in claims.subs.items():
                sub_requests[ch] = _SubRequest(
                    info=opts.info, data=opts.data, override=opts.override
                )
        elif cfg.user_id_http_header and self.headers.get(cfg.user_id_http_header):
            # A trusted gateway in front of us has authenticated the user.
            self.user = self.headers[cfg.user_id_http_header]
        elif cfg.insecure or cfg.allow_anonymous_connect_without_token:
            self.user = ""
            client_channels = True
        else:
            raise Disconnect(DISCONNECT_BAD_REQUEST, detail="connect without credentials")

        limit = cfg.user_connection_limit
        if limit > 0 and self.user and len(node.hub.user_connections(self.user)) >= limit:
            raise Disconnect(DISCONNECT_CONNECTION_LIMIT)

        personal = cfg.subscribe_to_user_personal_channel
        if personal.enabled and self.user:
            sub_requests.setdefault(node.resolver.personal_channel(self.user), _SubRequest())

        # The connect request names channels with their recovery positions: those
        # granted server-side above, and public ones the client could join itself.
        for ch, raw in subs_req.items():
            if not isinstance(raw, dict):
                raise DecodeError("subs entries must be objects")
            r = sub_requests.get(ch)
            if r is None:
                if not client_channels:
                    continue
                try:
                    chinfo = node.resolve(ch, client_side=True)
                except ClientError:
                    raise Disconnect(DISCONNECT_BAD_REQUEST) from None
                if chinfo.private or not self._may_subscribe_without_token(chinfo):
                    continue
                r = sub_requests[ch] = _SubRequest()
            r.recover = get_bool(raw, "recover")
            r.offset = get_int(raw, "offset")
            r.epoch = get_str(raw, "epoch")

        # Resolve every server-side channel before touching any state.
        resolved = []
        for ch, req in sub_requests.items():
            resolved.append((node.resolve(ch, client_side=False), req))

        if self._stale_handle is not None:
            self._stale_handle.cancel()
            self._stale_handle = None
        self.state = State.CONNECTED
        node.hub.add(self)

        result: dict[str, Any] = {"client": self.uid, "version": VERSION_STRING}
        # With a refresh proxy the server refreshes: the client must not (Centrifugo's
        # ClientSideRefresh = !refreshProxyEnabled hides expires/ttl).
        if self.expire_at and node.proxies.refresh_proxy() is None:
            result["expires"] = True
            result["ttl"] = max(int(self.expire_at - time.time()), 0)
        if self._pings():
            result["ping"] = int(cfg.ping_interval)
            if self._pong_expected():
                result["pong"] = True
        if self.session:
            result["session"] = self.session
            if not self.transport.unidirectional:
                result["node"] = node.id  # emulation requests are routed by it
        if cfg.connect_include_server_time:
            result["time"] = int(time.time() * 1000)
        if result_data:
            result["data"] = result_data

        new_subs: list[Subscription] = []
        if resolved:
            subs_result: dict[str, Any] = {}
            try:
                for chinfo, req in resolved:
                    sub, res = await self._subscribe(chinfo, req, server_side=True)
                    new_subs.append(sub)
                    subs_result[chinfo.channel] = res
            except BaseException:
                for sub in new_subs:
                    await self._drop_subscription(sub, announce=False)
                node.hub.remove(self)
                self.state = State.CONNECTING
                raise
            result["subs"] = subs_result

        if self.transport.unidirectional:
            self.send(self.codec.encode_push("", "connect", result))
        else:
            self.send(self.codec.encode_reply(cmd_id, "connect", result))
        labels = (self.transport.name, self.codec.name, name, version)
        metrics.child(metrics.CONNECTIONS_ACCEPTED, *labels).inc()
        self._m_inflight = metrics.child(metrics.CONNECTIONS_INFLIGHT, *labels)
        self._m_inflight.inc()
        self._client_name = name
        for sub in new_subs:
            self._activate(sub)
        self._schedule_ping(first=True)
        self._schedule_expiry()
        return None

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

    def _schedule_expiry(self, delay: float | None = None) -> None:
        if self._expire_handle is not None:
            self._expire_handle.cancel()
            self._expire_handle = None
        if self.expire_at <= 0:
            return
        loop = asyncio.get_running_loop()
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
        try:
            claims = await self.node.verifier.verify_connect_token(token)
        except TokenExpired:
            raise Disconnect(DISCONNECT_EXPIRED) from None
        except TokenInvalid as e:
            raise Disconnect(
                DISCONNECT_INVALID_TOKEN, detail=f"invalid refresh token: {e}"
            ) from None
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
            result["ttl"] = max(int(self.expire_at - time.time()), 0)
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
            body = {"expires": True, "ttl": ttl}
        self.expire_at = expire_at
        self._schedule_expiry()
        self.send(self.codec.encode_push("", "refresh", body))

    # ------------------------------------------------------------ subscribe

    def _history_permitted(self, ns: Any, subscribed: bool) -> bool:
        if self.cfg.insecure:
            return True
        if not self.user and not ns.allow_history_for_anonymous:
            return False
        return ns.allow_history_for_client or (ns.allow_history_for_subscriber and subscribed)

    def _presence_permitted(self, ns: Any, subscribed: bool) -> bool:
        if self.cfg.insecure:
            return True
        if not self.user and not ns.allow_presence_for_anonymous:
            return False
        return ns.allow_presence_for_client or (ns.allow_presence_for_subscriber and subscribed)

    async def _cmd_subscribe(self, cmd_id: int, params: dict[str, Any]) -> None:
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        req = _SubRequest(
            token=get_str(params, "token"),
            recover=get_bool(params, "recover"),
            offset=get_int(params, "offset"),
            epoch=get_str(params, "epoch"),
            positioned=get_bool(params, "positioned"),
            recoverable=get_bool(params, "recoverable"),
            join_leave=get_bool(params, "join_leave"),
            client_data=get_raw(params, "data") or None,
        )
        chinfo = self.node.resolve(channel, client_side=True)
        if channel in self._subs:
            raise ClientError(ERROR_ALREADY_SUBSCRIBED)
        if self.cfg.channel_limit > 0 and len(self._subs) >= self.cfg.channel_limit:
            raise ClientError(ERROR_LIMIT_EXCEEDED)
        await self._authorize_subscribe(chinfo, req)
        sub, result = await self._subscribe(chinfo, req, server_side=False)
        self.send(self.codec.encode_reply(cmd_id, "subscribe", result))
        self._activate(sub)

    async def _authorize_subscribe(self, chinfo: ChannelInfo, req: _SubRequest) -> None:
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
            if claims.expire_at > 0:
                if claims.expire_at < int(time.time()):
                    raise ClientError(ERROR_EXPIRED)
                req.expire_at = claims.expire_at
            req.info = claims.info
            req.data = claims.data
            req.override = claims.override
            return
        if chinfo.private:
            raise ClientError(ERROR_PERMISSION_DENIED)
        proxy = self.node.proxies.subscribe_proxy(chinfo.options)
        if proxy is not None and chinfo.allowed_users is None:
            await self._proxy_subscribe(proxy, chinfo, req)
            return
        if not self._may_subscribe_without_token(chinfo):
            raise ClientError(ERROR_PERMISSION_DENIED)

    async def _proxy_subscribe(self, proxy: Any, chinfo: ChannelInfo, req: _SubRequest) -> None:
        """The backend decides; the client's own stream flags are not applied."""
        try:
            res = await proxy.subscribe(
                self.proxy_context(), chinfo.channel, token=req.token, data=req.client_data
            )
        except ProxyUnavailable:
            raise ClientError(ERROR_INTERNAL) from None
        if res.expire_at > 0:
            if res.expire_at < int(time.time()):
                raise ClientError(ERROR_EXPIRED)
            req.expire_at = res.expire_at
        req.info = res.info
        req.data = res.data
        req.override = res.override
        req.recoverable = req.positioned = req.join_leave = False

    def _check_token_owner(self, claims: Any, channel: str) -> None:
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

    async def _subscribe(
        self, chinfo: ChannelInfo, req: _SubRequest, *, server_side: bool
    ) -> tuple[Subscription, dict[str, Any]]:
        """Subscribe this connection; the subscription buffers until `_activate`."""
        ns = chinfo.options
        ov = req.override
        channel = chinfo.channel

        def pick(value: bool | None, default: bool) -> bool:
            return default if value is None else value

        presence = pick(ov.presence if ov else None, ns.presence)
        join_leave = pick(ov.join_leave if ov else None, ns.join_leave)
        force_push = pick(ov.force_push_join_leave if ov else None, ns.force_push_join_leave)
        force_recovery = pick(ov.force_recovery if ov else None, ns.force_recovery)
        force_positioning = pick(ov.force_positioning if ov else None, ns.force_positioning)
        history_ok = server_side or self._history_permitted(ns, True)

        recoverable = ns.history_enabled and (
            force_recovery or (req.recoverable and (ns.allow_recovery or history_ok))
        )
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
        )
        self._subs[channel] = sub
        try:
            await self.node.add_subscriber(channel, self)
            result: dict[str, Any] = {}
            # A sub_refresh proxy refreshes server-side: no expires/ttl for the client.
            if req.expire_at and self.node.proxies.sub_refresh_proxy(ns) is None:
                result["expires"] = True
                result["ttl"] = max(int(req.expire_at - time.time()), 0)
            if positioned:
                result.update(await self._position(sub, req, ns))
            if req.data:
                result["data"] = req.data
            if presence:
                await self.node.presence_manager.add_presence(channel, self.uid, self._info(sub))
        except BaseException:
            await self._drop_subscription(sub, announce=False)
            raise
        labels = (self._client_name, chinfo.namespace)
        metrics.child(metrics.SUBSCRIPTIONS_ACCEPTED, *labels).inc()
        sub.m_inflight = metrics.child(metrics.SUBSCRIPTIONS_INFLIGHT, *labels)
        sub.m_inflight.inc()
        return sub, result

    async def _position(self, sub: Subscription, req: _SubRequest, ns: Any) -> dict[str, Any]:
        """Stream position, and recovery when asked (research §5)."""
        result: dict[str, Any] = {}
        if sub.recoverable:
            result["recoverable"] = True
        result["positioned"] = True
        meta_ttl = ns.history_meta_ttl
        if not (req.recover and sub.recoverable):
            hist = await self.node.stream_history(sub.channel, HistoryFilter(meta_ttl=meta_ttl))
            top = hist.position
            sub.offset, sub.epoch = top.offset, top.epoch
            result["epoch"] = top.epoch
            if top.offset:
                result["offset"] = top.offset
            return result

        result["was_recovering"] = True
        pubs: list[Publication]
        cache = ns.force_recovery_mode == "cache"
        if cache:
            hist = await self.node.stream_history(
                sub.channel, HistoryFilter(limit=1, reverse=True, meta_ttl=meta_ttl)
            )
            top = hist.position
            recovered, pubs = cache_recovered(hist.publications, top, req.offset, req.epoch)
        else:
            hist = await self._recover_stream(sub.channel, req, meta_ttl)
            top = hist.position
            pubs = hist.publications
            recovered = stream_recovered(pubs, top, req.offset, req.epoch)
        sub.epoch = top.epoch
        result["epoch"] = top.epoch
        metrics.child(
            metrics.RECOVER,
            "yes" if recovered else "no",
            sub.chinfo.namespace,
            "yes" if recovered and pubs else "no",
        ).inc()
        if recovered:
            result["recovered"] = True
            last = pubs[-1].offset if pubs else req.offset
            sub.offset = top.offset if cache else max(last, req.offset)
            if req.offset:
                result["offset"] = req.offset
            if pubs:
                result["publications"] = pubs
        else:
            sub.offset = top.offset
            if top.offset:
                result["offset"] = top.offset
        return result

    async def _recover_stream(
        self, channel: str, req: _SubRequest, meta_ttl: float
    ) -> HistoryResult:
        return await self.node.stream_history(
            channel,
            HistoryFilter(
                since=StreamPosition(req.offset, req.epoch),
                limit=self.cfg.recovery_max_publication_limit,
                meta_ttl=meta_ttl,
            ),
        )

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

    def proxy_context(self) -> ProxyContext:
        return ProxyContext(
            client=self.uid,
            transport=self.transport.name,
            protocol="protobuf" if self.codec.name.startswith("protobuf") else "json",
            user=self.user,
            meta=self.meta,
            headers=self.headers or None,
            emulated_headers=self._emulated_headers,
        )

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
        node.remove_subscriber(sub.channel, self)
        try:
            if sub.presence:
                await node.presence_manager.remove_presence(sub.channel, self.uid, self.user)
            if announce and sub.join_leave and sub.buffer is None:
                await node.broker.publish_leave(sub.channel, self._info(sub))
        except Exception as e:  # engine down: the entry expires by itself
            log.error("cleanup of subscription %s failed: %s", sub.channel, e)

    def _schedule_sub_expiry(self, sub: Subscription, delay: float | None = None) -> None:
        if sub.expire_handle is not None:
            sub.expire_handle.cancel()
        loop = asyncio.get_running_loop()
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
        self.send(self.codec.encode_push(sub.channel, "unsubscribe", body))

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
        chinfo = self.node.resolve(channel, client_side=False)
        req = _SubRequest(info=info, data=data, expire_at=expire_at, override=override)
        if recover_since is not None:
            req.recover = True
            req.offset = recover_since.offset
            req.epoch = recover_since.epoch
        sub, result = await self._subscribe(chinfo, req, server_side=True)
        pubs = result.pop("publications", None)
        for k in ("was_recovering", "recovered", "expires", "ttl"):
            result.pop(k, None)
        self.send(self.codec.encode_push(channel, "subscribe", result))
        for p in pubs or ():
            self.send(self.codec.encode_push(channel, "pub", p))
        self._activate(sub)

    async def unsubscribe_server_side(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is not None:
            await self._server_unsubscribe(sub, UNSUBSCRIBE_SERVER)

    # ------------------------------------------------------------ delivery

    def deliver_publication(
        self, channel: str, pub: Publication, epoch: str, frames: Frames
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
        frame = frames.get(self.codec)
        if not frame:
            # Binary payload (b64data) cannot travel over the JSON protocol.
            self.disconnect_soon(Disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL))
            return
        self._writer.enqueue(frame)

    def deliver_join_leave(self, channel: str, frames: Frames) -> None:
        sub = self._subs.get(channel)
        if sub is not None and sub.push_join_leave and sub.buffer is None:
            self._writer.enqueue(frames.get(self.codec))

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
        self.send(self.codec.encode_push(sub.channel, "unsubscribe", body))

    # ------------------------------------------------------------ commands

    async def _cmd_unsubscribe(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        sub = self._subs.get(channel)
        if sub is not None:
            await self._drop_subscription(sub)
        return {}

    async def _cmd_publish(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        channel = get_str(params, "channel")
        data = get_raw(params, "data")
        if not channel or not data:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        chinfo = self.node.resolve(channel, client_side=True)
        ns = chinfo.options
        sub = self._subs.get(channel)
        fmt = ns.publication_data_format
        if fmt == "json_object" and not data.startswith(b"{"):
            raise ClientError(ERROR_BAD_REQUEST)
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
                client_side=True,
            )
            return {}
        allowed = self.cfg.insecure or (
            (self.user or ns.allow_publish_for_anonymous)
            and (ns.allow_publish_for_client or (ns.allow_publish_for_subscriber and sub))
        )
        if not allowed:
            raise ClientError(ERROR_PERMISSION_DENIED)
        await self.node.publish(channel, data, info=self._info(sub), client_side=True)
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
        if not self._presence_permitted(chinfo.options, chinfo.channel in self._subs):
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
        if not self._history_permitted(ns, chinfo.channel in self._subs):
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

    async def _cmd_sub_refresh(self, cmd_id: int, params: dict[str, Any]) -> dict[str, Any]:
        channel = get_str(params, "channel")
        token = get_str(params, "token")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        sub = self._subs.get(channel)
        if sub is None:
            raise ClientError(ERROR_PERMISSION_DENIED)
        if self.node.proxies.sub_refresh_proxy(sub.chinfo.options) is not None:
            raise Disconnect(DISCONNECT_BAD_REQUEST)  # refreshed server-side by the proxy
        if not token:
            raise ClientError(ERROR_BAD_REQUEST)
        try:
            claims = await self.node.verifier.verify_subscribe_token(token)
        except TokenExpired:
            raise Disconnect(DISCONNECT_SUB_EXPIRED) from None
        except TokenInvalid as e:
            raise Disconnect(
                DISCONNECT_INVALID_TOKEN, detail=f"invalid subscription refresh token: {e}"
            ) from None
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
            result["ttl"] = max(int(sub.expire_at - time.time()), 0)
        elif sub.expire_handle is not None:
            sub.expire_handle.cancel()
            sub.expire_handle = None
        return result
