"""The metrics a node keeps per publication it fans out locally, as centrifuge's
node.handlePublication does: node_messages_received_count{type="publication"} and the
broadcast duration, by channel namespace (the PUB/SUB lag goes through app/metrics.py).

Both move once per publication, which on personal channels is once per delivery, so their
label lookups are cached per channel (a dict hit instead of parsing the namespace and
hashing the label tuple) and both are buffered in process (app/metrics_buffer.py): a
multiprocess inc() is ~1 µs, against 9 µs of worker CPU per delivery that issue 23 allows.
Used only while metrics are on (app.metrics.enabled()); with them off the node skips it.
"""

from __future__ import annotations

from app import metrics
from app.metrics_buffer import BufferedCounter, BufferedHistogram

# Channels remembered; the cache is cleared when full (a namespace's metrics stay).
MAX_CHANNELS = 16384


class NamespaceMetrics:
    """One namespace's per-publication series."""

    __slots__ = ("namespace", "received", "duration")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.received = BufferedCounter(
            metrics.child(metrics.NODE_MESSAGES_RECEIVED, "publication", namespace)
        )
        self.duration = BufferedHistogram(
            metrics.child(metrics.BROADCAST_DURATION, "publication", namespace)
        )


_by_namespace: dict[str, NamespaceMetrics] = {}
_by_channel: dict[str, NamespaceMetrics] = {}


def of_channel(channel: str) -> NamespaceMetrics:
    """The series of `channel`'s namespace (metrics must be on)."""
    m = _by_channel.get(channel)
    if m is None:
        ns = metrics.namespace_of(channel)
        m = _by_namespace.get(ns)
        if m is None:
            m = _by_namespace[ns] = NamespaceMetrics(ns)
        if len(_by_channel) >= MAX_CHANNELS:
            _by_channel.clear()
        _by_channel[channel] = m
    return m
