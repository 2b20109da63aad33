"""Buffered histogram observations (app/metrics_buffer.py BufferedHistogram): nothing reaches the shared
values before a flush, and a flush adds exactly what observe() would have added."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from app.metrics_buffer import BufferedHistogram


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_flush_adds_the_observations_as_observe_would() -> None:
    registry = CollectorRegistry()
    buffered = Histogram("b_seconds", "b", ("t",), buckets=(0.001, 0.01), registry=registry)
    direct = Histogram("d_seconds", "d", ("t",), buckets=(0.001, 0.01), registry=registry)
    buf = BufferedHistogram(buffered.labels("x"))
    values = [0.0005, 0.001, 0.005, 0.01, 0.5, 0.0]
    for v in values:
        buf.observe(v)
        direct.labels("x").observe(v)
    assert _sample(registry, "b_seconds_count", t="x") == 0  # within the second: held
    buf.flush()
    for le in ("0.001", "0.01", "+Inf"):
        got = _sample(registry, "b_seconds_bucket", t="x", le=le)
        assert got == _sample(registry, "d_seconds_bucket", t="x", le=le), le
    assert _sample(registry, "b_seconds_sum", t="x") == sum(values)
    buf.flush()  # nothing pending: nothing added twice
    assert _sample(registry, "b_seconds_count", t="x") == len(values)


def test_observe_flushes_once_its_second_has_passed() -> None:
    registry = CollectorRegistry()
    hist = Histogram("c_seconds", "c", ("t",), buckets=(1.0,), registry=registry)
    buf = BufferedHistogram(hist.labels("x"))
    buf.observe(0.5)
    buf._due = 0.0  # the second is over
    buf.observe(0.5)
    assert _sample(registry, "c_seconds_count", t="x") == 2
