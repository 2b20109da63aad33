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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Literal

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    multiprocess,
)

from app import VERSION_STRING
from app.metrics_buffer import BufferedHistogram, MessageCounter

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
# centrifuge's observeSurveyDuration (the `channels` API asks every node).
SURVEY_DURATION = Summary(
    "node_survey_duration_seconds", "Survey duration summary.", ("op",), namespace=NS
)
SURVEY_DURATION_HISTOGRAM = Histogram(
    "node_survey_duration_seconds_histogram",
    "Survey duration histogram.",
    ("op",),
    namespace=NS,
    buckets=(0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500, 1.0, 2.5, 5.0, 10.0),
)
NODE_ACTION = _counter(
    "node_action_count",
    "Number of various actions called.",
    ("action", "channel_namespace"),
)
# centrifuge's buckets (metrics.go pubSubLagHistogram, broadcastDurationHistogram).
PUB_SUB_LAG = Histogram(
    "node_pub_sub_lag_seconds",
    "Pub sub lag in seconds",
    ("channel_namespace",),
    namespace=NS,
    buckets=(0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.200, 0.500, 1.0, 2.0, 5.0, 10.0),
)
BROADCAST_DURATION = Histogram(
    "node_broadcast_duration_seconds",
    "Broadcast duration in seconds",
    ("type", "channel_namespace"),
    namespace=NS,
    buckets=(
        *(0.000001, 0.000005, 0.000010, 0.000050, 0.000100, 0.000250, 0.000500),
        *(0.001, 0.005, 0.010, 0.025, 0.050, 0.100, 0.250, 0.500, 1.0, 2.5, 5.0, 10.0),
    ),
)
# Centrifugo's middleware counter: requests refused for client.connection_limit.
CONNECTION_LIMIT_REFUSED = _counter(
    "node_client_connection_limit",
    "Number of refused requests due to node client connection limit.",
)
# `prometheus.instrument_http_handlers` (Centrifugo's HTTPServerInstrumentation): a real
# Counter, so the exposed name gets Centrifugo's `_total`.
HTTP_REQUESTS = Counter(
    "node_incoming_http_requests",
    "Number of incoming HTTP requests",
    ("path", "method", "status"),
    namespace=NS,
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
_SECONDS_BUCKETS = (
    *(0.000100, 0.000250, 0.000500, 0.001, 0.005, 0.010, 0.025, 0.050),
    *(0.100, 0.250, 0.500, 1.0, 2.5, 5.0, 10.0),
)
PING_PONG_DURATION = Histogram(
    "client_ping_pong_duration_seconds",
    "Ping/Pong duration in seconds",
    ("transport",),
    namespace=NS,
    buckets=_SECONDS_BUCKETS,
)
# Observed only with `prometheus.recovered_publications_histogram` (centrifuge registers it
# only then; in multiprocess mode a histogram never observed is never exposed).
RECOVERED_PUBLICATIONS = Histogram(
    "client_recovered_publications",
    "Number of publications recovered during subscription recovery.",
    ("channel_namespace",),
    namespace=NS,
    buckets=(0, 1, 2, 3, 5, 10, 20, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
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
    buckets=_SECONDS_BUCKETS,
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

# Only close codes the server chose (centrifuge: a client's codes would make the label
# unbounded).
OUTGOING_CLOSE = _counter(
    "transport_outgoing_close_count",
    "Number of close frames sent to clients, by transport and code.",
    ("transport", "code"),
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
# centrifuge creates the dropped counters at zero for the default broker (name ""). This
# server's PUB/SUB reader hands each message to the hub as it is parsed: nothing waits in
# an application buffer, so nothing is dropped and the buffered gauges read 0.
REDIS_PUBSUB_DROPPED = _counter(
    "broker_redis_pub_sub_dropped_messages",
    "Number of dropped messages on application level in Redis PUB/SUB.",
    ("broker_name", "channel_type"),
)
REDIS_PUBSUB_BUFFERED = _gauge(
    "broker_redis_pub_sub_buffered_messages",
    "Number of messages buffered in Redis PUB/SUB.",
    ("broker_name", "channel_type", "pub_sub_processor"),
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
_recovered_publications = False


def enabled() -> bool:
    """Whether metrics are collected: hot paths skip timing and labelling when not."""
    return _enabled


def enable(on: bool, recovered_publications: bool = False) -> None:
    """Called once per worker before any connection exists (app factory);
    `recovered_publications` is `prometheus.recovered_publications_histogram`."""
    global _enabled, _recovered_publications
    _enabled = on
    _recovered_publications = on and recovered_publications
    _labelled.cache_clear()
    _message_counter.cache_clear()


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


@lru_cache(maxsize=4096)
def _message_counter(sent: bool, transport: str, frame_type: str, ns: str) -> MessageCounter:
    if sent:
        return MessageCounter(
            _labelled(TRANSPORT_SENT, transport, frame_type, ns),
            _labelled(TRANSPORT_SENT_SIZE, transport, frame_type, ns),
        )
    return MessageCounter(
        _labelled(TRANSPORT_RECEIVED, transport, frame_type, ns),
        _labelled(TRANSPORT_RECEIVED_SIZE, transport, frame_type, ns),
    )


def sent(transport: str, frame_type: str, namespace: str = "") -> MessageCounter | None:
    """Counter of messages sent to clients: `frame_type` as centrifugal/protocol's
    FrameType.String() names it (a reply by its command: "subscribe"; a push:
    "push_publication", "push_join", ...; "server_ping"). None with metrics off."""
    return _message_counter(True, transport, frame_type, namespace) if _enabled else None


def received(transport: str, frame_type: str, namespace: str = "") -> MessageCounter | None:
    """Counter of commands received from clients (frame_type: the command, or
    "client_pong"). None with metrics off."""
    return _message_counter(False, transport, frame_type, namespace) if _enabled else None


def action(name: str, channel: str = "") -> None:
    """centrifuge's incActionCount: one node action (add_client, history, ...)."""
    if _enabled:
        _labelled(NODE_ACTION, name, namespace_of(channel)).inc()


def recovery_read(since: bool, reverse: bool) -> str:
    """centrifuge's action names of the three history reads a subscribe makes."""
    if since:
        return "history_recover"
    return "history_recover_cache" if reverse else "history_stream_top"


@contextmanager
def survey(op: str) -> Iterator[None]:
    """centrifuge's observeSurveyDuration around a survey of every node."""
    action("survey")
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        child(SURVEY_DURATION, op).observe(elapsed)
        child(SURVEY_DURATION_HISTOGRAM, op).observe(elapsed)


_BUFFERS: dict[tuple[Any, ...], BufferedHistogram] = {}


def _buffered(metric: Any, *labels: str) -> BufferedHistogram:
    key = (metric, *labels)
    buf = _BUFFERS.get(key)
    if buf is None:
        buf = _BUFFERS[key] = BufferedHistogram(_labelled(metric, *labels))
    return buf


def observe_recovered(count: int, namespace: str) -> None:
    """centrifuge's observeRecoveredPublications, when the histogram is on."""
    if _recovered_publications:
        _labelled(RECOVERED_PUBLICATIONS, namespace).observe(count)


def observe_pub_sub_lag(pub_time_ms: int, namespace: str) -> None:
    """centrifuge's observePubSubDeliveryLag: now minus the publication's time, taken
    by the publishing node (clock skew between nodes can make it negative: its
    absolute value is kept, as centrifuge does)."""
    if _enabled:
        lag = abs(time.time() * 1000 - pub_time_ms) / 1000
        _labelled(PUB_SUB_LAG, namespace).observe(lag)


def namespace_of(channel: str) -> str:
    """Namespace label of a channel, without resolving it (cheap, no errors)."""
    name = channel.lstrip("$")
    return name.partition(":")[0] if ":" in name else ""


def init_node() -> None:
    child(NODE_BUILD, VERSION_STRING).set(1)
    # Creates this worker's live-gauge file at once: a scrape tells live workers by it
    # (app/metrics_scrape.py, process metrics).
    NODE_NUM_CLIENTS.set(0)


def init_redis_pubsub() -> None:
    """The Redis PUB/SUB series centrifuge always exposes (dropped at 0 for both
    channel types; one processor per type, buffering nothing here)."""
    for channel_type in ("control", "client"):
        child(REDIS_PUBSUB_DROPPED, "", channel_type).inc(0)
        child(REDIS_PUBSUB_BUFFERED, "", channel_type, "0").set(0)


def update_node(
    num_clients: int, num_users: int, num_subs: int, num_channels: int, num_nodes: int
) -> None:
    NODE_NUM_CLIENTS.set(num_clients)
    NODE_NUM_USERS.set(num_users)
    NODE_NUM_SUBSCRIPTIONS.set(num_subs)
    NODE_NUM_CHANNELS.set(num_channels)
    NODE_NUM_NODES.set(num_nodes)


def render() -> tuple[bytes, str]:
    """The scrape body: the sum over all workers in multiprocess mode, with summary
    quantiles and per-worker process metrics (app/metrics_scrape.py)."""
    from app.metrics_scrape import scrape_body  # only the scraping worker needs it

    return scrape_body(os.environ.get(MULTIPROC_ENV)), CONTENT_TYPE_LATEST


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


def http_middleware() -> Any:
    """`prometheus.instrument_http_handlers`: count every request by the route pattern
    it matched ("other" for none: a raw path would let clients grow the label set, as
    Centrifugo's middleware says), method and status. Connections upgraded outside
    aiohttp (the lean WebSocket server) do not pass here."""

    @web.middleware
    async def instrument(request: web.Request, handler: Any) -> web.StreamResponse:
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "other"
            child(HTTP_REQUESTS, path, request.method, str(status)).inc()

    return instrument


def mark_worker_dead(pid: int) -> None:
    """Called by the gunicorn master when a worker exits: drop its live gauges."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
