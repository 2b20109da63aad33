"""The nats_jetstream consumer without a reachable NATS (a closed local port): the start
returns at once, nats-py retries the first connection in the background with one error line
per attempt, and the stop ends it. The consumer's work against a real nats-server with
JetStream is tests/e2e/test_consumer_nats_jetstream.py."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from app.api.executor import ApiExecutor
from app.config.schema_consumers import ConsumerConfig, NatsJetStreamConsumerConfig
from app.consumers import ConsumerContext
from app.consumers.dispatch import Dispatcher
from app.consumers.nats_jetstream import create_consumer
from tests.support.node import memory_node
from tests.support.ports import free_port


class _Attempts(logging.Handler):
    """Collects the consumer's NATS error lines; `twice` is set at the second."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.twice = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "NATS:" in record.getMessage():
            self.lines.append(record.getMessage())
            if len(self.lines) >= 2:
                self.twice.set()


async def test_unreachable_nats_start_returns_and_stop_is_clean(tmp_path: Path) -> None:
    js = NatsJetStreamConsumerConfig(
        url=f"nats://127.0.0.1:{free_port()}", stream_name="S", durable_consumer_name="d"
    )
    item = replace(ConsumerConfig(), name="js", enabled=True, type="nats_jetstream")
    async with memory_node(tmp_path, {}) as node:
        consumer = create_consumer(
            replace(item, nats_jetstream=js),
            ConsumerContext(dispatcher=Dispatcher(ApiExecutor(node, "consuming")), node_id="n"),
        )
        attempts = _Attempts()
        logger = logging.getLogger("centrifugo.consumers.nats_jetstream")
        logger.addHandler(attempts)
        try:
            await consumer.start()  # returns at once
            await asyncio.wait_for(attempts.twice.wait(), 10)  # nats-py retries every 2 s
        finally:
            logger.removeHandler(attempts)
        assert "consumer js: NATS: ConnectionRefusedError" in attempts.lines[0]
        await asyncio.wait_for(consumer.stop(), 5)
        await consumer.stop()  # idempotent
