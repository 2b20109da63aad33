"""NATS broker: at-most-once PUB/SUB between nodes over NATS, as Centrifugo's NatsBroker.

Broker and Controller at once (Centrifugo's `var _ centrifuge.Controller = (*NatsBroker)(nil)`):
a publication is one NATS message on its channel's subject (subjects.py), a Centrifugo
protobuf Push (codec.py) or, in raw mode, the data itself; control messages go to
`<prefix>.control` and `<prefix>.node.<id>`. There is no history: `history` and
`remove_history` answer ClientError(108) as Centrifugo's ErrorNotAvailable, so a namespace with
history, recovery or positioning gets error 108 at subscribe and from the history API, as it
does on a Centrifugo NATS broker. Idempotency keys and versions are ignored (no storage).

Wildcards (`allow_wildcards`): Centrifugo refuses to publish to a channel with `*` or `>` and,
unless allowed, to subscribe to one (error 107). With them allowed every publication is
delivered in the subscription's channel (the subject without the prefix) and carries its
concrete channel (`Publication.channel`). Raw mode publishes the bytes as they are, drops
join/leave, and delivers what arrives with `channel` = the subject without the raw prefix.

Outages (nats-py reconnects and resubscribes by itself, every 2 s like nats.go): the first
connection is made in the background, retried forever, so `run` never fails because NATS is
away (Centrifugo exits instead; here a node waits, unhealthy, as with Redis). While not
connected `healthy` is false (/health 500), publish and control publish fail at once with
ClientError(100) (nothing buffered, as Centrifugo's ReconnectBufSize(-1)) and subscribe fails
with ClientError(100), which disconnects with 3004 so the SDK comes back later: the same
answers as in a Redis outage. Publications made while NATS is away are lost (at most once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from app.broker import Broker, BrokerEventHandler, ControlEventHandler, Controller, HealthReporter
from app.config import NatsConfig
from app.engines.nats import codec
from app.engines.nats.subjects import Subjects, has_wildcard
from app.errors import ERROR_BAD_REQUEST, ERROR_INTERNAL, ERROR_NOT_AVAILABLE, ClientError
from app.models import (
    ClientInfo,
    HistoryFilter,
    HistoryResult,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from app.tls import ssl_context

log = logging.getLogger("centrifugo.nats.broker")

# nats.go's DefaultURL, which Centrifugo uses for an empty url.
DEFAULT_URL = "nats://127.0.0.1:4222"
# How long `subscribe` waits for the server's PONG that proves its SUBs are in place (our
# Broker contract: delivery guaranteed after return). Longer than write_timeout's 1 s
# default: a mass resubscribe on a loaded 2-core host can take that long.
CONFIRM_TIMEOUT = 5.0
# How long `run` waits for the first connection before returning unhealthy.
FIRST_TRY_GRACE = 1.0

_FAILURES = (NatsError, OSError, asyncio.TimeoutError)


class NatsBroker:
    """Broker, Controller and HealthReporter over one NATS connection: see the conformance
    lines at the end of this module."""

    def __init__(self, cfg: NatsConfig, where: str = "broker.nats") -> None:
        self._servers = [u.strip() for u in (cfg.url or DEFAULT_URL).split(",") if u.strip()]
        self._subjects = Subjects(
            cfg.prefix,
            raw=cfg.raw_mode.enabled,
            raw_prefix=cfg.raw_mode.prefix,
            replacements=cfg.raw_mode.channel_replacements,
        )
        self._raw = cfg.raw_mode.enabled
        self._allow_wildcards = cfg.allow_wildcards
        self._dial_timeout = float(cfg.dial_timeout)
        self._write_timeout = float(cfg.write_timeout)
        self._tls = ssl_context(cfg.tls, f"{where}.tls")
        self._tls_hostname = cfg.tls.server_name or None
        self._nc = NatsClient()
        self._handler: BrokerEventHandler | None = None
        self._control_handler: ControlEventHandler | None = None
        # subject -> (subscription, the channel it was made for): Centrifugo's subs map.
        self._subs: dict[str, tuple[Subscription, str]] = {}
        self._control_subs: list[Subscription] = []
        self._connecting: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._failures = 0
        self._closing = False
        self._subscribed = False  # connected, with every SUB confirmed by the server
        if self._raw:
            log.info("raw mode of Nats enabled (raw_mode_prefix %r)", cfg.raw_mode.prefix)

    # --- lifecycle ---

    async def run_control(self, handler: ControlEventHandler) -> None:
        """Control messages to every node and to `handler.id` go to `handler` (subscribed
        once connected; nats-py resubscribes them after every reconnect)."""
        self._control_handler = handler
        await self._start()

    async def run(self, handler: BrokerEventHandler) -> None:
        """Starts connecting in the background; returns once connected or after a short
        grace, unhealthy and still trying. Never raises because NATS is away."""
        self._handler = handler
        await self._start()

    async def _start(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self._dial_timeout + FIRST_TRY_GRACE)

    async def _connect(self) -> None:
        """The first connection, retried by nats-py forever (max_reconnect_attempts -1, every
        2 s), then the control subscriptions."""
        await self._nc.connect(
            servers=self._servers,
            connect_timeout=self._dial_timeout,  # type: ignore[arg-type]  # float seconds
            flush_timeout=self._write_timeout,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            pending_size=0,  # nothing buffered while away: publish fails at once
            tls=self._tls,
            tls_hostname=self._tls_hostname,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        if self._failures:
            log.info("nats %s reached after %d failed attempt(s)", self._where(), self._failures)
            self._failures = 0
        handler = self._control_handler
        if handler is not None:
            for subject in (self._subjects.control, self._subjects.node(handler.id)):
                self._control_subs.append(await self._nc.subscribe(subject, cb=self._on_control))
            await self._confirm()
        log.info("broker running (nats, %s)", self._where())
        self._subscribed = True
        self._ready.set()

    async def _confirm(self) -> None:
        """Returns once the server has processed every command sent so far (SUBs above all).

        Two PING/PONG round trips, not one: nats-py's flush() (2.16, `_send_ping`) writes its
        PING straight to the socket, ahead of commands still in its pending buffer, so one
        PONG can come back before a SUB queued just before reached the server (seen here as
        lost messages in about one run in three). The first flush kicks the buffer out; the
        second PING follows it on the wire, so its PONG answers for it."""
        for _ in range(2):
            await self._nc.flush(CONFIRM_TIMEOUT)  # type: ignore[arg-type]  # float seconds

    def _where(self) -> str:
        url = self._nc.connected_url
        if url is not None:
            return f"{url.hostname}:{url.port}"
        # Never the credentials of a nats://user:pass@host url (Centrifugo's StripPassword).
        return ",".join(u.rpartition("@")[2] for u in self._servers)

    async def _on_error(self, e: Exception) -> None:
        # One warning when an outage starts, debug while it lasts (nats-py calls this on
        # every failed attempt).
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "nats %s unreachable, retrying: %r", self._where(), e)

    async def _on_disconnected(self) -> None:
        self._subscribed = False
        if self._ready.is_set() and not self._closing:
            log.warning("nats connection lost, reconnecting")

    async def _on_reconnected(self) -> None:
        # nats-py calls this after its PING/PONG following the resent SUBs: the server has
        # every subscription again, so a publication from now on reaches this node.
        self._subscribed = True
        log.info("nats %s reconnected after %d failed attempt(s)", self._where(), self._failures)
        self._failures = 0

    async def close(self) -> None:
        self._closing = True
        task = self._connecting
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(*_FAILURES):
            await self._nc.close()

    @property
    def healthy(self) -> bool:
        """Connected to NATS with every subscription in place again after a reconnect (the
        server answered the PING that follows the resent SUBs)."""
        return self._subscribed and self._nc.is_connected

    # --- delivery ---

    async def _on_control(self, msg: Msg) -> None:
        handler = self._control_handler
        if handler is not None:
            handler.handle_control(msg.data)

    def _on_client(self, sub_subject: str, subject: str, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        if self._raw:
            entry = self._subs.get(sub_subject)
            if entry is None:
                return  # unsubscribed meanwhile (Centrifugo drops it too)
            prefix = self._subjects.raw_prefix
            concrete = subject[len(prefix) :] if subject.startswith(prefix) else subject
            handler.handle_publication(entry[1], Publication(data, channel=concrete), "")
            return
        try:
            push = codec.decode_push(data)
        except codec.UndecodablePush as e:
            log.error("error unmarshal push from Nats on %r: %s", subject, e)
            return
        if push.kind == "pub":
            pub = push.pub
            assert pub is not None
            channel = push.channel
            if self._allow_wildcards:
                prefix = self._subjects.client_prefix
                channel = (
                    sub_subject[len(prefix) :] if sub_subject.startswith(prefix) else sub_subject
                )
                pub.channel = push.channel
            handler.handle_publication(channel, pub, push.epoch)
        elif push.kind == "join":
            assert push.info is not None
            handler.handle_join(push.channel, push.info)
        else:
            assert push.info is not None
            handler.handle_leave(push.channel, push.info)

    def _client_callback(self, sub_subject: str) -> Any:
        on_client = self._on_client

        async def on_msg(msg: Msg) -> None:
            on_client(sub_subject, msg.subject, msg.data)

        return on_msg

    # --- subscriptions ---

    async def subscribe(self, channels: list[str]) -> None:
        """SUB each channel's subject, then one PING/PONG: once the server answered, it
        delivers everything published after the return."""
        for ch in channels:
            if not self._allow_wildcards and has_wildcard(ch):
                raise ClientError(ERROR_BAD_REQUEST)
        if not self._nc.is_connected:
            log.warning("subscribe failed: nats not connected")
            raise ClientError(ERROR_INTERNAL)
        try:
            for ch in channels:
                subject = self._subjects.client(ch)
                if subject in self._subs:
                    continue
                sub = await self._nc.subscribe(subject, cb=self._client_callback(subject))
                self._subs[subject] = (sub, ch)
            await self._confirm()
        except _FAILURES as e:
            log.warning("subscribe failed: %r", e)
            raise ClientError(ERROR_INTERNAL) from None

    async def unsubscribe(self, channels: list[str]) -> None:
        for ch in channels:
            entry = self._subs.pop(self._subjects.client(ch), None)
            if entry is not None:
                # While away nats-py forgets it at once and sends UNSUB after reconnecting.
                with contextlib.suppress(*_FAILURES):
                    await entry[0].unsubscribe()

    # --- commands ---

    async def _send(self, subject: str, payload: bytes, what: str) -> None:
        if not self._nc.is_connected:
            log.warning("%s failed: nats not connected", what)
            raise ClientError(ERROR_INTERNAL)
        try:
            await self._nc.publish(subject, payload)
        except _FAILURES as e:
            log.warning("%s failed: %r", what, e)
            raise ClientError(ERROR_INTERNAL) from None

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        if has_wildcard(channel):
            raise ClientError(ERROR_BAD_REQUEST)
        subject = self._subjects.client(channel)
        if self._raw:
            payload = data
        else:
            now_ms = time.time_ns() // 1_000_000
            pub = Publication(data, opts.client_info, 0, opts.tags, now_ms, opts.delta)
            payload = codec.encode_publication_push(channel, pub)
        await self._send(subject, payload, f"publish to {channel!r}")
        return PublishResult(StreamPosition())

    async def _publish_info(self, channel: str, payload: bytes) -> None:
        # Best effort, as the Redis engine's join/leave: a lost join is logged, not raised.
        with contextlib.suppress(ClientError):
            await self._send(self._subjects.client(channel), payload, f"join/leave to {channel!r}")

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if not self._raw:
            await self._publish_info(channel, codec.encode_join_push(channel, info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if not self._raw:
            await self._publish_info(channel, codec.encode_leave_push(channel, info))

    async def publish_control(self, data: bytes, node_id: str = "") -> None:
        subject = self._subjects.node(node_id) if node_id else self._subjects.control
        await self._send(subject, data, "control publish")

    async def history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        raise ClientError(ERROR_NOT_AVAILABLE)

    async def remove_history(self, channel: str) -> None:
        raise ClientError(ERROR_NOT_AVAILABLE)


# Conformance, checked by mypy (Centrifugo's `var _ centrifuge.Broker = (*NatsBroker)(nil)`).
_broker: type[Broker] = NatsBroker
_controller: type[Controller] = NatsBroker
_health: type[HealthReporter] = NatsBroker
