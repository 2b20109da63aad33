"""`client_name` and `sentinel_client_name` name every Redis connection the engine opens.

Centrifugo hands `client_name` to rueidis (ClientOption.ClientName), which sends it with HELLO
on every connection to the data nodes, PUB/SUB ones included, and `sentinel_client_name`
(SentinelOption.ClientName) on every connection to the Sentinels. Here the connections are the
implicit pipelines, the PUB/SUB readers and redis-py's clients; `CLIENT LIST` on each server is
the judge. Connections are told apart by id: Redis numbers them in the order they are accepted,
so every connection with an id above the one the test took before starting the engine (other
than the one running CLIENT LIST) was opened by the engine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from app.config import RedisConfig
from app.engines.redis import RedisBroker, RedisPresenceManager, create_redis_engine
from app.engines.redis.address import RedisConfigError
from app.models import ClientInfo, HistoryFilter, PublishOptions
from tests.support.engine import EngineEvents, channels_in_partitions, redis_engine_config, until
from tests.support.redis_topologies import ClusterTopology, SentinelTopology

HISTORY = PublishOptions(history_size=10, history_ttl=60.0)
DEFAULT_PUBSUB_NAME = "centrifugo-py-pubsub"

Engine = tuple[RedisBroker, RedisPresenceManager, EngineEvents]
EngineFactory = Callable[[RedisConfig], Awaitable[Engine]]


@pytest.fixture
async def engines() -> AsyncIterator[EngineFactory]:
    """`await make(rcfg)` -> a running, healthy (broker, presence, events)."""
    started: list[Engine] = []

    async def make(rcfg: RedisConfig) -> Engine:
        broker, presence = create_redis_engine(rcfg, "engine.redis")
        events = EngineEvents()
        await broker.run_control(events)
        await broker.run(events)
        started.append((broker, presence, events))
        await until("broker healthy", lambda: broker.healthy, 10.0)
        return broker, presence, events

    yield make
    for broker, presence, _ in started:
        await presence.close()
        await broker.close()


def unique(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


class Watch:
    """The connections a server accepts from now on (CLIENT ID orders them)."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
        self.first_id = int(self.client.execute_command("CLIENT ID"))

    def opened(self, **kw: Any) -> list[dict[str, str]]:
        """Connections accepted since, still open, without the one running CLIENT LIST."""
        return [
            c
            for c in self.client.client_list(**kw)
            if int(c["id"]) > self.first_id and c["cmd"] != "client|list"
        ]

    def close(self) -> None:
        self.client.close()


async def exercise(
    broker: RedisBroker, presence: RedisPresenceManager, events: EngineEvents
) -> str:
    """Publish, subscribe, presence, control and a history read last (a pipelined script)."""
    ch = unique("news")
    await broker.subscribe([ch])
    res = await broker.publish(ch, b'{"n":1}', HISTORY)
    pub, _ = await events.next("pub", ch)
    assert pub.offset == res.position.offset == 1
    await presence.add_presence(ch, "c1", ClientInfo("u1", "c1"))
    assert await presence.presence(ch) == {"c1": ClientInfo("u1", "c1")}
    await broker.publish_control(b"ctl")
    assert await events.next("control") == b"ctl"
    hist = await broker.history(ch, HistoryFilter(limit=-1))
    assert [p.data for p in hist.publications] == [b'{"n":1}']
    return ch


def assert_all_named(watch: Watch, name: str, *, pipeline: bool = True) -> None:
    """Every connection the engine opened carries `name`: command ones (the pipeline whose
    last command was the history read among them) and PUB/SUB ones."""
    opened = watch.opened()
    assert opened, "the engine opened no connection"
    assert {c["name"] for c in opened} == {name}, [(c["id"], c["name"], c["cmd"]) for c in opened]
    pubsub_ids = {c["id"] for c in watch.opened(_type="pubsub")}
    assert pubsub_ids, "no PUB/SUB connection"
    commands = [c for c in opened if c["id"] not in pubsub_ids]
    assert commands, "no command connection"
    if pipeline:
        assert "evalsha" in {c["cmd"] for c in commands}


# --- standalone ---


async def test_client_name_on_every_standalone_connection(engines, redis_proc):
    name = unique("cfpy-standalone")
    watch = Watch(redis_proc.port)
    try:
        rcfg = redis_engine_config(
            f"redis://127.0.0.1:{redis_proc.port}", unique("p"), client_name=name
        )
        await exercise(*await engines(rcfg))
        assert_all_named(watch, name)
    finally:
        watch.close()


async def test_without_a_name_data_connections_stay_unnamed(engines, redis_proc):
    # As Centrifugo (no SETNAME at all) on command connections; the PUB/SUB readers keep a
    # name of their own so an operator can tell them apart.
    watch = Watch(redis_proc.port)
    try:
        rcfg = redis_engine_config(f"redis://127.0.0.1:{redis_proc.port}", unique("p"))
        await exercise(*await engines(rcfg))
        pubsub_ids = {c["id"] for c in watch.opened(_type="pubsub")}
        names = {(c["id"] in pubsub_ids, c["name"]) for c in watch.opened()}
        assert names == {(True, DEFAULT_PUBSUB_NAME), (False, "")}
    finally:
        watch.close()


# --- Sentinel ---


@pytest.mark.parametrize("form", ["sentinel_address", "redis+sentinel"])
async def test_names_on_the_master_and_on_the_sentinel(engines, redis_sentinel, form):
    topo: SentinelTopology = redis_sentinel
    name, sentinel_name = unique("cfpy-data"), unique("cfpy-sentinel")
    master = Watch(topo.current_master().port)
    sentinel = Watch(topo.sentinel.port)
    try:
        opts: dict[str, Any] = {"client_name": name, "sentinel_client_name": sentinel_name}
        if form == "sentinel_address":
            opts["sentinel_address"] = [f"127.0.0.1:{topo.sentinel.port}"]
            opts["sentinel_master_name"] = topo.master_name
            address = "redis://127.0.0.1:1"  # not used: sentinel_address wins
        else:
            address = topo.address
        rcfg = redis_engine_config(address, unique("p"), **opts)
        broker, presence, events = await engines(rcfg)
        assert broker.shards[0].spec.kind == "sentinel"
        await exercise(broker, presence, events)
        assert_all_named(master, name)
        # The Sentinel is asked where the master is (redis-py's client, the pipeline and
        # each PUB/SUB reader resolve through it): those connections carry sentinel_client_name.
        on_sentinel = sentinel.opened()
        assert on_sentinel
        assert {c["name"] for c in on_sentinel} == {sentinel_name}
    finally:
        master.close()
        sentinel.close()


# --- Cluster ---


async def test_client_name_on_every_cluster_node(engines, redis_cluster):
    topo: ClusterTopology = redis_cluster
    name = unique("cfpy-cluster")
    watches = [Watch(port) for port in topo.ports]
    try:
        rcfg = redis_engine_config(topo.address, unique("p"), client_name=name)
        broker, presence, events = await engines(rcfg)
        assert broker.shards[0].cluster
        # One channel per partition, so every master gets a pipeline and a PUB/SUB reader.
        channels = channels_in_partitions(unique("c"))
        await broker.subscribe(channels)
        for ch in channels:
            await broker.publish(ch, b"{}", HISTORY)
            await events.next("pub", ch)
            await broker.history(ch, HistoryFilter(limit=-1))
        await exercise(broker, presence, events)
        for watch in watches:
            # redis-py's cluster client also runs non-script commands: the pipeline is
            # checked by the history reads spread over every master.
            assert_all_named(watch, name)
    finally:
        for watch in watches:
            watch.close()


# --- refused names ---


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("client_name", "two words"),
        ("client_name", "line\nbreak"),
        ("sentinel_client_name", "naïve"),
    ],
)
def test_a_name_redis_would_refuse_stops_start_up_naming_the_key(key, value):
    # Redis answers CLIENT SETNAME with an error for a name with spaces, newlines or
    # characters outside '!'..'~': no connection could ever be made, so start-up refuses
    # with one line (Centrifugo fails creating its Redis client the same way).
    rcfg = redis_engine_config("redis://127.0.0.1:1", "p", **{key: value})
    with pytest.raises(RedisConfigError, match=rf"^engine\.redis\.{key}: "):
        create_redis_engine(rcfg, "engine.redis")


def test_names_are_not_read_from_the_address():
    # Centrifugo's address options (redisshard.optionsFromAddress) know no client_name nor
    # sentinel_client_name: only the section's keys name connections.
    rcfg = redis_engine_config(
        "redis+sentinel://127.0.0.1:1?sentinel_master_name=m&client_name=q&sentinel_client_name=s",
        "p",
        client_name="from-config",
        sentinel_client_name="sentinel-from-config",
    )
    broker, _ = create_redis_engine(rcfg, "engine.redis")
    spec = broker.shards[0].spec
    assert (spec.client_name, spec.sentinel_client_name) == ("from-config", "sentinel-from-config")


def test_a_redis_py_probe_sees_the_name(redis_proc):
    # The control experiment of the Watch helper itself: a named redis-py client shows up.
    watch = Watch(redis_proc.port)
    other = redis.Redis(port=redis_proc.port, client_name="probe-name")
    try:
        other.ping()
        assert [c["name"] for c in watch.opened()] == ["probe-name"]
    finally:
        other.close()
        watch.close()
