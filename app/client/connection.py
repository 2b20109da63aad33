"""`Client`: one connection's frames in and out, command dispatch, connect, refresh,
ping/pong and closing. Subscriptions and the other commands are its mixins."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from app import VERSION_STRING, metrics
from app.client.commands import ChannelCommands
from app.client.inflight import CONCURRENT, InFlight
from app.client.state import State, SubRequest, Subscription, ttl_until
from app.client.subscribing import SubscribeFlow
from app.client.tokens import verified
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CHANNEL_LIMIT,
    DISCONNECT_CONNECTION_LIMIT,
    DISCONNECT_EXPIRED,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_INSUFFICIENT_STATE,
    DISCONNECT_INVALID_TOKEN,
    DISCONNECT_NO_PONG,
    DISCONNECT_NOT_AVAILABLE,
    DISCONNECT_PERMISSION_DENIED,
    DISCONNECT_SERVER_ERROR,
    DISCONNECT_STALE,
    ERROR_EXPIRED,
    ERROR_INTERNAL,
    ERROR_TOKEN_EXPIRED,
    ClientError,
    Disconnect,
)
from app.node import Node
from app.protocol import (
    Command,
    DecodeError,
    EncodeError,
    get_bool,
    get_dict,
    get_int,
    get_raw,
    get_str,
)
from app.proxy import REFRESH_RETRY_DELAY, ProxyUnavailable
from app.timers import CoarseTimer
from app.transport import Transport, sends_pings
from app.writer import Writer

log = logging.getLogger("centrifugo.client")


_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class _RandomPool:
    """os.urandom read 4 KB at a time: one getrandom() syscall per 256 connections
    instead of one each. Emptied in a forked child, so workers never share bytes."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._buf = b""
        self._pos = 0

    def take16(self) -> bytes:
        pos = self._pos
        if pos + 16 > len(self._buf):
            self._buf = os.urandom(4096)
            pos = 0
        self._pos = pos + 16
        return self._buf[pos : pos + 16]


_random = _RandomPool()


def new_client_id() -> str:
    """A random (version 4) UUID string, as uuid.uuid4() gives, at a third of its cost:
    one is made per connection."""
    h = _random.take16().hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_Handler = Callable[[int, dict[str, Any]], Coroutine[Any, Any, Any]]


async def _reraise(e: Exception) -> Any:
    """An awaitable failing with `e`: a handler that refused before its first await."""
    raise e


def _namespace(cmd: Command) -> str:
    """The namespace label of a command's channel (metrics)."""
    channel = cmd.params.get("channel")
    return metrics.namespace_of(channel) if type(channel) is str else ""


class Client(SubscribeFlow, ChannelCommands):
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
        "_inflight",
        "_subscribing",
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
        self.uid = new_client_id()
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
        self._writer = Writer(transport, self.cfg.queue_max_size, self._on_writer_error, node.loop)
        self._waiting_pong = False
        self._ping_handle: CoarseTimer | None = None
        self._pong_handle: CoarseTimer | None = None
        self._expire_handle: asyncio.TimerHandle | None = None
        self._inbox: asyncio.Queue[bytes] | None = None
        self._m_received = metrics.live(
            metrics.child(metrics.TRANSPORT_RECEIVED, transport.name, "", "")
        )
        self._m_received_size = metrics.child(
            metrics.TRANSPORT_RECEIVED_SIZE, transport.name, "", ""
        )
        self._m_inflight: Any = None  # connections_inflight child once connected
        self.meta: bytes | None = None  # server-only JSON from token or connect proxy
        self._emulated_headers: dict[str, str] | None = None
        self._client_name = ""
        # client.concurrency > 1: the commands in flight, made at the first one.
        self._inflight: InFlight | None = None
        # Channels with a client subscribe in flight -> the future an unsubscribe waits on
        # (app/client/subscribing.py); None while there are none.
        self._subscribing: dict[str, asyncio.Future[None] | None] | None = None
        self._stale_handle: CoarseTimer | None = node.timers.call_later(
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
        if self._m_received is not None:
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
        if self.cfg.concurrency > 1 and method in CONCURRENT and self._has_handler(method):
            return await self._start_concurrently(cmd, handler)
        return await self._run(cmd, handler)

    def _has_handler(self, method: str) -> bool:
        # Centrifugo registers its RPC handler only with an RPC proxy or extension: without
        # one centrifuge answers an rpc in the reader, whatever the concurrency.
        if method != "rpc":
            return True
        return self.node.proxies.has_rpc_proxies or self.node.config.rpc.ping.enabled

    async def _start_concurrently(self, cmd: Command, handler: _Handler) -> bool:
        """client.concurrency: run the command in a task once a slot is free. The handler
        is called here, in the reader: what it checks before its first await (subscribe
        takes its channel's reservation there) is done in the order the commands came."""
        inflight = self._inflight
        if inflight is None:
            inflight = self._inflight = InFlight(self.cfg.concurrency)
        await inflight.acquire()
        if self.state is State.CLOSED:
            inflight.release()
            return False
        try:
            call = handler(cmd.id, cmd.params)
        except Exception as e:  # refused before any await: answered here, in order
            inflight.release()
            return await self._run(cmd, handler, _reraise(e))
        inflight.start(self._run(cmd, handler, call), call)
        return True

    async def _run(
        self, cmd: Command, handler: _Handler, call: Coroutine[Any, Any, Any] | None = None
    ) -> bool:
        """Run one command and write its reply or error exactly once; `call` is the
        handler's awaitable when already made. Returns False once the connection closes."""
        method = cmd.method
        timed = metrics.enabled()
        started = time.perf_counter() if timed else 0.0
        try:
            result = await (handler(cmd.id, cmd.params) if call is None else call)
            if result is not None:
                self.send(self.codec.encode_reply(cmd.id, method, result))
        except ClientError as e:
            if method == "connect":
                self._connect_failed = True
            metrics.child(metrics.REPLY_ERRORS, method, str(e.code), _namespace(cmd)).inc()
            self.send(self.codec.encode_error(cmd.id, e.to_dict()))
        except Disconnect as d:
            await self.close(d)
            return False
        except DecodeError as e:
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST, detail=f"bad {method}: {e}"))
            return False
        except EncodeError as e:
            await self.close(Disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL, detail=str(e)))
            return False
        except Exception:
            log.exception("error handling %s for client %s", method, self.uid)
            if method == "connect":
                self._connect_failed = True
            self.send(self.codec.encode_error(cmd.id, ClientError(ERROR_INTERNAL).to_dict()))
        finally:
            if timed:
                elapsed = time.perf_counter() - started
                ns = _namespace(cmd)
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
        if self._inflight is not None:
            # Commands in flight end here: none subscribes, refreshes or calls a proxy for
            # a closed connection (their own cleanup runs as they are cancelled).
            self._inflight.cancel()
        self._end_subscribing()
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
        return self.cfg.ping_interval > 0 and sends_pings(self.transport)

    def _schedule_ping(self, first: bool = False) -> None:
        interval = self.cfg.ping_interval
        if not self._pings():
            return
        # Spread the first ping so that a reconnect wave does not ping in lockstep.
        delay = random.uniform(interval / 2, interval) if first else interval
        self._ping_handle = self.node.timers.call_later(delay, self._on_ping_time)

    def _on_ping_time(self) -> None:
        if self.state is not State.CONNECTED:
            return
        self.send(self.codec.ping)
        if self._pong_expected() and not self._waiting_pong:
            self._waiting_pong = True
            self._pong_handle = self.node.timers.call_later(self.cfg.pong_timeout, self._on_no_pong)
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
        sub_requests: dict[str, SubRequest] = {}
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
                sub_requests[ch] = SubRequest()
            for ch, opts in proxy_result.subs.items():
                sub_requests[ch] = SubRequest(
                    info=opts.info, data=opts.data, override=opts.override
                )
        elif token:
            claims = await verified(
                node.verifier.verify_connect_token(token),
                lambda: ClientError(ERROR_TOKEN_EXPIRED),
                "connection token",
            )
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
                sub_requests[ch] = SubRequest()
            for ch, opts in claims.subs.items():
                sub_requests[ch] = SubRequest(
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
            channel = node.resolver.personal_channel(self.user)
            if personal.single_connection:
                await self._single_connection(node, channel)
            sub_requests.setdefault(channel, SubRequest())

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
                r = sub_requests[ch] = SubRequest()
            r.recover = get_bool(raw, "recover")
            r.offset = get_int(raw, "offset")
            r.epoch = get_str(raw, "epoch")

        # client.channel_limit bounds the subscriptions a connect makes too (token
        # `channels`/`subs`, proxy, personal channel, the client's `subs`), as in
        # centrifuge: one over the limit and the connection is refused with 3505.
        channel_limit = cfg.channel_limit
        if channel_limit > 0 and len(sub_requests) > channel_limit:
            raise Disconnect(
                DISCONNECT_CHANNEL_LIMIT,
                detail=f"{len(sub_requests)} subscriptions at connect, limit {channel_limit}",
            )

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
            result["ttl"] = ttl_until(self.expire_at)
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
        self.send(self.codec.encode_push("", "refresh", body))
