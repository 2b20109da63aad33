"""Prometheus metrics end to end: names and labels of research §7.2, sums over gunicorn workers.

A real redis-server and `python -m app --workers 2` with `prometheus.enabled`. Clients are placed
on both workers (psutil tells which worker holds each socket; API `info` confirms the per-node
counts), generate traffic, errors and disconnects, and every scrape (any worker answers) must
show the totals over both workers. A worker killed with SIGKILL loses its live gauges from the
scrape once gunicorn has reaped it, while its counters stay.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import VERSION_STRING

from . import helpers
from .helpers import ServerHandle, free_port
from .redis_e2e_helpers import (
    ApiClient,
    RedisProcess,
    WsClient,
    redis_config,
    worker_of,
    worker_pids,
)

WORKERS = 2
# Endpoint checks do not depend on the engine: run them once (the factory skips the redis pass).
MEMORY = {"engine": {"type": "memory"}}
SCRAPE_TIMEOUT = 15.0  # node gauges follow the 3 s membership heartbeat

# Research §7.2: every centrifugo_* series the server may expose, with its exact label names
# (None: the table leaves the labels open). Summary/histogram suffixes are stripped first.
SPEC: dict[str, tuple[str, ...] | None] = {
    "centrifugo_node_num_clients": (),
    "centrifugo_node_num_users": (),
    "centrifugo_node_num_subscriptions": (),
    "centrifugo_node_num_channels": (),
    "centrifugo_node_num_nodes": (),
    "centrifugo_node_build": ("version",),
    "centrifugo_node_action_count": ("action", "channel_namespace"),
    "centrifugo_node_messages_sent_count": ("type", "channel_namespace"),
    "centrifugo_node_messages_received_count": ("type", "channel_namespace"),
    "centrifugo_node_survey_duration_seconds": ("op",),
    "centrifugo_node_survey_duration_seconds_histogram": ("op",),
    "centrifugo_node_pub_sub_lag_seconds": None,
    "centrifugo_node_broadcast_duration_seconds": None,
    "centrifugo_node_tags_filter_dropped_publications": None,
    "centrifugo_node_client_connection_limit": (),
    "centrifugo_node_incoming_http_requests_total": ("path", "method", "status"),
    "centrifugo_client_connections_accepted": (
        "transport",
        "accept_protocol",
        "client_name",
        "client_version",
    ),
    "centrifugo_client_connections_inflight": (
        "transport",
        "accept_protocol",
        "client_name",
        "client_version",
    ),
    "centrifugo_client_subscriptions_accepted": ("client_name", "channel_namespace"),
    "centrifugo_client_subscriptions_inflight": ("client_name", "channel_namespace"),
    "centrifugo_client_command_duration_seconds": ("method", "channel_namespace"),
    "centrifugo_client_command_duration_seconds_histogram": ("method", "channel_namespace"),
    "centrifugo_client_num_reply_errors": ("method", "code", "channel_namespace"),
    "centrifugo_client_num_server_unsubscribes": ("code", "channel_namespace"),
    "centrifugo_client_num_server_disconnects": ("code",),
    "centrifugo_client_recover": ("recovered", "channel_namespace", "has_recovered_publications"),
    "centrifugo_client_recovered_publications": None,
    "centrifugo_client_ping_pong_duration_seconds": ("transport",),
    "centrifugo_transport_messages_sent": ("transport", "frame_type", "channel_namespace"),
    "centrifugo_transport_messages_sent_size": ("transport", "frame_type", "channel_namespace"),
    "centrifugo_transport_messages_received": ("transport", "frame_type", "channel_namespace"),
    "centrifugo_transport_messages_received_size": (
        "transport",
        "frame_type",
        "channel_namespace",
    ),
    "centrifugo_transport_outgoing_close_count": ("transport", "code"),
    "centrifugo_proxy_duration_seconds": ("protocol", "type", "name"),
    "centrifugo_proxy_duration_seconds_histogram": ("protocol", "type", "name"),
    "centrifugo_proxy_errors": ("protocol", "type", "name"),
    "centrifugo_proxy_inflight_requests": ("protocol", "type", "name"),
    "centrifugo_api_command_duration_seconds": ("protocol", "method"),
    "centrifugo_api_command_duration_seconds_histogram": ("protocol", "method"),
    "centrifugo_api_command_errors_total": ("protocol", "method", "error"),
    "centrifugo_api_rpc_duration_seconds": ("protocol", "method"),
    "centrifugo_api_rpc_duration_seconds_histogram": ("protocol", "method"),
    # §7.2 names the broker series without labels; Centrifugo labels PUB/SUB errors by `error`.
    "centrifugo_broker_redis_pub_sub_errors": ("error",),
    "centrifugo_broker_redis_pub_sub_dropped_messages": None,
    "centrifugo_broker_redis_pub_sub_buffered_messages": None,
    "centrifugo_broker_publish_suppressed_count": None,
    # [6.8+] map broker and shared poll (centrifuge's metrics.go map_broker / shared_poll).
    "centrifugo_map_broker_publish_suppressed_count": ("reason", "channel_namespace"),
    "centrifugo_map_broker_remove_suppressed_count": ("reason", "channel_namespace"),
    "centrifugo_map_broker_cleanup_removed_count": ("broker_name",),
    "centrifugo_map_broker_cleanup_errors_count": ("broker_name",),
    "centrifugo_shared_poll_num_channels": None,
    "centrifugo_shared_poll_num_keys": None,
    "centrifugo_shared_poll_handler_error_count": ("trigger", "channel_namespace"),
    "centrifugo_shared_poll_items_count": ("trigger", "result", "channel_namespace"),
    "centrifugo_shared_poll_notify_count": ("channel_namespace",),
    "centrifugo_shared_poll_dropped_notify_count": ("channel_namespace",),
    "centrifugo_shared_poll_publish_count": ("result", "channel_namespace"),
    "centrifugo_consumers_messages_processed_total": ("consumer_name",),
    "centrifugo_consumers_errors_total": ("consumer_name",),
}
# What existing dashboards query and this server must expose after some traffic.
MUST_EXPOSE = (
    "centrifugo_node_num_clients",
    "centrifugo_node_num_users",
    "centrifugo_node_num_subscriptions",
    "centrifugo_node_num_channels",
    "centrifugo_node_num_nodes",
    "centrifugo_node_build",
    "centrifugo_node_messages_sent_count",
    "centrifugo_node_messages_received_count",
    "centrifugo_client_connections_accepted",
    "centrifugo_client_connections_inflight",
    "centrifugo_client_subscriptions_accepted",
    "centrifugo_client_subscriptions_inflight",
    "centrifugo_client_command_duration_seconds",
    "centrifugo_client_command_duration_seconds_histogram",
    "centrifugo_client_num_reply_errors",
    "centrifugo_client_num_server_disconnects",
    "centrifugo_transport_messages_sent",
    "centrifugo_transport_messages_sent_size",
    "centrifugo_transport_messages_received",
    "centrifugo_transport_messages_received_size",
    "centrifugo_api_command_duration_seconds",
    "centrifugo_api_command_duration_seconds_histogram",
)
_SUFFIXES = {
    "summary": ("_count", "_sum"),
    "histogram": ("_bucket", "_count", "_sum"),
}

Labels = frozenset[tuple[str, str]]


class Scrape:
    """One parsed scrape: `value(name, **labels)`, `total(name, **labels)` (sum over the
    series matching the given labels) and the series names with their label names."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        self.label_names: dict[str, set[tuple[str, ...]]] = collections.defaultdict(set)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value
                base = s.name
                for suffix in _SUFFIXES.get(family.type, ()):
                    if base.endswith(suffix):
                        base = base[: -len(suffix)]
                        break
                names = tuple(sorted(k for k in s.labels if k not in ("quantile", "le")))
                self.label_names[base].add(names)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


async def scrape(url: str) -> Scrape:
    # A new TCP connection per scrape: the kernel hands it to either worker.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain")
            return Scrape(await resp.text())


async def scrape_until(
    url: str, pred: Callable[[Scrape], bool], what: str, timeout: float = SCRAPE_TIMEOUT
) -> Scrape:
    """Scrape until `pred` holds on three scrapes in a row (so most likely both workers
    answered one of them); fail with the last scrape's relevant lines."""
    deadline = asyncio.get_running_loop().time() + timeout
    streak = 0
    while True:
        got = await scrape(url)
        streak = streak + 1 if pred(got) else 0
        if streak >= 3:
            return got
        if asyncio.get_running_loop().time() > deadline:
            lines = [ln for ln in got.text.splitlines() if ln.startswith("centrifugo_node_num")]
            raise AssertionError(f"scrape never showed {what}:\n" + "\n".join(lines))
        if not streak:
            await asyncio.sleep(0.2)  # poll interval; gauges move with heartbeats


def uid() -> str:
    return uuid.uuid4().hex[:8]


class CountingClient(WsClient):
    """WsClient that counts the frames it sends and the messages it receives."""

    def __init__(self, url: str, name: str = "") -> None:
        super().__init__(url, name)
        self.frames_out = 0
        self.messages_in = 0

    def _on_reply(self, obj: dict[str, Any]) -> None:
        self.messages_in += 1
        if not obj:
            self.frames_out += 1  # the pong WsClient sends back
        super()._on_reply(obj)

    async def command(self, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        self.frames_out += 1
        return await super().command(body, timeout)

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None
        self.frames_out += 1
        await self._ws.send_str(text)


def metrics_config(redis_port: int, **extra: Any) -> dict[str, Any]:
    cfg = redis_config(redis_port, prometheus={"enabled": True})
    # No server pings during a test: frame counts stay exact.
    cfg["client"] = {**cfg["client"], "ping_interval": "300s", "pong_timeout": "10s"}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _redis_outlives_servers(redis_server: RedisProcess) -> RedisProcess:
    """Set up before the module's servers, so torn down after them: a worker that
    gunicorn (re)starts while Redis is already gone fails to boot, with a traceback."""
    return redis_server


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    items: list[Any] = []
    yield items
    for item in items:
        await item.close()


async def clients_on_every_worker(
    srv: ServerHandle, closing: list[Any], per_worker: int, tries: int = 80
) -> dict[int, list[CountingClient]]:
    """Connected clients, at least `per_worker` on each worker (surplus ones are kept too)."""
    by_worker: dict[int, list[CountingClient]] = collections.defaultdict(list)
    for i in range(tries):
        c = CountingClient(srv.ws_url, f"c{i}")
        closing.append(c)
        await c.connect(srv.token(f"user-{i}"))
        pid = worker_of(srv, c.local_port)
        assert pid is not None, "connection not found on any worker"
        by_worker[pid].append(c)
        if len(by_worker) == WORKERS and all(len(v) >= per_worker for v in by_worker.values()):
            return by_worker
    raise AssertionError(f"{tries} connections never covered every worker: {dict(by_worker)}")


async def wait_info_counts(api: ApiClient, counts: list[int], timeout: float = 10.0) -> None:
    """API `info` lists one node per worker with exactly these num_clients."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        nodes = (await api.result("info"))["nodes"]
        got = sorted(n["num_clients"] for n in nodes)
        if got == sorted(counts):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"info num_clients {got}, expected {sorted(counts)}")
        await asyncio.sleep(0.2)  # poll interval; peers report with their heartbeat


def metrics_url(srv: ServerHandle, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or srv.port}/metrics"


# --------------------------------------------------------------------------------------------


async def test_scrape_sums_every_worker(
    server_factory, redis_server: RedisProcess, closing: list[Any]
) -> None:
    srv = server_factory(metrics_config(redis_server.port), workers=WORKERS)
    api = ApiClient(srv)
    closing.append(api)
    by_worker = await clients_on_every_worker(srv, closing, per_worker=3)
    clients = [c for cs in by_worker.values() for c in cs]
    total = len(clients)
    await wait_info_counts(api, [len(cs) for cs in by_worker.values()])

    channel = f"rec:m-{uid()}"
    for c in clients:
        await c.subscribe(channel)
        err = await c.command({"subscribe": {"channel": f"nope:{uid()}"}})
        assert err["error"]["code"] == 102, err
        err = await c.command({"publish": {"channel": channel, "data": {}}})
        assert err["error"]["code"] == 103, err
    for i in range(3):
        await api.result("publish", {"channel": channel, "data": {"n": i}})
    await asyncio.gather(
        *(c.wait_for(lambda c=c: len(c.pubs[channel]) == 3, what="3 publications") for c in clients)
    )

    # One client per worker sends garbage: the server disconnects it with 3501.
    victims = [cs[0] for cs in by_worker.values()]
    for v in victims:
        await v.send_raw("this is not json")
    for v in victims:
        await v.wait_for(lambda v=v: v.closed is not None, what="closed")
        assert v.closed[0] == 3501, v.closed
    alive = total - len(victims)

    ws = {"transport": "websocket"}
    # Message counts reach the scrape within a second (app/metrics.py MessageCounter).
    got = await scrape_until(
        metrics_url(srv),
        lambda s: (
            s.value("centrifugo_node_num_clients") == alive
            and s.value("centrifugo_node_num_subscriptions") == alive
            and s.value("centrifugo_node_num_nodes") == WORKERS
            and s.total("centrifugo_transport_messages_sent", **ws)
            == sum(c.messages_in for c in clients)
            and s.total("centrifugo_transport_messages_received", **ws)
            == sum(c.frames_out for c in clients) - len(victims)
        ),
        f"node_num_clients == {alive} and every message counted",
    )
    assert got.value("centrifugo_node_num_users") == alive
    # Both workers hold a subscriber of the channel: one channel per node, summed.
    assert got.value("centrifugo_node_num_channels") == WORKERS
    assert got.total("centrifugo_client_connections_accepted", **ws, accept_protocol="json") == (
        total
    )
    assert got.total("centrifugo_client_connections_inflight", **ws) == alive
    assert got.total("centrifugo_client_subscriptions_accepted", channel_namespace="rec") == total
    assert got.total("centrifugo_client_subscriptions_inflight", channel_namespace="rec") == alive
    assert (
        got.value(
            "centrifugo_client_num_reply_errors",
            method="subscribe",
            code="102",
            channel_namespace="nope",
        )
        == total
    )
    assert (
        got.value(
            "centrifugo_client_num_reply_errors",
            method="publish",
            code="103",
            channel_namespace="rec",
        )
        == total
    )
    assert got.value("centrifugo_client_num_server_disconnects", code="3501") == len(victims)
    # Every command the clients sent (the victims' garbage frames decode to none, and
    # centrifuge counts decoded commands), every message they got, counted by one worker
    # or the other.
    assert got.total("centrifugo_transport_messages_received", **ws) == (
        sum(c.frames_out for c in clients) - len(victims)
    )
    # frame_type as centrifugal/protocol names it: commands by name, pushes "push_*".
    assert (
        got.total("centrifugo_transport_messages_received", **ws, frame_type="subscribe")
        == 2 * total
    )
    assert got.total("centrifugo_transport_messages_received", **ws, frame_type="connect") == (
        total
    )
    assert (
        got.total("centrifugo_transport_messages_sent", **ws, frame_type="push_publication")
        == 3 * total
    )
    assert (
        got.total(
            "centrifugo_transport_messages_sent",
            **ws,
            frame_type="subscribe",
            channel_namespace="rec",
        )
        == total
    )
    assert not got.total("centrifugo_transport_messages_sent", **ws, frame_type="unknown")
    assert not got.total("centrifugo_transport_messages_received", **ws, frame_type="unknown")
    assert got.total("centrifugo_transport_messages_sent", **ws) == sum(
        c.messages_in for c in clients
    )
    assert got.total("centrifugo_transport_messages_received_size", **ws) > 0
    assert got.total("centrifugo_transport_messages_sent_size", **ws) > 0
    assert (
        got.total(
            "centrifugo_client_command_duration_seconds_count",
            method="subscribe",
            channel_namespace="rec",
        )
        == total
    )
    # Publications: sent to Redis once each, received from Redis by both workers.
    assert (
        got.value(
            "centrifugo_node_messages_sent_count", type="publication", channel_namespace="rec"
        )
        == 3
    )
    assert (
        got.value(
            "centrifugo_node_messages_received_count", type="publication", channel_namespace="rec"
        )
        == 3 * WORKERS
    )
    assert (
        got.value(
            "centrifugo_api_command_duration_seconds_count", protocol="http", method="publish"
        )
        == 3
    )
    assert (
        got.value(
            "centrifugo_api_command_duration_seconds_histogram_count",
            protocol="http",
            method="publish",
        )
        == 3
    )
    n_info = got.value(
        "centrifugo_api_command_duration_seconds_count", protocol="http", method="info"
    )
    assert n_info is not None and n_info >= 1  # wait_info_counts called it
    assert got.value("centrifugo_node_build", version=VERSION_STRING) == 1
    assert got.total("centrifugo_node_action_count", action="add_client") == total
    # Summary quantiles survive multiprocess mode (taken from the merged `_histogram`
    # companion, app/metrics_scrape.py), and every worker has its process metrics.
    p99 = got.value(
        "centrifugo_client_command_duration_seconds",
        method="subscribe",
        channel_namespace="rec",
        quantile="0.99",
    )
    assert p99 is not None and p99 > 0
    for pid in by_worker:
        rss = got.value("process_resident_memory_bytes", pid=str(pid))
        assert rss is not None and rss > 0, pid

    # Names and label names exactly as research §7.2 lists them.
    exposed = {name for name in got.label_names if name.startswith("centrifugo_")}
    unknown = sorted(exposed - SPEC.keys())
    assert not unknown, f"series not in research §7.2: {unknown}"
    for name in exposed:
        want = SPEC[name]
        if want is not None:
            assert got.label_names[name] == {tuple(sorted(want))}, (name, got.label_names[name])
    missing = sorted(set(MUST_EXPOSE) - exposed)
    assert not missing, f"missing series: {missing}"


async def test_killed_worker_gauges_vanish_counters_stay(
    server_factory, redis_server: RedisProcess, closing: list[Any]
) -> None:
    srv = server_factory(metrics_config(redis_server.port), workers=WORKERS)
    by_worker = await clients_on_every_worker(srv, closing, per_worker=2)
    channel = f"rec:k-{uid()}"
    for cs in by_worker.values():
        for c in cs:
            await c.subscribe(channel)
    total = sum(len(cs) for cs in by_worker.values())
    url = metrics_url(srv)
    await scrape_until(
        url,
        lambda s: (
            s.value("centrifugo_node_num_clients") == total
            and s.total("centrifugo_client_connections_inflight") == total
        ),
        f"{total} clients",
    )

    victim_pid, victim_clients = next(iter(by_worker.items()))
    survivors = total - len(victim_clients)
    os.kill(victim_pid, signal.SIGKILL)
    for c in victim_clients:
        await c.wait_for(lambda c=c: c.closed is not None, what="socket dropped")

    def replaced() -> bool:
        pids = worker_pids(srv)
        return len(pids) == WORKERS and victim_pid not in pids

    deadline = asyncio.get_running_loop().time() + 15
    while not replaced():
        assert asyncio.get_running_loop().time() < deadline, "worker not restarted"
        await asyncio.sleep(0.1)  # poll interval for gunicorn's respawn

    got = await scrape_until(
        url,
        lambda s: (
            s.value("centrifugo_node_num_clients") == survivors
            and s.value("centrifugo_node_num_subscriptions") == survivors
            and s.total("centrifugo_client_connections_inflight") == survivors
            and s.total("centrifugo_client_subscriptions_inflight") == survivors
        ),
        f"only the surviving worker's {survivors} clients",
    )
    # Counts of the dead worker stay in the sums: counters never go backwards.
    assert got.total("centrifugo_client_connections_accepted") == total
    assert got.total("centrifugo_client_subscriptions_accepted") == total
    assert got.value("centrifugo_node_build", version=VERSION_STRING) == 1

    # The replacement serves clients too. (Awaited also so that the test does not end
    # while it is still booting: a worker that boots after the module's Redis stopped
    # fails to start, with a traceback in the server log.)
    (new_pid,) = set(worker_pids(srv)) - set(by_worker)
    deadline = asyncio.get_running_loop().time() + 15
    for i in itertools.count():
        c = CountingClient(srv.ws_url, f"late{i}")
        closing.append(c)
        await c.connect(srv.token(f"late-{i}"))
        if worker_of(srv, c.local_port) == new_pid:
            break
        assert asyncio.get_running_loop().time() < deadline, "the replacement never served"
        await asyncio.sleep(0.05)  # poll interval while gunicorn's replacement boots


async def test_counters_survive_worker_rotation(
    server_factory, redis_server: RedisProcess, closing: list[Any]
) -> None:
    srv = server_factory(
        metrics_config(redis_server.port), workers=WORKERS, args=("--max-requests", "10")
    )
    api = ApiClient(srv)
    closing.append(api)
    first = set(worker_pids(srv))
    calls = 0
    deadline = asyncio.get_running_loop().time() + 30
    # API calls until gunicorn has replaced both original workers (each exits normally).
    while first & set(worker_pids(srv)):
        assert asyncio.get_running_loop().time() < deadline, "no rotation\n" + srv.log_tail()
        await api.result("info")
        calls += 1
    await api.result("info")  # served by a replacement
    calls += 1
    got = await scrape(metrics_url(srv))
    # Exited workers' counts stay in the sum; replacements booted and count on.
    assert (
        got.value("centrifugo_api_command_duration_seconds_count", protocol="http", method="info")
        == calls
    )
    assert got.value("centrifugo_node_build", version=VERSION_STRING) == 1


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


async def test_metrics_disabled_is_404(server_factory) -> None:
    srv = server_factory({**MEMORY, "prometheus": {"enabled": False}})
    assert _status(metrics_url(srv)) == 404
    assert _status(f"{srv.url}/health") == 200


async def test_health_disabled_is_404(server_factory) -> None:
    srv = server_factory({**MEMORY, "health": {"enabled": False}, "prometheus": {"enabled": True}})
    assert _status(f"{srv.url}/health") == 404
    assert _status(metrics_url(srv)) == 200


async def test_custom_handler_prefix(server_factory) -> None:
    srv = server_factory({**MEMORY, "prometheus": {"enabled": True, "handler_prefix": "/prom"}})
    got = await scrape(f"{srv.url}/prom")
    assert got.value("centrifugo_node_build", version=VERSION_STRING) == 1
    assert _status(metrics_url(srv)) == 404


async def test_internal_port_moves_endpoints(
    server_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    internal = free_port()

    # The readiness probe must look at the internal port, where /health now lives.
    def probe(handle: ServerHandle) -> bool:
        return _status_quiet(f"http://127.0.0.1:{internal}/health") == 200

    monkeypatch.setattr(helpers, "_probe_ready", probe)
    srv = server_factory(
        {**MEMORY, "prometheus": {"enabled": True}, "http_server": {"internal_port": internal}}
    )
    base_int = f"http://127.0.0.1:{internal}"
    assert _status(f"{base_int}/metrics") == 200
    assert _status(f"{base_int}/health") == 200
    assert _status(metrics_url(srv)) == 404
    assert _status(f"{srv.url}/health") == 404

    async with aiohttp.ClientSession(headers={"X-API-Key": srv.api_key}) as s:
        async with s.post(f"{base_int}/api/info", json={}) as resp:
            assert resp.status == 200
            assert "nodes" in (await resp.json())["result"]
        async with s.post(f"{srv.api_url}/info", json={}) as resp:
            assert resp.status == 404
        # Client transports stay on the main port only.
        async with s.ws_connect(srv.ws_url) as ws:
            await ws.send_json({"id": 1, "connect": {"token": srv.token("u")}})
            reply = await ws.receive_json(timeout=5)
            assert "connect" in reply, reply
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(f"ws://127.0.0.1:{internal}/connection/websocket")
        assert e.value.status == 404


def _status_quiet(url: str) -> int:
    try:
        return _status(url)
    except OSError:
        return 0
