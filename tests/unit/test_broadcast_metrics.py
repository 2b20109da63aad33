"""Per-publication metrics: a buffered counter adds at flush exactly what its increments
would have, and the broadcast metrics of channels are their namespace's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from app import broadcast_metrics, metrics
from app.metrics_buffer import BufferedCounter


def test_buffered_counter_adds_its_increments_at_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("n", "n", ("t",), registry=registry)
    buf = BufferedCounter(counter.labels("x"))
    buf.inc()
    buf.inc(2)
    assert registry.get_sample_value("n_total", {"t": "x"}) == 0  # within the second: held
    buf.flush()
    buf.flush()  # nothing pending: nothing added twice
    assert registry.get_sample_value("n_total", {"t": "x"}) == 3
    buf._due = 0.0  # the second is over: the next increment goes through
    buf.inc()
    assert registry.get_sample_value("n_total", {"t": "x"}) == 4


def test_broadcast_metrics_are_shared_per_namespace_and_counted_at_flush() -> None:
    metrics.enable(True)
    try:
        a = broadcast_metrics.of_channel("chat:1")
        assert (
            a is broadcast_metrics.of_channel("chat:2") is broadcast_metrics.of_channel("$chat:3")
        )
        assert a.namespace == "chat"
        assert broadcast_metrics.of_channel("user_1").namespace == ""
        child = metrics.NODE_MESSAGES_RECEIVED.labels("publication", "chat")
        before = child._value.get()
        a.received.inc()
        a.received.inc()
        a.received.flush()
        assert child._value.get() == before + 2
    finally:
        metrics.enable(False)
