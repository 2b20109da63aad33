"""The `kafka` async consumer: server API commands (or publication data) from Kafka topics as a
consumer group member, offsets committed only for records whose command succeeded.

UNTESTED AGAINST A BROKER: no Kafka broker can run on this project's machines (no package
registry reachable here ships one), so only the pure parts (options, header reading) have tests;
the consumer follows Centrifugo's internal/consuming/kafka.go step by step, with aiokafka in
place of franz-go:

- Client: `brokers` as seeds, `topics`, group `consumer_group` (static membership with
  `instance_id`), client id `centrifugo`, `fetch_max_wait` (0: 500 ms), `fetch_max_bytes` (0:
  the client's 50 MB), read_committed unless `fetch_read_uncommitted`, a new group starting at
  the earliest offset (franz-go's default), no auto-commit. TLS from `tls`; SASL `plain`,
  `scram-sha-256`, `scram-sha-512`. Not available in aiokafka: `aws-msk-iam` (and with it
  `assume_role_arn`) -- checkconfig refuses an enabled kafka item with it (app/config/
  validation.py), as Centrifugo refuses a mechanism it does not know at start -- and a
  per-broker `dial_timeout` (aiokafka's connection timeout is its request timeout):
  app/config/support.py reports the key. Centrifugo fails its start when no broker answers
  (franz-go's Ping); here, as every consumer of this server (app/consumers/__init__.py), the
  start returns at once and the client is created in the background, retried with backoff.
- Records compressed with snappy, lz4 or zstd need aiokafka's optional `cramjam` (`pip install
  aiokafka[snappy,lz4,zstd]`), not installed by this project; gzip and uncompressed work.
- Ordering: one task per assigned partition processes its records one after another, so the
  order within a partition is kept; partitions run in parallel. The poll loop hands each
  partition's records to that task's queue and pauses the partition when the queue would reach
  `partition_queue_max_size` (-1: pause on every poll; 0: 1000); the task resumes it after each
  batch, so at most one more batch is fetched ahead.
- A record whose command fails with a retryable error is retried in place with backoff
  (Centrifugo's getNextBackoffDuration: 10-20 ms doubling, at most 5 s), endlessly, counting
  `errors` per failure; nothing behind it in the partition runs meanwhile. After success (or a
  non-retryable failure, logged by the dispatcher, or a skipped publication-data record) the
  record is `processed` and its offset+1 is marked; marked offsets are committed every
  COMMIT_INTERVAL (franz-go's AutoCommitMarks), on revocation (before the partition moves to
  another member) and at close. A record is never committed before its command succeeded; a
  crash between success and commit makes it run again on the next owner: use idempotency keys.
- Only one worker of a node consumes a partition at a time: each worker is a group member and
  the group coordinator assigns every partition to one member. On a rebalance the revoked
  partitions' tasks are stopped and their marks committed before the partition is given away.
- A fetch error that the client cannot recover from (anything but aiokafka's retriable ones)
  re-creates the client with backoff, endlessly, as Centrifugo re-inits its franz-go client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from app.config.schema_consumers import ConsumerConfig, KafkaConsumerConfig
from app.consumers import ConsumerContext, metrics
from app.consumers.backoff import Backoff, dispatch_until_done
from app.consumers.dispatch import Dispatcher
from app.consumers.header_publication import SkipMessage, publication_from_headers
from app.consumers.tasks import ConsumerTasks
from app.tls import ssl_context

if TYPE_CHECKING:
    from app.consumers import Consumer

__all__ = [
    "KafkaConsumer",
    "create_consumer",
    "client_options",
    "queue_threshold",
    "headers_of",
    "method_of",
    "SASL_MECHANISMS",
    "COMMIT_INTERVAL",
    "CLIENT_ID",
]

log = logging.getLogger("centrifugo.consumers.kafka")

CLIENT_ID = "centrifugo"  # Centrifugo's kafkaClientID
COMMIT_INTERVAL = 5.0  # seconds; franz-go's default auto-commit interval of marked offsets
POLL_TIMEOUT = 1.0  # seconds one getmany waits at most (it returns as soon as records come)

# Centrifugo's sasl_mechanism values -> aiokafka's; aws-msk-iam has no aiokafka mechanism
# (app/config/validation.py refuses it and any other value at start, as Centrifugo refuses a
# mechanism it does not know).
SASL_MECHANISMS = {
    "plain": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-512": "SCRAM-SHA-512",
}


def create_consumer(cfg: ConsumerConfig, ctx: ConsumerContext) -> KafkaConsumer:
    return KafkaConsumer(cfg.name, cfg.kafka, ctx.dispatcher)


def client_options(name: str, cfg: KafkaConsumerConfig) -> dict[str, Any]:
    """AIOKafkaConsumer keyword arguments for `cfg`: Centrifugo's initClient options and
    NewKafkaConsumer defaults. ValueError for a SASL mechanism aiokafka lacks."""
    opts: dict[str, Any] = {
        "bootstrap_servers": list(cfg.brokers),
        "group_id": cfg.consumer_group,
        "client_id": CLIENT_ID,
        "enable_auto_commit": False,  # offsets are committed by us, only after success
        "auto_offset_reset": "earliest",  # franz-go's default for a group without offsets
        "fetch_max_wait_ms": int((cfg.fetch_max_wait or 0.5) * 1000),
        "isolation_level": "read_uncommitted" if cfg.fetch_read_uncommitted else "read_committed",
    }
    if cfg.fetch_max_bytes > 0:
        opts["fetch_max_bytes"] = cfg.fetch_max_bytes
    if cfg.instance_id:
        opts["group_instance_id"] = cfg.instance_id
    tls = ssl_context(cfg.tls, f"consumers[{name}].kafka.tls")
    if tls is not None:
        opts["ssl_context"] = tls
    if cfg.sasl_mechanism:
        mechanism = SASL_MECHANISMS.get(cfg.sasl_mechanism)
        if mechanism is None:
            raise ValueError(f"unsupported SASL mechanism: {cfg.sasl_mechanism}")
        opts["sasl_mechanism"] = mechanism
        opts["sasl_plain_username"] = cfg.sasl_user
        opts["sasl_plain_password"] = cfg.sasl_password
        opts["security_protocol"] = "SASL_SSL" if tls is not None else "SASL_PLAINTEXT"
    elif tls is not None:
        opts["security_protocol"] = "SSL"
    return opts


def queue_threshold(cfg: KafkaConsumerConfig) -> int:
    """Records queued for a partition at which it is paused (Centrifugo: -1 -> 0, 0 -> 1000)."""
    if cfg.partition_queue_max_size == -1:
        return 0
    return cfg.partition_queue_max_size or 1000


def max_poll_records(cfg: KafkaConsumerConfig) -> int:
    return cfg.max_poll_records or 100


def headers_of(record_headers: Sequence[tuple[str, bytes]] | None) -> list[tuple[str, str]]:
    """A record's headers as text pairs, in record order (Go reads them as string(bytes))."""
    return [(k, v.decode("utf-8", "replace")) for k, v in record_headers or ()]


def method_of(headers: list[tuple[str, str]], method_header: str) -> str:
    """Centrifugo's getHeaderValue: the first header of that name; "" when it is not set."""
    if not method_header:
        return ""
    for key, value in headers:
        if key == method_header:
            return value
    return ""


@dataclass(eq=False)
class _Partition:
    """The task processing one assigned partition and the record batches queued for it."""

    tp: TopicPartition
    queue: asyncio.Queue[list[ConsumerRecord]] = field(default_factory=asyncio.Queue)
    queued: int = 0  # records in `queue`
    task: asyncio.Task[None] | None = None


class KafkaConsumer:
    """One configured `kafka` consumer in one worker: one consumer group member."""

    def __init__(self, name: str, cfg: KafkaConsumerConfig, dispatcher: Dispatcher) -> None:
        self._name = name
        self._cfg = cfg
        self._dispatcher = dispatcher
        self._tasks = ConsumerTasks(name)
        self._client: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._marked: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._threshold = queue_threshold(cfg)

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        self._tasks.spawn(self._run(), "poll")
        self._tasks.spawn(self._commit_loop(), "commit")

    async def stop(self) -> None:
        """The record being dispatched finishes and is marked; then the partition tasks stop,
        the marks are committed and the member leaves the group."""
        await self._tasks.stop()
        await self._stop_client()

    # ------------------------------------------------------------------------- client

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._tasks.stopping.is_set():
            try:
                self._client = await self._new_client()
            except (KafkaError, OSError, ValueError) as e:
                metrics.error(self._name)
                delay = backoff.next()
                log.error(
                    "consumer %s: error initializing Kafka client, retrying in %.3fs: %r",
                    self._name,
                    delay,
                    e,
                )
                await self._tasks.sleep(delay)
                continue
            backoff.reset()
            try:
                await self._poll_until_fatal(self._client)
            except KafkaError as e:
                metrics.error(self._name)
                log.error("consumer %s: fatal error polling Kafka, re-init: %r", self._name, e)
            await self._stop_client()

    async def _new_client(self) -> AIOKafkaConsumer:
        consumer = self

        class Listener(ConsumerRebalanceListener):
            """aiokafka awaits these inside a rebalance, before and after it."""

            async def on_partitions_revoked(self, revoked: Any) -> None:
                await consumer._revoked(list(revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                consumer._assigned(list(assigned))

        client = AIOKafkaConsumer(**client_options(self._name, self._cfg))
        client.subscribe(topics=list(self._cfg.topics), listener=Listener())
        try:
            await client.start()  # bootstraps from a seed broker: franz-go's Ping
        except BaseException:
            await client.stop()
            raise
        return client

    async def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        await self._kill(list(self._partitions))
        await self._commit(client)
        try:
            await client.stop()  # leaves the group (a static member keeps its place)
        except (KafkaError, OSError) as e:
            log.warning("consumer %s: error stopping Kafka client: %r", self._name, e)

    # ------------------------------------------------------------------------- polling

    async def _poll_until_fatal(self, client: AIOKafkaConsumer) -> None:
        limit = max_poll_records(self._cfg)
        while True:
            try:
                batches = await client.getmany(
                    timeout_ms=int(POLL_TIMEOUT * 1000), max_records=limit
                )
            except KafkaError as e:
                if not e.retriable:
                    raise
                metrics.error(self._name)
                log.error("consumer %s: error while polling: %r", self._name, e)
                await self._tasks.sleep(POLL_TIMEOUT)
                continue
            for tp, records in batches.items():
                part = self._partitions.get(tp)
                if part is None or not records:
                    continue
                # Pause before queueing, so the task's resume cannot come before our pause.
                if part.queued + len(records) >= self._threshold:
                    client.pause(tp)
                part.queued += len(records)
                part.queue.put_nowait(records)

    # ------------------------------------------------------------------------- rebalance

    def _assigned(self, tps: list[TopicPartition]) -> None:
        if self._tasks.stopping.is_set():
            return  # shutting down: no task that would be killed at once
        for tp in tps:
            if tp not in self._partitions:
                part = _Partition(tp)
                part.task = asyncio.create_task(self._consume(part), name=f"kafka {tp}")
                self._partitions[tp] = part

    async def _revoked(self, tps: list[TopicPartition]) -> None:
        """Before the partitions move to another member: stop their tasks and commit their
        marks while we still own them."""
        await self._kill(tps)
        if self._client is not None:
            await self._commit(self._client)
        for tp in tps:
            self._marked.pop(tp, None)

    async def _kill(self, tps: list[TopicPartition]) -> None:
        """Stop the tasks of `tps`. A record in the middle of its retries is given up: the
        partition's next owner starts again from the last committed offset."""
        parts = [p for tp in tps if (p := self._partitions.pop(tp, None)) is not None]
        for part in parts:
            if part.task is not None:
                part.task.cancel()
        for part in parts:
            if part.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await part.task

    # ------------------------------------------------------------------------- processing

    async def _consume(self, part: _Partition) -> None:
        """One partition's records, one after another, each marked after it is done."""
        while True:
            records = await part.queue.get()
            part.queued -= len(records)
            for record in records:
                async with self._tasks.critical():
                    done = await dispatch_until_done(
                        self._name, functools.partial(self._process, record), self._tasks.stopping
                    )
                    if not done:
                        return  # stopping: left unmarked, the next owner runs it
                    self._marked[part.tp] = record.offset + 1
                    metrics.processed(self._name)
            # One batch done: let the poll loop fetch the next one for this partition.
            client = self._client
            if client is not None and part.tp in client.assignment():
                client.resume(part.tp)

    async def _process(self, record: ConsumerRecord) -> None:
        headers = headers_of(record.headers)
        data = record.value or b""
        mode = self._cfg.publication_data_mode
        if not mode.enabled:
            method = method_of(headers, self._cfg.method_header)
            await self._dispatcher.dispatch_command(method, data)
            return
        try:
            channels, pub = publication_from_headers(data, headers, mode)
        except SkipMessage as e:
            level = logging.INFO if e.level == "info" else logging.ERROR
            log.log(
                level,
                "consumer %s: %s (%s/%s), skip message",
                self._name,
                e,
                record.topic,
                record.partition,
            )
            return
        await self._dispatcher.dispatch_publication(channels, pub)

    # ------------------------------------------------------------------------- commits

    async def _commit_loop(self) -> None:
        while not await self._tasks.sleep(COMMIT_INTERVAL):
            if self._client is not None:
                await self._commit(self._client)

    async def _commit(self, client: AIOKafkaConsumer) -> None:
        """Commit the marked offsets. A failure (the group is rebalancing, the partition was
        lost) is logged and the marks kept; a lost partition's new owner redoes its records."""
        offsets = dict(self._marked)
        if not offsets:
            return
        try:
            await client.commit(offsets)
        except KafkaError as e:
            metrics.error(self._name)
            log.error("consumer %s: error committing marked offsets: %r", self._name, e)
            return
        for tp, off in offsets.items():
            if self._marked.get(tp) == off:
                del self._marked[tp]


if TYPE_CHECKING:
    _: type[Consumer] = KafkaConsumer
