"""Shared poll metrics under Centrifugo's names (centrifuge metrics.go `shared_poll`
subsystem, Centrifugo internal/metrics `shared_poll_proxy`), with its buckets and labels.
Counters without `_total`, as everywhere in app/metrics.py: a gauge only incremented and
summed over workers."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from app import metrics
from app.metrics import NS

_DURATION_BUCKETS = (0.010, 0.025, 0.050, 0.100, 0.250, 0.500, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_HANDLER_BUCKETS: tuple[float, ...] = (
    *(0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500),
    *(1.0, 2.5, 5.0, 10.0, 30.0),
)
_SEM_BUCKETS = (0.0001, 0.0005) + _HANDLER_BUCKETS
_ITEMS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


def _counter(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
    metrics.COUNTER_GAUGES.add(f"{NS}_shared_poll_{name}")
    return Gauge(name, doc, labels, namespace=NS, subsystem="shared_poll", multiprocess_mode="sum")


def _histogram(
    name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(name, doc, labels, namespace=NS, subsystem="shared_poll", buckets=buckets)


CYCLE_DURATION = _histogram(
    "cycle_duration_seconds",
    "Full timer cycle duration in seconds.",
    ("channel_namespace",),
    _DURATION_BUCKETS,
)
CYCLE_WORK_DURATION = _histogram(
    "cycle_work_duration_seconds",
    "Cycle work time in seconds (minus spread delay).",
    ("channel_namespace",),
    _DURATION_BUCKETS,
)
HANDLER_DURATION = _histogram(
    "handler_duration_seconds",
    "Handler call latency in seconds.",
    ("trigger", "channel_namespace"),
    _HANDLER_BUCKETS,
)
SEM_WAIT_DURATION = _histogram(
    "sem_wait_duration_seconds",
    "Semaphore wait duration in seconds.",
    ("trigger", "channel_namespace"),
    _SEM_BUCKETS,
)
HANDLER_ERRORS = _counter(
    "handler_error_count", "Number of handler errors.", ("trigger", "channel_namespace")
)
# result: polled | changed | unchanged | removed.
ITEMS = _counter(
    "items_count", "Number of items by result.", ("trigger", "result", "channel_namespace")
)
NOTIFY = _counter("notify_count", "Number of notifications received.", ("channel_namespace",))
DROPPED_NOTIFY = _counter(
    "dropped_notify_count",
    "Number of notifications dropped due to full buffer.",
    ("channel_namespace",),
)
# result: applied | skipped.
PUBLISH = _counter(
    "publish_count",
    "Number of direct publish operations by result.",
    ("result", "channel_namespace"),
)
NUM_CHANNELS = Gauge(
    "num_channels",
    "Number of active shared poll channels.",
    namespace=NS,
    subsystem="shared_poll",
    multiprocess_mode="livesum",
)
NUM_KEYS = Gauge(
    "num_keys",
    "Total number of tracked keys.",
    namespace=NS,
    subsystem="shared_poll",
    multiprocess_mode="livesum",
)
PROXY_REQUEST_ITEMS = Histogram(
    "request_items",
    "Number of items per shared poll proxy request.",
    ("name",),
    namespace=NS,
    subsystem="shared_poll_proxy",
    buckets=_ITEMS_BUCKETS,
)
PROXY_RESPONSE_ITEMS = Histogram(
    "response_items",
    "Number of items per shared poll proxy response.",
    ("name",),
    namespace=NS,
    subsystem="shared_poll_proxy",
    buckets=_ITEMS_BUCKETS,
)
