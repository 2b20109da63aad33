"""`Client`: one connection's frames in and out, command dispatch and closing.

`Client` is built in parts, each a class in its own module that inherits the parts it
uses, all on `ClientState` (state.py: every attribute, typed):

    ClientState <- Permissions (permissions.py), Positioning (positioning.py)
                <- SubscribeFlow (subscribing.py) <- ChannelCommands (commands.py)
    ClientState <- PingPong (pings.py)
    ChannelCommands, PingPong <- ConnectFlow (connecting.py) <- Client

Commands reach their handlers through `_COMMANDS`, an explicit table."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any

from multidict import CIMultiDict

from app import metrics
from app.client.connecting import ConnectFlow
from app.client.inflight import CONCURRENT, InFlight
from app.client.state import State
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    DISCONNECT_NOT_AVAILABLE,
    DISCONNECT_STALE,
    ERROR_INTERNAL,
    ClientError,
    Disconnect,
)
from app.node import Node
from app.protocol import (
    Command,
    DecodeError,
    EncodeError,
)
from app.transport import Transport
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


# A command's handler, called with its connection, the command id and its params.
_Handler = Callable[["Client", int, dict[str, Any]], Coroutine[Any, Any, Any]]


async def _reraise(e: Exception) -> Any:
    """An awaitable failing with `e`: a handler that refused before its first await."""
    raise e


def _namespace(cmd: Command) -> str:
    """The namespace label of a command's channel (metrics)."""
    channel = cmd.params.get("channel")
    return metrics.namespace_of(channel) if type(channel) is str else ""


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def kept_headers(headers: Mapping[str, str] | None, names: frozenset[str]) -> Mapping[str, str]:
    """The request headers a connection keeps for its life: those some proxy forwards
    (`http_headers`) or the connect reads (`client.user_id_http_header`), matched without
    case; the rest go with the request. Keeping them all cost 1.2 KB per connection for a
    bench client's five headers (tracemalloc, bench.connect_instructions' clients), more
    for a browser's; nothing is kept when nothing reads them."""
    if not headers or not names:
        return _NO_HEADERS
    kept = CIMultiDict((k, v) for k, v in headers.items() if k.lower() in names)
    return kept if kept else _NO_HEADERS


class Client(ConnectFlow):
    """One connection; its parts are listed in this module's docstring."""

    __slots__ = ()

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
        self.headers = kept_headers(headers, node.kept_headers)
        self.user = ""
        self.conn_info = None
        self.state = State.CONNECTING
        self.expire_at = 0
        self._token_channels = ()
        self._connect_failed = False
        self._subs = {}
        # Issue 7: an idle connection holds no task or asyncio.Event (~0.8 KB each); the
        # writer schedules itself only while it has data, and nothing awaited `_closed`.
        self._writer = Writer(transport, self.cfg.queue_max_size, self._on_writer_error, node.loop)
        self._waiting_pong = False
        self._ping_at = 0.0
        self._ping_handle = None
        self._pong_handle = None
        self._expire_handle = None
        self._inbox = None
        self._m_inflight = None
        self.meta = None
        self._emulated_headers = None
        self._client_name = ""
        self._inflight = None
        self._subscribing = None
        self._map_syncs = None
        self._polls = None
        self._stale_handle = node.timers.call_later(self.cfg.stale_close_delay, self._on_stale)
        node.clients.add(self)

    # ------------------------------------------------------------------ I/O

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
        try:
            commands = self.codec.decode_commands(data)
        except DecodeError as e:
            await self.close(Disconnect(DISCONNECT_BAD_REQUEST, detail=f"bad frame: {e}"))
            return False
        return await self.handle_commands(commands, len(data))

    async def handle_commands(self, commands: list[Command], size: int) -> bool:
        """Run commands the transport decoded itself (`size`: the bytes they came in), for a
        transport whose undecodable input ends the connection its own way (WebTransport:
        3000, not 3501). Returns False once the connection is closing."""
        if self.state is State.CLOSED:
            return False
        if metrics.enabled() and commands:
            self._count_received(commands, size)
        for cmd in commands:
            if not await self._handle_command(cmd):
                return False
        return True

    def _count_received(self, commands: list[Command], size: int) -> None:
        """centrifuge's incTransportMessagesReceived: per decoded command (a frame that
        does not decode counts nothing), by its frame type and channel namespace. A
        frame's commands share its size (the codec does not report each one's bytes)."""
        share, extra = divmod(size, len(commands))
        for i, cmd in enumerate(commands):
            method = cmd.method or ("client_pong" if cmd.id == 0 else "unknown")
            counter = metrics.received(self.transport.name, method, _namespace(cmd))
            if counter is not None:
                counter.add(share + (extra if i == 0 else 0))

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
        handler = _COMMANDS[method]  # decode_commands admits only protocol.METHODS
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
            call = handler(self, cmd.id, cmd.params)
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
            result = await (handler(self, cmd.id, cmd.params) if call is None else call)
            if result is not None:
                self.send(self.codec.encode_reply(cmd.id, method, result), method, _namespace(cmd))
        except ClientError as e:
            if method == "connect":
                self._connect_failed = True
            metrics.child(metrics.REPLY_ERRORS, method, str(e.code), _namespace(cmd)).inc()
            self.send(self.codec.encode_error(cmd.id, e.to_dict()), method, _namespace(cmd))
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
            error = ClientError(ERROR_INTERNAL).to_dict()
            self.send(self.codec.encode_error(cmd.id, error), method, _namespace(cmd))
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
            metrics.action("remove_client")
            for sub in list(self._subs.values()):
                await self._drop_subscription(sub)
        if disconnect is not None and self.transport.disconnect_push:
            self._writer.reopen_for_last()
            self.send(
                self.codec.encode_push(
                    "", "disconnect", {"code": disconnect.code, "reason": disconnect.reason}
                ),
                "push_disconnect",
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


# Each command method of the protocol (app.protocol.METHODS but "send", which
# _handle_command answers itself) and its handler: the explicit dispatch table.
_COMMANDS: dict[str, _Handler] = {
    "connect": Client._cmd_connect,
    "subscribe": Client._cmd_subscribe,
    "unsubscribe": Client._cmd_unsubscribe,
    "publish": Client._cmd_publish,
    "presence": Client._cmd_presence,
    "presence_stats": Client._cmd_presence_stats,
    "history": Client._cmd_history,
    "ping": Client._cmd_ping,
    "rpc": Client._cmd_rpc,
    "refresh": Client._cmd_refresh,
    "sub_refresh": Client._cmd_sub_refresh,
}
