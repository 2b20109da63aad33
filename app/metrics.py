"""Prometheus metrics with Centrifugo's names and labels (research §7.2).

Under gunicorn every worker is a process: prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set by the CLI before workers fork) writes each
worker's values to files and a scrape sums them. Gauges use `livesum`, so a dead
worker's gauges disappear (the CLI marks exited workers dead).

Hot paths never touch a labelled metric per subscriber: callers count per frame
or per command, and labelled children are cached.
"""

from __future__ import annotations

import asyncio
import os
from functools import lru_cache
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from app import VERSION_STRING

NS = "centrifugo"
# Centrifugo exposes no `_created` series; keep the scrape identical in shape.
disable_created_metrics()
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# The multiprocess modes of the gauges here (prometheus_client takes these names).
_GaugeMode = Literal["livesum", "livemax", "max"]


def _gauge(
    name: str, doc: str, labels: tuple[str, ...] = (), mode: _GaugeMode = "livesum"
) -> Gauge:
    return Gauge(name, doc, labels, namespace=NS, multiprocess_mode=mode)


# Full names of the gauges that stand in for counters (`_counter`): the info snapshot
# reports them as eagle reports counters, as their increase over the interval.
COUNTER_GAUGES: set[str] = set()


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    """A monotonic count under Centrifugo's exact name.

    prometheus-client appends `_total` to Counter names, but most of Centrifugo's
    counters have no such suffix and dashboards query them by exact name. A gauge
    only ever incremented, summed over workers including exited ones ("sum"),
    behaves like a counter for rate() and increase()."""
    COUNTER_GAUGES.add(f"{NS}_{name}")
    return Gauge(name, doc, labels, namespace=NS, multiprocess_mode="sum")


# --- node ---
NODE_NUM_CLIENTS = _gauge("node_num_clients", "Number of clients connected.")
NODE_NUM_USERS = _gauge("node_num_users", "Number of unique users connected.")
NODE_NUM_SUBSCRIPTIONS = _gauge("node_num_subscriptions", "Number of subscriptions.")
NODE_NUM_CHANNELS = _gauge("node_num_channels", "Number of channels with subscribers.")
# Every worker sees the whole cluster: report the max over live workers, not a sum.
NODE_NUM_NODES = _gauge("node_num_nodes", "Number of nodes in the cluster.", mode="livemax")
NODE_BUILD = _gauge("node_build", "Node build info.", ("version",), mode="max")
NODE_MESSAGES_SENT = _counter(
    "node_messages_sent_count",
    "Number of messages sent by node to broker.",
    ("type", "channel_namespace"),
)
NODE_MESSAGES_RECEIVED = _counter(
    "node_messages_received_count",
    "Number of messages received from broker.",
    ("type", "channel_namespace"),
)
TAGS_FILTER_DROPPED = _counter(
    "node_tags_filter_dropped_publications",
    "Number of publications dropped due to tags filtering.",
    ("channel_namespace",),
)

# --- client ---
CONNECTIONS_ACCEPTED = _counter(
    "client_connections_accepted",
    "Number of accepted client connections.",
    ("transport", "accept_protocol", "client_name", "client_version"),
)
CONNECTIONS_INFLIGHT = _gauge(
    "client_connections_inflight",
    "Number of client connections in flight.",
    ("transport", "accept_protocol", "client_name", "client_version"),
)
SUBSCRIPTIONS_ACCEPTED = _counter(
    "client_subscriptions_accepted",
    "Number of accepted client subscriptions.",
    ("client_name", "channel_namespace"),
)
SUBSCRIPTIONS_INFLIGHT = _gauge(
    "client_subscriptions_inflight",
    "Number of client subscriptions in flight.",
    ("client_name", "channel_namespace"),
)
COMMAND_DURATION = Summary(
    "client_command_duration_seconds",
    "Client command duration.",
    ("method", "channel_namespace"),
    namespace=NS,
)
COMMAND_DURATION_HISTOGRAM = Histogram(
    "client_command_duration_seconds_histogram",
    "Client command duration.",
    ("method", "channel_namespace"),
    namespace=NS,
)
REPLY_ERRORS = _counter(
    "client_num_reply_errors",
    "Number of errors in replies sent to clients.",
    ("method", "code", "channel_namespace"),
)
SERVER_UNSUBSCRIBES = _counter(
    "client_num_server_unsubscribes",
    "Number of server initiated unsubscribes.",
    ("code", "channel_namespace"),
)
SERVER_DISCONNECTS = _counter(
    "client_num_server_disconnects",
    "Number of server initiated disconnects.",
    ("code",),
)
RECOVER = _counter(
    "client_recover",
    "Count of recover operations.",
    ("recovered", "channel_namespace", "has_recovered_publications"),
)

# --- transport ---
_TRANSPORT_LABELS = ("transport", "frame_type", "channel_namespace")
TRANSPORT_SENT = _counter(
    "transport_messages_sent",
    "Number of messages sent to client connections.",
    _TRANSPORT_LABELS,
)
TRANSPORT_SENT_SIZE = _counter(
    "transport_messages_sent_size",
    "Size in bytes of messages sent to client connections.",
    _TRANSPORT_LABELS,
)
TRANSPORT_RECEIVED = _counter(
    "transport_messages_received",
    "Number of messages received from client connections.",
    _TRANSPORT_LABELS,
)
TRANSPORT_RECEIVED_SIZE = _counter(
    "transport_messages_received_size",
    "Size in bytes of messages received from client connections.",
    _TRANSPORT_LABELS,
)

# --- server API ---
API_DURATION = Summary(
    "api_command_duration_seconds",
    "Server API command duration.",
    ("protocol", "method"),
    namespace=NS,
)
API_DURATION_HISTOGRAM = Histogram(
    "api_command_duration_seconds_histogram",
    "Server API command duration.",
    ("protocol", "method"),
    namespace=NS,
)
API_ERRORS = Counter(
    "api_command_errors",
    "Server API command errors.",
    ("protocol", "method", "error"),
    namespace=NS,
)

# --- proxy ---
PROXY_DURATION = Summary(
    "proxy_duration_seconds", "Proxy request duration.", ("protocol", "type", "name"), namespace=NS
)
PROXY_DURATION_HISTOGRAM = Histogram(
    "proxy_duration_seconds_histogram",
    "Proxy request duration.",
    ("protocol", "type", "name"),
    namespace=NS,
)
PROXY_ERRORS = _counter("proxy_errors", "Proxy request errors.", ("protocol", "type", "name"))
PROXY_INFLIGHT = _gauge(
    "proxy_inflight_requests", "Proxy requests in flight.", ("protocol", "type", "name")
)

# --- broker ---
REDIS_PUBSUB_ERRORS = _counter(
    "broker_redis_pub_sub_errors", "Redis PUB/SUB connection errors.", ("error",)
)
# centrifuge's incBrokerPublishSuppressed: a publication the broker dropped (reason
# "idempotency" or "version", PublishResult.suppress_reason).
PUBLISH_SUPPRESSED = _counter(
    "broker_publish_suppressed_count",
    "Number of suppressed publish operations.",
    ("reason", "channel_namespace"),
)

# --- map broker (centrifuge's map_broker subsystem) ---
MAP_PUBLISH_SUPPRESSED = _counter(
    "map_broker_publish_suppressed_count",
    "Number of suppressed map publish operations.",
    ("reason", "channel_namespace"),
)
MAP_REMOVE_SUPPRESSED = _counter(
    "map_broker_remove_suppressed_count",
    "Number of suppressed map remove operations.",
    ("reason", "channel_namespace"),
)
MAP_CLEANUP_REMOVED = _counter(
    "map_broker_cleanup_removed_count",
    "Total number of expired entries removed by cleanup.",
    ("broker_name",),
)
MAP_CLEANUP_ERRORS = _counter(
    "map_broker_cleanup_errors_count", "Total number of cleanup errors.", ("broker_name",)
)


class _Noop:
    """Stands in for every metric when `prometheus.enabled` is off: hot paths then
    pay one attribute call instead of a locked (or mmap) update."""

    def inc(self, amount: float = 1) -> None:
        pass

    dec = inc
    observe = inc
    set = inc


_NOOP = _Noop()
_enabled = True


def enabled() -> bool:
    """Whether metrics are collected: hot paths skip timing and labelling when not."""
    return _enabled


def enable(on: bool) -> None:
    """Called once per worker before any connection exists (app factory)."""
    global _enabled
    _enabled = on
    _labelled.cache_clear()


def child(metric: Any, *labels: str) -> Any:
    """A labelled child, cached: `.labels()` costs a dict lookup and a lock. With
    metrics off the stand-in comes back before any hashing of the labels."""
    return _labelled(metric, *labels) if _enabled else _NOOP


def live(metric: Any) -> Any:
    """None for the stand-in of disabled metrics, so hot paths can skip the calls."""
    return None if metric is _NOOP else metric


@lru_cache(maxsize=4096)
def _labelled(metric: Any, *labels: str) -> Any:
    return metric.labels(*labels)


def namespace_of(channel: str) -> str:
    """Namespace label of a channel, without resolving it (cheap, no errors)."""
    name = channel.lstrip("$")
    return name.partition(":")[0] if ":" in name else ""


def init_node() -> None:
    child(NODE_BUILD, VERSION_STRING).set(1)


def update_node(
    num_clients: int, num_users: int, num_subs: int, num_channels: int, num_nodes: int
) -> None:
    NODE_NUM_CLIENTS.set(num_clients)
    NODE_NUM_USERS.set(num_users)
    NODE_NUM_SUBSCRIPTIONS.set(num_subs)
    NODE_NUM_CHANNELS.set(num_channels)
    NODE_NUM_NODES.set(num_nodes)


def render() -> tuple[bytes, str]:
    """The scrape body: the sum over all workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


_rendering: asyncio.Future[tuple[bytes, str]] | None = None


async def render_async() -> tuple[bytes, str]:
    """`render` off the event loop: merging every worker's files and formatting ~10k series
    takes a good part of a second, which would stall this worker's clients. Scrapes that
    arrive while one is rendering share its result instead of rendering again."""
    global _rendering
    if _rendering is None:
        _rendering = asyncio.ensure_future(asyncio.to_thread(render))
        _rendering.add_done_callback(_render_done)
    return await asyncio.shield(_rendering)


def _render_done(fut: asyncio.Future[tuple[bytes, str]]) -> None:
    global _rendering
    _rendering = None


def mark_worker_dead(pid: int) -> None:
    """Called by the gunicorn master when a worker exits: drop its live gauges."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
