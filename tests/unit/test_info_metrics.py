"""The info metrics snapshot flattens Prometheus metrics exactly as eagle's Flatten(".").

Expected keys follow github.com/FZambia/eagle (eagle.go getMetrics/Flatten): the family name
split at its first two "_", then the value name (summary "sum"/"count"), then label name/value
pairs sorted by label name (Go's client sorts them) without empty values; counters and
summaries as increases since the previous snapshot, gauges as values, histograms left out.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from app import control, metrics
from app.info_metrics import InfoMetrics, eagle_key, flatten
from app.membership import Membership

COUNTERS = frozenset({"centrifugo_node_messages_sent_count"})


def test_keys_values_and_deltas_as_eagle_flattens_them() -> None:
    reg = CollectorRegistry()
    clients = Gauge("centrifugo_node_num_clients", "", registry=reg)
    # A counter kept as a gauge under Centrifugo's name (app.metrics._counter).
    sent = Gauge(
        "centrifugo_node_messages_sent_count", "", ("type", "channel_namespace"), registry=reg
    )
    errors = Counter(
        "centrifugo_api_command_errors", "", ("protocol", "method", "error"), registry=reg
    )
    duration = Summary("centrifugo_client_command_duration_seconds", "", ("method",), registry=reg)
    Histogram("centrifugo_client_command_duration_histogram", "", registry=reg).observe(1)
    Gauge("process_open_fds_x", "", registry=reg).set(7)  # not "centrifugo": left out
    clients.set(3)
    sent.labels("publication", "chat").inc(5)
    sent.labels("join", "").inc(2)
    errors.labels("http", "publish", "102").inc()
    duration.labels("connect").observe(0.25)

    items, totals = flatten(reg.collect(), COUNTERS, {})
    assert items == {
        "centrifugo.node.num_clients": 3,
        # labels in name order, the empty channel_namespace left out
        "centrifugo.node.messages_sent_count.channel_namespace.chat.type.publication": 5,
        "centrifugo.node.messages_sent_count.type.join": 2,
        # a Go counter's name carries _total, as prometheus_client's sample does
        "centrifugo.api.command_errors_total.error.102.method.publish.protocol.http": 1,
        "centrifugo.client.command_duration_seconds.sum.method.connect": 0.25,
        "centrifugo.client.command_duration_seconds.count.method.connect": 1,
    }

    # The next snapshot: counters and summaries are increases, gauges stay values.
    sent.labels("publication", "chat").inc(1)
    duration.labels("connect").observe(0.5)
    clients.set(2)
    items, _ = flatten(reg.collect(), COUNTERS, totals)
    assert items == {
        "centrifugo.node.num_clients": 2,
        "centrifugo.node.messages_sent_count.channel_namespace.chat.type.publication": 1,
        "centrifugo.node.messages_sent_count.type.join": 0,
        "centrifugo.api.command_errors_total.error.102.method.publish.protocol.http": 0,
        "centrifugo.client.command_duration_seconds.sum.method.connect": 0.5,
        "centrifugo.client.command_duration_seconds.count.method.connect": 1,
    }


def test_eagle_key_needs_a_subsystem() -> None:
    # eagle: a name with fewer than two "_"-separated parts is skipped; two parts keep both.
    assert eagle_key("centrifugo", "", {}) is None
    assert eagle_key("centrifugo_up", "", {"a": "1"}) == "centrifugo.up.a.1"
    assert eagle_key("centrifugo_node_build", "", {"version": "6.9.1 OSS"}) == (
        "centrifugo.node.build.version.6.9.1 OSS"
    )


def test_every_counter_helper_metric_is_reported_as_a_counter() -> None:
    # The counters kept as gauges under Centrifugo's names must be known to the snapshot.
    assert "centrifugo_broker_publish_suppressed_count" in metrics.COUNTER_GAUGES
    assert "centrifugo_node_messages_sent_count" in metrics.COUNTER_GAUGES
    assert "centrifugo_node_num_clients" not in metrics.COUNTER_GAUGES


def test_interval_zero_means_sixty_seconds_as_centrifuge() -> None:
    assert InfoMetrics(0).interval == 60.0
    assert InfoMetrics(1.5).snapshot()["interval"] == 1.5


async def test_peers_keep_the_last_snapshot_a_node_sent() -> None:
    """centrifuge sends a snapshot in one heartbeat only; nodeRegistry.add keeps it."""
    sent: list[tuple[bytes, str]] = []

    async def send(data: bytes, to: str) -> None:
        sent.append((data, to))

    async def answer(op: str, data: object) -> None:
        return None

    peer = Membership("b", lambda: {"uid": "b"}, send, answer)
    peer.set_metrics({"interval": 60.0, "items": {"centrifugo.node.num_clients": 1.0}})
    pending: list[Any] = []
    snapshot = {"interval": 60.0, "items": {"centrifugo.node.num_clients": 4.0}}
    peer.handle(control.NODE, "a", {"uid": "a", "metrics": snapshot}, pending.append)
    # The newcomer is greeted with this node's info and its snapshot.
    assert len(pending) == 1
    await pending.pop()
    (greeting, to), *_ = sent
    assert to == "a"
    assert control.decode_message(greeting)[2]["metrics"]["items"] == {
        "centrifugo.node.num_clients": 1.0
    }
    # A later heartbeat without a snapshot keeps the one received.
    peer.handle(control.NODE, "a", {"uid": "a", "num_clients": 5}, pending.append)
    nodes = peer.nodes()
    assert nodes[1] == {"uid": "a", "num_clients": 5, "metrics": snapshot}
    assert nodes[0]["metrics"]["items"] == {"centrifugo.node.num_clients": 1.0}
    assert not pending
