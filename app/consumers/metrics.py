"""Consumer metrics under Centrifugo's names (internal/metrics: `consumers` subsystem):
`centrifugo_consumers_messages_processed_total` and `centrifugo_consumers_errors_total`, one
label `consumer_name`, both set to zero when a consumer starts (InitConsumerMetrics). As every
counter in app/metrics.py, each is a gauge only incremented and summed over workers
(multiprocess mode "sum"), so a dead worker's counts stay in the total."""

from __future__ import annotations

from prometheus_client import Gauge

from app import metrics
from app.metrics import NS

__all__ = ["PROCESSED", "ERRORS", "init", "processed", "error"]


def _counter(name: str, doc: str) -> Gauge:
    metrics.COUNTER_GAUGES.add(f"{NS}_consumers_{name}")
    return Gauge(
        name, doc, ("consumer_name",), namespace=NS, subsystem="consumers", multiprocess_mode="sum"
    )


PROCESSED = _counter("messages_processed_total", "Total number of processed messages in consumer")
ERRORS = _counter("errors_total", "Total number of errors in consumer")


def init(name: str) -> None:
    """Both series of consumer `name` exist from its start, at zero."""
    metrics.child(PROCESSED, name).inc(0)
    metrics.child(ERRORS, name).inc(0)


def processed(name: str, count: int = 1) -> None:
    """`count` messages of consumer `name` are done (dispatched and acknowledged)."""
    if count:
        metrics.child(PROCESSED, name).inc(count)


def error(name: str) -> None:
    """One failure of consumer `name`: a dispatch to retry, or a backend error."""
    metrics.child(ERRORS, name).inc()
