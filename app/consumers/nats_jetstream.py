"""The `nats_jetstream` async consumer: server API commands (or publication data) from a NATS
JetStream stream through a durable pull consumer, each message acknowledged after its command
succeeded.

Faithful to Centrifugo's internal/consuming/nats_jetstream.go:

- Connection: never gives up reconnecting; a credentials file, else user/password, else token;
  TLS from `tls`. The consumer: create-or-update the durable `durable_consumer_name` on
  `stream_name` with `subjects` as its filter, `deliver_policy` new|all, AckWait 30 s and
  `max_ack_pending` (`$JS.API.CONSUMER.CREATE.<stream>.<name>` without an action: create or
  update) -- or, with `use_existing_consumer`, only look it up, so the operator's consumer (ack
  wait, backoff, max deliver...) rules. Centrifugo fails its start when either fails; here, as
  every consumer of this server (app/consumers/__init__.py), the start returns at once and the
  consumer connects and binds in the background, one log line and one error count per failure:
  nats-py retries the first connection every 2 s as it retries a reconnect, a failed bind is
  retried with the framework's backoff.
- Each message: the `method_header` value + payload is one server API command; in
  `publication_data_mode` the payload is data published into the channels its headers name
  (app/consumers/header_publication.py; a message that cannot be published -- no channels, a
  bad delta/version header -- is logged and acked). Done (or failed for good: logged by the
  dispatcher) => ack and `processed`. `Retry` (an internal error) => nak with a delay that grows
  with the message's delivery count (Centrifugo's natsNakDelay: `Backoff` from 0 with
  min(num_delivered, 10) retries, at most 5 s) and one `errors` count: JetStream redelivers it,
  and a poison message or a broker outage never spins. Why nak and not retry in place (as the
  Kafka consumer does): JetStream redelivers a message that stays unacked past AckWait to
  another worker, so a worker retrying in place past 30 s would race that redelivery.
- The consumer (or its stream) deleted on the server, an in-memory stream lost in a NATS
  restart, or no heartbeat for two heartbeat periods: re-bind (create again) with backoff,
  endlessly; the backoff ramp is reset only after a session that ran 30 s, so a flapping
  consumer still backs off (natsConsumeBackoffReset).

Only one worker processes a message at a time: every gunicorn worker (each one a node, as
every Centrifugo node runs its consumers) pulls from the same durable consumer, and JetStream
hands each message to one pull request only; it is handed out again only after a nak or after
AckWait without an ack (a killed worker). A worker runs its messages one after another, so
`max_ack_pending` bounds how many messages all workers together have in flight: with
`max_ack_pending: 1` the stream order is the processing order across workers and across a
worker's death (the next message is delivered only after the previous one was acked, and a nak'd
one stays pending until it is redelivered). With more in flight two workers may run neighbouring
messages at the same time, as two Centrifugo nodes would. A message executed but not acked
before a crash runs again on redelivery: publishers set `idempotency_key`, as Centrifugo advises.

The pull loop is Go's `Consume` (jetstream/pull.go) in small: one inbox subscription, pull
requests of PULL_BATCH messages with a 30 s expiry and a 5 s idle heartbeat (Centrifugo's
PullHeartbeat), topped up when half of them were delivered, and re-issued at once after a
reconnect (a NATS restart forgets pending pull requests). Messages are processed as they arrive.
nats-py's `PullSubscription.fetch` is not used: after the first message of a waiting request it
waits for the whole batch or the whole timeout, so a lone message on an idle stream would wait
seconds. A stop naks (without delay) what was delivered but not yet processed, so other workers
take it at once instead of after AckWait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from app.config.schema_consumers import ConsumerConfig, NatsJetStreamConsumerConfig
from app.consumers import ConsumerContext, metrics
from app.consumers.backoff import Backoff
from app.consumers.dispatch import Dispatcher, Retry
from app.consumers.header_publication import SkipMessage, publication_from_headers
from app.consumers.tasks import ConsumerTasks
from app.tls import ssl_context

if TYPE_CHECKING:
    from app.consumers import Consumer

__all__ = ["NatsJetStreamConsumer", "create_consumer", "PULL_BATCH", "ACK_WAIT"]

log = logging.getLogger("centrifugo.consumers.nats_jetstream")

ACK_WAIT = 30.0  # seconds; Centrifugo's fixed AckWait of the consumer it creates
PULL_BATCH = 100  # messages per pull request (Go's Consume: 500; a worker runs them one by one)
PULL_EXPIRES = 30.0  # seconds a pull request waits on the server (Go's default)
HEARTBEAT = 5.0  # seconds; Centrifugo's PullHeartbeat: silence for two of them => re-bind
API_TIMEOUT = 10.0  # seconds; Centrifugo's deadline of consumer creation
BACKOFF_RESET_AFTER = 30.0  # seconds; Centrifugo's natsConsumeBackoffReset
NAK_DELAY_MAX_RETRIES = 10  # Centrifugo caps the exponent at 10 deliveries
_STATUS = api.Header.STATUS.value
_PENDING = "Nats-Pending-Messages"


def create_consumer(cfg: ConsumerConfig, ctx: ConsumerContext) -> NatsJetStreamConsumer:
    return NatsJetStreamConsumer(cfg.name, cfg.nats_jetstream, ctx.dispatcher)


class _Rebind(Exception):
    """The consumer must be bound again: gone on the server, or its pulls went silent."""


class NatsJetStreamConsumer:
    """One configured `nats_jetstream` consumer in one worker."""

    def __init__(self, name: str, cfg: NatsJetStreamConsumerConfig, dispatcher: Dispatcher):
        self._name = name
        self._cfg = cfg
        self._dispatcher = dispatcher
        self._tasks = ConsumerTasks(name)
        self._nc: NatsClient | None = None
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._reconnected = asyncio.Event()
        self._pending = 0  # messages still owed by our open pull requests
        self._current: Msg | None = None  # taken from the inbox, not yet acked or nak'd

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        self._tasks.spawn(self._run(), "consume")

    async def stop(self) -> None:
        await self._tasks.stop()
        nc, self._nc = self._nc, None
        sub, self._sub = self._sub, None
        if sub is not None and nc is not None and nc.is_connected:
            try:  # no more deliveries; what the server already sent lands in our inbox
                await asyncio.wait_for(sub.drain(), API_TIMEOUT)
            except (nats.errors.Error, TimeoutError) as e:
                log.warning("consumer %s: draining the pull subscription: %r", self._name, e)
        # Delivered to us, never dispatched: back to the stream now, not after AckWait.
        current, self._current = self._current, None
        if current is not None:
            await _quietly(current.nak())
        while not self._inbox.empty():
            msg = self._inbox.get_nowait()
            if not _status(msg):
                await _quietly(msg.nak())
        if nc is not None and not nc.is_closed:
            try:
                if nc.is_connected:
                    await nc.flush(int(API_TIMEOUT))  # close() drops what is still buffered
                await nc.close()
            except (nats.errors.Error, OSError, TimeoutError) as e:
                log.warning("consumer %s: closing the NATS connection: %r", self._name, e)

    # ------------------------------------------------------------------------- the loop

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._tasks.stopping.is_set():
            try:
                await self._connect()
                await self._bind()
            except (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError, _Rebind) as e:
                metrics.error(self._name)
                delay = backoff.next()
                log.error(
                    "consumer %s: cannot consume from NATS JetStream, retrying in %.3fs: %s",
                    self._name,
                    delay,
                    _describe(e),
                )
                await self._tasks.sleep(delay)
                continue
            started = time.monotonic()
            log.info("consumer %s: consuming started, waiting for messages", self._name)
            try:
                await self._consume()
            except _Rebind as e:
                log.warning("consumer %s: consumer unavailable, re-creating it: %s", self._name, e)
            if time.monotonic() - started > BACKOFF_RESET_AFTER:
                backoff.reset()
            else:
                # A session that ended at once (flapping) waits before the next bind.
                await self._tasks.sleep(backoff.next())

    async def _connect(self) -> None:
        if self._nc is not None:
            return  # nats-py reconnects by itself once connected
        self._nc = await nats.connect(**self._connect_options())
        self._sub = await self._nc.subscribe(self._nc.new_inbox(), cb=self._deliver)

    async def _deliver(self, msg: Msg) -> None:
        self._inbox.put_nowait(msg)

    def _connect_options(self) -> dict[str, Any]:
        cfg, name = self._cfg, self._name

        async def on_error(e: Exception) -> None:
            # Also each failed attempt of the first connection, which nats-py retries by
            # itself every 2 s (max_reconnect_attempts -1 holds for it too).
            metrics.error(name)
            log.warning("consumer %s: NATS: %r", name, e)

        async def on_disconnected() -> None:
            log.warning("consumer %s: disconnected from NATS", name)

        async def on_reconnected() -> None:
            log.info("consumer %s: reconnected to NATS", name)
            self._reconnected.set()

        opts: dict[str, Any] = {
            "servers": [cfg.url],
            "max_reconnect_attempts": -1,  # Centrifugo: nats.MaxReconnects(-1)
            "allow_reconnect": True,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "connect_timeout": API_TIMEOUT,
        }
        # One credential kind, in Centrifugo's order of precedence.
        if cfg.credentials_file:
            opts["user_credentials"] = cfg.credentials_file
        elif cfg.username:
            opts["user"], opts["password"] = cfg.username, cfg.password
        elif cfg.token:
            opts["token"] = cfg.token
        tls = ssl_context(cfg.tls, f"consumers[{name}].nats_jetstream.tls")
        if tls is not None:
            opts["tls"] = tls
            if cfg.tls.server_name:
                opts["tls_hostname"] = cfg.tls.server_name
        return opts

    async def _bind(self) -> None:
        """Create-or-update (or look up) the durable consumer."""
        assert self._nc is not None
        cfg = self._cfg
        js = self._nc.jetstream(timeout=API_TIMEOUT)
        try:
            if cfg.use_existing_consumer:
                await js.consumer_info(cfg.stream_name, cfg.durable_consumer_name)
            else:
                await js.add_consumer(cfg.stream_name, self._consumer_config())
        except nats.js.errors.NotFoundError as e:
            raise _Rebind(f"not found: {e.description}") from None

    def _consumer_config(self) -> api.ConsumerConfig:
        cfg = self._cfg
        policy = api.DeliverPolicy.ALL if cfg.deliver_policy == "all" else api.DeliverPolicy.NEW
        return api.ConsumerConfig(
            name=cfg.durable_consumer_name,
            durable_name=cfg.durable_consumer_name,
            filter_subjects=list(cfg.subjects) or None,
            deliver_policy=policy,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            max_ack_pending=cfg.max_ack_pending,
        )

    # ------------------------------------------------------------------------- pulling

    async def _pull(self, batch: int) -> None:
        assert self._nc is not None and self._sub is not None
        request = {
            "batch": batch,
            "expires": int(PULL_EXPIRES * 1e9),
            "idle_heartbeat": int(HEARTBEAT * 1e9),
        }
        subject = (
            f"$JS.API.CONSUMER.MSG.NEXT.{self._cfg.stream_name}.{self._cfg.durable_consumer_name}"
        )
        await self._nc.publish(subject, json.dumps(request).encode(), reply=self._sub.subject)
        self._pending += batch

    async def _consume(self) -> None:
        """Pull and process until the consumer must be re-bound (_Rebind) or the task ends."""
        self._pending = 0
        self._reconnected.clear()
        await self._pull(PULL_BATCH)
        while True:
            if self._reconnected.is_set():
                # The restarted (or other) server knows none of our pull requests.
                self._reconnected.clear()
                self._pending = 0
            if self._pending <= PULL_BATCH // 2:
                await self._pull(PULL_BATCH - self._pending)
            try:
                msg = await asyncio.wait_for(self._inbox.get(), 2 * HEARTBEAT)
            except TimeoutError:
                if self._nc is not None and self._nc.is_connected:
                    raise _Rebind("no heartbeat") from None
                continue  # disconnected: nats-py reconnects; the event above re-pulls
            status = _status(msg)
            if status:
                self._on_status(status, msg)
                continue
            self._pending -= 1
            # Set until handled: a stop that cancels us before (or, past the grace, during)
            # the dispatch hands it back with the rest.
            self._current = msg
            async with self._tasks.critical():
                await self._handle(msg)
            self._current = None

    def _on_status(self, status: str, msg: Msg) -> None:
        """A status message on our inbox: Go's pull.go handleStatusMsg, in short."""
        headers = msg.headers or {}
        if status == "100":
            return  # idle heartbeat: the request is alive
        description = _description(headers)
        if status in ("408", "409") and "Consumer Deleted" not in description:
            # A request ended (expired, leadership change, limits): what it still owed, gone.
            owed = headers.get(_PENDING, "")
            self._pending = max(self._pending - int(owed), 0) if owed.isdigit() else 0
            if status == "409":
                log.warning("consumer %s: pull request ended: %s", self._name, description)
            return
        # 409 Consumer Deleted, 404, 503 no responders (no such consumer or stream): re-bind.
        raise _Rebind(f"status {status} {description}".strip())

    # ------------------------------------------------------------------------- one message

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._process(msg)
        except Retry as e:
            metrics.error(self._name)
            log.error("consumer %s: processing message failed: %s", self._name, e)
            if not await _quietly(msg.nak(delay=_nak_delay(msg))):
                log.error("consumer %s: failed to nak message", self._name)
            return
        if await _quietly(msg.ack()):
            metrics.processed(self._name)
        else:
            metrics.error(self._name)
            log.error("consumer %s: failed to ack message", self._name)

    async def _process(self, msg: Msg) -> None:
        headers = msg.headers or {}
        mode = self._cfg.publication_data_mode
        if not mode.enabled:
            method = headers.get(self._cfg.method_header, "") if self._cfg.method_header else ""
            await self._dispatcher.dispatch_command(method, msg.data)
            return
        try:
            channels, pub = publication_from_headers(msg.data, headers.items(), mode)
        except SkipMessage as e:
            level = logging.INFO if e.level == "info" else logging.ERROR
            log.log(level, "consumer %s: %s, skipping message", self._name, e)
            return
        await self._dispatcher.dispatch_publication(channels, pub)


def _status(msg: Msg) -> str:
    """The status code of a JetStream status message (no payload, a Status header), or ""."""
    if msg.data or not msg.headers:
        return ""
    return str(msg.headers.get(_STATUS, ""))


def _description(headers: dict[str, str]) -> str:
    # nats-py keys the description with the Header enum member, which does not hash as "Description".
    for key, value in headers.items():
        if key == api.Header.DESCRIPTION:
            return str(value)
    return ""


def _nak_delay(msg: Msg) -> float:
    """Redelivery delay of a failed message: Centrifugo's natsNakDelay."""
    retries = 1
    try:
        delivered = msg.metadata.num_delivered or 0
    except (nats.errors.Error, ValueError, IndexError):
        delivered = 0
    if delivered > 0:
        retries = min(delivered, NAK_DELAY_MAX_RETRIES)
    backoff = Backoff()
    backoff.retries = retries - 1  # next() counts one more: Go's getNextBackoffDuration(0, n)
    return backoff.next()


async def _quietly(ack: Any) -> bool:
    """Await an ack/nak; False when the connection refused it (closed, or acked already)."""
    try:
        await ack
    except (nats.errors.Error, OSError) as e:
        log.debug("ack/nak failed: %r", e)
        return False
    return True


def _describe(e: BaseException) -> str:
    if isinstance(e, nats.js.errors.APIError) and e.description:
        return f"{type(e).__name__}: {e.description}"
    return repr(e)


if TYPE_CHECKING:
    _: type[Consumer] = NatsJetStreamConsumer
