"""The `nats_jetstream` consumer end to end: a real nats-server with JetStream (file storage in
the test's temp dir, so streams and consumers survive its restart), `python -m app --workers 2`
on the Redis engine, centrifuge-python subscribers.

Both workers pull from one durable consumer. The ordered stream's consumer is made by the test
(`use_existing_consumer`) with `max_ack_pending: 1` and a 2 s AckWait, so that a message held by
a killed worker comes back within the test's patience; the publication-data stream's consumer is
made by the server, with Centrifugo's settings.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.js import api

from tests.support import nats_server

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, RedisProcess, SdkSubscriber, redis_config, worker_pids

WORKERS = 2
ORDERED_STREAM = "CENT"
ORDERED_CONSUMER = "centrifugo_ordered"
PD_STREAM = "CENTPD"
PD_CONSUMER = "centrifugo_pd"


@pytest.fixture(scope="module")
def js_server() -> Iterator[nats_server.NatsServer]:
    nats_server.require()
    server = nats_server.start(jetstream=True)
    yield server
    server.remove()


async def _js(url: str) -> tuple[Any, Any]:
    async def quiet(e: Exception) -> None:
        pass  # the restart test's disconnects are expected

    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, error_cb=quiet)
    return nc, nc.jetstream(timeout=2)


@pytest.fixture(scope="module")
def streams(js_server: nats_server.NatsServer) -> None:
    """The two streams (file storage) and the ordered stream's consumer, made before the server
    starts: `use_existing_consumer` fails without it."""

    async def make() -> None:
        nc, js = await _js(js_server.url)
        await js.add_stream(name=ORDERED_STREAM, subjects=["cent.>"], storage="file")
        await js.add_stream(name=PD_STREAM, subjects=["pd.>"], storage="file")
        await js.add_consumer(
            ORDERED_STREAM,
            api.ConsumerConfig(
                durable_name=ORDERED_CONSUMER,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=2.0,
                max_ack_pending=1,
                filter_subject="cent.>",
            ),
        )
        await nc.close()

    asyncio.run(make())


@pytest.fixture(scope="module")
def srv(
    server_factory: Any,
    redis_server: RedisProcess,
    js_server: nats_server.NatsServer,
    streams: None,
) -> ServerHandle:
    consumers = [
        {
            "name": "ordered",
            "enabled": True,
            "type": "nats_jetstream",
            "nats_jetstream": {
                "url": js_server.url,
                "stream_name": ORDERED_STREAM,
                "durable_consumer_name": ORDERED_CONSUMER,
                "use_existing_consumer": True,
            },
        },
        {
            "name": "pubdata",
            "enabled": True,
            "type": "nats_jetstream",
            "nats_jetstream": {
                "url": js_server.url,
                "stream_name": PD_STREAM,
                "durable_consumer_name": PD_CONSUMER,
                "subjects": ["pd.>"],
                "deliver_policy": "all",
                "max_ack_pending": 7,
                "publication_data_mode": {"enabled": True},
            },
        },
    ]
    return server_factory(redis_config(redis_server.port, consumers=consumers), workers=WORKERS)


@pytest.fixture
async def api_client(srv: ServerHandle) -> AsyncIterator[ApiClient]:
    client = ApiClient(srv)
    await client.wait_nodes(WORKERS)
    yield client
    await client.close()


async def _subscriber(srv: ServerHandle, channel: str) -> SdkSubscriber:
    sub = SdkSubscriber(srv.ws_url, srv.token(f"u-{uuid.uuid4().hex[:6]}"), channel)
    await sub.start()
    return sub


async def _publish(js: Any, subject: str, payload: bytes, headers: dict[str, str]) -> None:
    """Publish until JetStream acknowledges it; Nats-Msg-Id makes a retry after a lost ack
    a duplicate the stream drops (a NATS restart loses acks in flight)."""
    for _ in range(100):
        try:
            await js.publish(subject, payload, headers=headers, timeout=1)
            return
        except (nats.errors.Error, nats.errors.TimeoutError):
            await asyncio.sleep(0.1)  # the server is restarting: no event to await from here
    raise AssertionError(f"JetStream never acknowledged {headers}")


async def _publish_commands(js: Any, channel: str, numbers: range) -> None:
    for n in numbers:
        body = {"channel": channel, "data": {"n": n}, "idempotency_key": f"{channel}-{n}"}
        headers = {"centrifugo-method": "publish", "Nats-Msg-Id": f"{channel}-{n}"}
        await _publish(js, f"cent.{n % 3}", json.dumps(body).encode(), headers)


def _numbers(sub: SdkSubscriber) -> list[int]:
    return [data["n"] for _, data in sub.pubs]


async def _consumer_info(js: Any, stream: str, consumer: str, until: Any, what: str) -> Any:
    """Poll the consumer's info until `until(info)`: acks and redeliveries are server state
    with no event to await."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        info = await js.consumer_info(stream, consumer)
        if until(info):
            return info
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: {info}")
        await asyncio.sleep(0.05)  # poll interval


def _settled(info: Any) -> bool:
    return (info.num_pending, info.num_ack_pending) == (0, 0)


@pytest.mark.timeout(180)
async def test_commands_reach_a_subscriber_once_in_order_across_worker_kill_and_nats_restart(
    srv: ServerHandle, api_client: ApiClient, js_server: nats_server.NatsServer
) -> None:
    channel = f"rec:js-{uuid.uuid4().hex[:8]}"
    sub = await _subscriber(srv, channel)
    nc, js = await _js(js_server.url)
    try:
        await _publish_commands(js, channel, range(0, 50))
        await sub.wait_for(lambda: len(sub.pubs) >= 50, what="50 publications", timeout=20)

        # 1. A worker frozen with a message in hand, then killed: JetStream gives that message
        # to the other worker after AckWait; it is published once, in its place. Messages are
        # published one at a time until one does not arrive: the frozen worker holds it (the
        # live one takes a few milliseconds). JetStream serves the workers' pull requests in
        # turn, so that happens within a few messages.
        victim = worker_pids(srv)[0]
        os.kill(victim, signal.SIGSTOP)
        n = 50
        try:
            while True:
                assert n < 100, "the frozen worker was never handed a message"
                await _publish_commands(js, channel, range(n, n + 1))
                n += 1
                try:
                    await sub.wait_for(lambda n=n: len(sub.pubs) >= n, timeout=0.5)
                except AssertionError:
                    break  # held by the frozen worker
        finally:
            os.kill(victim, signal.SIGKILL)
        n_kill = n + 50
        await _publish_commands(js, channel, range(n, n_kill))
        await sub.wait_for(
            lambda: len(sub.pubs) >= n_kill, what="all before the restart", timeout=40
        )
        await api_client.wait_nodes(WORKERS)  # gunicorn's replacement worker is up

        # 2. nats-server restarted mid-stream (same store): consumers reconnect and go on.
        total = n_kill + 200
        await _publish_commands(js, channel, range(n_kill, n_kill + 100))
        await sub.wait_for(lambda: len(sub.pubs) >= n_kill + 20, what="20 more", timeout=20)
        js_server.restart()
        await _publish_commands(js, channel, range(n_kill + 100, total))
        await sub.wait_for(lambda: len(sub.pubs) >= total, what="all", timeout=60)

        # Every message acknowledged, each published once and in order.
        await _consumer_info(js, ORDERED_STREAM, ORDERED_CONSUMER, _settled, "all acked")
        history = await api_client.result("history", {"channel": channel, "limit": -1})
        assert [p["data"]["n"] for p in history["publications"]] == list(range(total))
        assert _numbers(sub) == list(range(total))
    finally:
        await sub.stop()
        await nc.close()


async def test_publication_data_mode_consumer_created_with_centrifugo_settings(
    srv: ServerHandle, api_client: ApiClient, js_server: nats_server.NatsServer
) -> None:
    nc, js = await _js(js_server.url)
    try:
        # The server made the durable consumer: AckWait 30 s, the configured filter and limit.
        info = await js.consumer_info(PD_STREAM, PD_CONSUMER)
        assert info.config.ack_wait == 30.0
        assert info.config.max_ack_pending == 7
        assert info.config.filter_subjects == ["pd.>"] or info.config.filter_subject == "pd.>"
        assert info.config.deliver_policy == api.DeliverPolicy.ALL

        a, b = (f"rec:pd-{uuid.uuid4().hex[:8]}" for _ in range(2))
        sub_a, sub_b = await _subscriber(srv, a), await _subscriber(srv, b)
        try:
            headers = {
                "centrifugo-channels": f"{a},{b}",
                "centrifugo-idempotency-key": uuid.uuid4().hex,
                "centrifugo-tag-source": "billing",
            }
            await _publish(js, "pd.x", b'{"price":42}', headers)
            # A bad version header: skipped (acked), the next message still goes through.
            await _publish(
                js, "pd.x", b'{"bad":1}', {"centrifugo-channels": a, "centrifugo-version": "-1"}
            )
            await _publish(js, "pd.x", b'{"price":43}', {"centrifugo-channels": a})
            await sub_a.wait_for(lambda: len(sub_a.pubs) >= 2, what="2 publications in a")
            await sub_b.wait_for(lambda: len(sub_b.pubs) >= 1, what="1 publication in b")
            assert [d for _, d in sub_a.pubs] == [{"price": 42}, {"price": 43}]
            assert [d for _, d in sub_b.pubs] == [{"price": 42}]
            history = await api_client.result("history", {"channel": a, "limit": -1})
            assert [p.get("tags") for p in history["publications"]] == [{"source": "billing"}, None]
        finally:
            await sub_a.stop()
            await sub_b.stop()
        await _consumer_info(js, PD_STREAM, PD_CONSUMER, _settled, "all acked")
    finally:
        await nc.close()


async def test_command_failing_while_redis_is_down_is_redelivered_and_published_once(
    srv: ServerHandle,
    api_client: ApiClient,
    js_server: nats_server.NatsServer,
    redis_server: RedisProcess,
) -> None:
    """Runs last in the module: it stops the engine's Redis. The publish fails with an internal
    error (100: Retry), the message is nak'd with a delay and redelivered until Redis is back,
    then published once and acknowledged."""
    channel = f"rec:retry-{uuid.uuid4().hex[:8]}"
    nc, js = await _js(js_server.url)
    try:
        before = await js.consumer_info(ORDERED_STREAM, ORDERED_CONSUMER)
        redis_server.stop()
        try:
            await _publish_commands(js, channel, range(1))
            # Pending with more than one delivery: failed, nak'd, delivered again (and again).
            await _consumer_info(
                js,
                ORDERED_STREAM,
                ORDERED_CONSUMER,
                lambda i: i.num_redelivered >= 1 and i.num_ack_pending == 1,
                "the failing message redelivered",
            )
        finally:
            redis_server.start()
        await _consumer_info(js, ORDERED_STREAM, ORDERED_CONSUMER, _settled, "all acked")
        info = await js.consumer_info(ORDERED_STREAM, ORDERED_CONSUMER)
        assert info.ack_floor.stream_seq == before.ack_floor.stream_seq + 1
        await api_client.wait_health(200, streak=4)
        history = await api_client.result("history", {"channel": channel, "limit": -1})
        assert [p["data"] for p in history["publications"]] == [{"n": 0}]
        assert "consumer ordered: processing message failed" in srv.log_text()
    finally:
        await nc.close()
