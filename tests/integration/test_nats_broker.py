"""NatsBroker against a real nats-server: subjects and Push bytes exactly as Centrifugo's
NatsBroker (internal/natsbroker/broker.go) writes and reads them, control, raw mode,
wildcards, no history, and an outage (start while away, NATS restart) healing by itself.

A plain nats-py client stands in for a Centrifugo node on the same NATS: it reads what our
broker publishes and publishes what Centrifugo would, built with the generated protocol
messages (centrifugal/protocol's client.proto).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from app.config import NatsConfig, NatsRawModeConfig
from app.engines.nats import NatsBroker
from app.errors import ClientError
from app.models import ClientInfo, HistoryFilter, PublishOptions
from app.protocol.gen import client_pb2 as pb
from tests.support import nats_server
from tests.support.engine import EngineEvents, until


@pytest.fixture(scope="module")
def nats_proc() -> Iterator[nats_server.NatsServer]:
    nats_server.require()
    server = nats_server.start()
    yield server
    server.remove()


def config(url: str, **kw: Any) -> NatsConfig:
    return NatsConfig(url=url, **kw)


@pytest.fixture
async def make_broker(nats_proc) -> AsyncIterator[Any]:
    made: list[NatsBroker] = []

    async def make(url: str = "", **kw: Any) -> tuple[NatsBroker, EngineEvents]:
        broker = NatsBroker(config(url or nats_proc.url, **kw))
        events = EngineEvents()
        await broker.run_control(events)
        await broker.run(events)
        made.append(broker)
        return broker, events

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def peer(nats_proc) -> AsyncIterator[NatsClient]:
    """A bare NATS client: what a Centrifugo node on the same server sees and sends."""
    nc = await nats.connect(nats_proc.url)
    yield nc
    await nc.close()


async def capture(nc: NatsClient, subject: str) -> asyncio.Queue[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def cb(msg: Any) -> None:
        queue.put_nowait(msg)

    await nc.subscribe(subject, cb=cb)
    # Twice: nats-py's flush() PING can overtake the SUB still in its buffer (see
    # NatsBroker._confirm).
    await nc.flush()
    await nc.flush()
    return queue


async def test_publication_is_centrifugo_push_on_prefixed_subject(make_broker, peer):
    broker, _ = await make_broker()
    seen = await capture(peer, "centrifugo.client.news")
    info = ClientInfo("u1", "c1", b'{"a":1}', b'{"b":2}')
    before = int(time.time() * 1000)
    result = await broker.publish(
        "news", b'{"x":1}', PublishOptions(client_info=info, tags={"t": "v"}, delta=True)
    )
    assert result.position.offset == 0 and result.position.epoch == ""
    msg = await asyncio.wait_for(seen.get(), 5)
    push = pb.Push.FromString(msg.data)
    assert push.channel == "news"
    assert push.pub.data == b'{"x":1}'
    assert (push.pub.info.user, push.pub.info.client) == ("u1", "c1")
    assert (push.pub.info.conn_info, push.pub.info.chan_info) == (b'{"a":1}', b'{"b":2}')
    assert dict(push.pub.tags) == {"t": "v"}
    assert push.pub.delta is True
    assert before <= push.pub.time <= int(time.time() * 1000)
    assert push.pub.offset == 0


async def test_two_nodes_deliver_each_others_publications(make_broker):
    a, events_a = await make_broker()
    b, events_b = await make_broker()
    await a.subscribe(["chat"])
    await b.subscribe(["chat"])
    await a.publish("chat", b"from-a", PublishOptions())
    await b.publish("chat", b"from-b", PublishOptions())
    for events in (events_a, events_b):
        pubs = await events.wait_pubs("chat", 2)
        assert sorted(p.data for p in pubs) == [b"from-a", b"from-b"]
        assert all(p.channel == "" and p.time == 0 for p in pubs)


async def test_centrifugo_push_with_position_is_delivered_without_epoch_tag(make_broker, peer):
    broker, events = await make_broker()
    await broker.subscribe(["s"])
    push = pb.Push(channel="s")
    push.pub.data = b"d"
    push.pub.offset = 7
    push.pub.tags["__centrifugo_epoch"] = "abcd"
    push.pub.tags["k"] = "v"
    push.pub.time = 123
    await peer.publish("centrifugo.client.s", push.SerializeToString())
    pub, epoch = await events.next("pub", "s")
    assert (pub.data, pub.offset, epoch, pub.tags, pub.time) == (b"d", 7, "abcd", {"k": "v"}, 0)


async def test_join_and_leave(make_broker, peer):
    a, _ = await make_broker()
    b, events = await make_broker()
    await b.subscribe(["room"])
    seen = await capture(peer, "centrifugo.client.room")
    info = ClientInfo("u", "c", None, b'{"i":1}')
    await a.publish_join("room", info)
    await a.publish_leave("room", info)
    assert await events.next("join", "room") == info
    assert await events.next("leave", "room") == info
    join = pb.Push.FromString((await asyncio.wait_for(seen.get(), 5)).data)
    leave = pb.Push.FromString((await asyncio.wait_for(seen.get(), 5)).data)
    assert join.channel == "room" and join.join.info.chan_info == b'{"i":1}'
    assert leave.HasField("leave") and leave.leave.info.user == "u"


async def test_control_to_all_and_to_one_node(make_broker, peer):
    a, events_a = await make_broker()
    b, events_b = await make_broker()
    to_all = await capture(peer, "centrifugo.control")
    to_b = await capture(peer, f"centrifugo.node.{events_b.id}")
    await a.publish_control(b"everyone")
    await a.publish_control(b"only-b", events_b.id)
    assert (await asyncio.wait_for(to_all.get(), 5)).data == b"everyone"
    assert (await asyncio.wait_for(to_b.get(), 5)).data == b"only-b"
    assert await events_b.next("control") == b"everyone"
    assert await events_b.next("control") == b"only-b"
    assert await events_a.next("control") == b"everyone"  # a node hears its own broadcast
    await events_a.wait_for(lambda: True)
    assert events_a.pending("control") == []


async def test_no_history_and_no_wildcards_by_default(make_broker):
    broker, _ = await make_broker()
    for call in (
        broker.history("ch", HistoryFilter()),
        broker.remove_history("ch"),
    ):
        with pytest.raises(ClientError) as e:
            await call
        assert e.value.code == 108
    for bad in ("news.*", "news.>"):
        with pytest.raises(ClientError) as e:
            await broker.subscribe([bad])
        assert e.value.code == 107
        with pytest.raises(ClientError) as e:
            await broker.publish(bad, b"x", PublishOptions())
        assert e.value.code == 107


async def test_wildcard_subscription_carries_concrete_channel(make_broker):
    sub, events = await make_broker(allow_wildcards=True)
    pub, _ = await make_broker()
    await sub.subscribe(["news.*"])
    await pub.publish("news.sport", b"goal", PublishOptions())
    (got,) = await events.wait_pubs("news.*", 1)
    assert (got.data, got.channel) == (b"goal", "news.sport")
    with pytest.raises(ClientError) as e:  # publishing to a wildcard is refused even so
        await sub.publish("news.*", b"x", PublishOptions())
    assert e.value.code == 107


async def test_raw_mode_passes_bytes_with_prefix_and_replacements(make_broker, peer):
    raw = NatsRawModeConfig(enabled=True, prefix="raw.", channel_replacements={":": "."})
    broker, events = await make_broker(raw_mode=raw)
    seen = await capture(peer, "raw.chat.index")
    await broker.subscribe(["chat:index"])
    await peer.publish("raw.chat.index", b"\x00not a push")
    (got,) = await events.wait_pubs("chat:index", 1)
    assert (got.data, got.channel, got.info, got.tags) == (
        b"\x00not a push",
        "chat.index",
        None,
        None,
    )
    assert (await asyncio.wait_for(seen.get(), 5)).data == b"\x00not a push"
    await broker.publish("chat:index", b"as-is", PublishOptions(tags={"dropped": "1"}))
    assert (await asyncio.wait_for(seen.get(), 5)).data == b"as-is"
    # Nothing is sent for a join in raw mode: the next message of this connection is the marker.
    await broker.publish_join("chat:index", ClientInfo("u", "c"))
    await broker.publish("chat:index", b"marker", PublishOptions())
    assert (await asyncio.wait_for(seen.get(), 5)).data == b"marker"
    # Unsubscribed: a later message is not delivered. The subscribe of another channel
    # confirms the UNSUB went first; the peer's two messages reach the broker in order.
    await broker.unsubscribe(["chat:index"])
    await broker.subscribe(["other"])
    await peer.publish("raw.chat.index", b"after")
    await peer.publish("raw.other", b"marker")
    await events.wait_pubs("other", 1)
    assert b"after" not in [p.data for p in events.pubs_in("chat:index")]


async def test_undecodable_message_is_dropped_with_a_log_line(make_broker, peer, caplog):
    broker, events = await make_broker()
    await broker.subscribe(["c"])
    await peer.publish("centrifugo.client.c", b"\xff\xff\xff")
    # In the server before "ok" is published from the broker's own connection (nats-py
    # buffers a publish until its next flush): the server then delivers it first, so its
    # log line comes before "ok" arrives. Without this CI once saw "ok" overtake it.
    await peer.flush()
    await broker.publish("c", b"ok", PublishOptions())
    (got,) = await events.wait_pubs("c", 1)
    assert got.data == b"ok"
    assert "error unmarshal push from Nats" in caplog.text


async def test_nats_restart_heals_without_help(make_broker):
    nats_server.require()
    server = nats_server.start()
    try:
        a, events_a = await make_broker(server.url)
        b, _ = await make_broker(server.url)
        await a.subscribe(["live"])
        assert a.healthy and b.healthy
        server.stop()
        await until("unhealthy", lambda: not a.healthy and not b.healthy)
        with pytest.raises(ClientError) as e:
            await b.publish("live", b"lost", PublishOptions())
        assert e.value.code == 100
        with pytest.raises(ClientError) as e:
            await a.subscribe(["other"])
        assert e.value.code == 100
        with pytest.raises(ClientError) as e:
            await b.publish_control(b"x")
        assert e.value.code == 100
        server.restart()
        await until("healthy again", lambda: a.healthy and b.healthy, timeout=15)
        await b.publish("live", b"after", PublishOptions())
        (got,) = await events_a.wait_pubs("live", 1)
        assert got.data == b"after"
    finally:
        server.remove()


async def test_start_while_nats_is_away(make_broker):
    nats_server.require()
    server = nats_server.NatsServer()  # a port, nothing listening yet
    try:
        broker, events = await make_broker(server.url)
        assert not broker.healthy
        with pytest.raises(ClientError) as e:
            await broker.publish("x", b"1", PublishOptions())
        assert e.value.code == 100
        assert server.launch()
        await until("connected", lambda: broker.healthy, timeout=15)
        await broker.subscribe(["x"])
        await broker.publish("x", b"2", PublishOptions())
        (got,) = await events.wait_pubs("x", 1)
        assert got.data == b"2"
        await broker.publish_control(b"hello")  # control subscribed once connected
        assert await events.next("control") == b"hello"
    finally:
        server.remove()
