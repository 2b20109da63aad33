"""A stopping nats_jetstream consumer hands back at once what it was delivered but had not
dispatched (app/consumers/nats_jetstream.py `stop`): a real nats-server with JetStream, two
consumers of one durable in one process on a memory node. Without the naks the second one
would wait AckWait (30 s) for those messages; the test allows 10 s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nats
import orjson
import pytest

from app.api.executor import ApiExecutor
from app.config.schema_consumers import ConsumerConfig, NatsJetStreamConsumerConfig
from app.consumers import ConsumerContext
from app.consumers.dispatch import Dispatcher
from app.consumers.nats_jetstream import PULL_BATCH, create_consumer
from tests.support import nats_server
from tests.support.node import memory_node

MESSAGES = 3 * PULL_BATCH
CHANNEL = "hist:stop"


@pytest.fixture
def js_server() -> Iterator[nats_server.NatsServer]:
    nats_server.require()
    server = nats_server.start(jetstream=True)
    yield server
    server.remove()


class CountingDispatcher(Dispatcher):
    """The real dispatcher, counting the commands it ran; `first` and `all_done` fire."""

    def __init__(self, executor: ApiExecutor) -> None:
        super().__init__(executor)
        self.count = 0
        self.first = asyncio.Event()
        self.all_done = asyncio.Event()

    async def dispatch_command(self, method: str, payload: bytes) -> None:
        await super().dispatch_command(method, payload)
        self.count += 1
        self.first.set()
        if self.count >= MESSAGES:
            self.all_done.set()


async def test_stop_hands_undispatched_messages_back_at_once(
    tmp_path: Path, js_server: nats_server.NatsServer
) -> None:
    nc = await nats.connect(js_server.url)
    js = nc.jetstream(timeout=5)
    await js.add_stream(name="S", subjects=["s.>"])
    for n in range(MESSAGES):
        body = {"channel": CHANNEL, "data": {"n": n}}
        await js.publish("s.x", json.dumps(body).encode(), headers={"centrifugo-method": "publish"})
    await nc.close()

    config = {
        "channel": {"namespaces": [{"name": "hist", "history_size": 1000, "history_ttl": "60s"}]}
    }
    options = NatsJetStreamConsumerConfig(
        url=js_server.url, stream_name="S", durable_consumer_name="d", deliver_policy="all"
    )
    async with memory_node(tmp_path, config) as node:
        executor = ApiExecutor(node, "consuming")
        dispatcher = CountingDispatcher(executor)
        ctx = ConsumerContext(dispatcher=dispatcher, node_id="n")

        first = create_consumer(_item("a", options), ctx)
        await first.start()
        await asyncio.wait_for(dispatcher.first.wait(), 10)
        await first.stop()  # holds up to a pull batch it has not dispatched
        assert dispatcher.count < MESSAGES

        second = create_consumer(_item("b", options), ctx)
        await second.start()
        try:
            await asyncio.wait_for(dispatcher.all_done.wait(), 10)
        finally:
            await second.stop()
        history = await executor.call("history", {"channel": CHANNEL, "limit": -1})
        # The executor answers data as the bytes stored (orjson.Fragment): read them back.
        pubs = history["publications"]
        assert [orjson.loads(orjson.dumps(p["data"]))["n"] for p in pubs] == list(range(MESSAGES))
        assert dispatcher.count == MESSAGES


def _item(name: str, options: NatsJetStreamConsumerConfig) -> ConsumerConfig:
    item = ConsumerConfig(name=name, enabled=True, type="nats_jetstream")
    return replace(item, nats_jetstream=options)
