"""API `info` answers each node's metrics snapshot; suppressed publishes are counted.

Centrifugo (centrifuge `initMetrics`, `pubNode`) exports every node's Prometheus metrics each
`node.info_metrics_aggregate_interval`, flattened by the eagle library, and `info` answers them
per node as `metrics: {interval, items}`. Here every gunicorn worker is a node: on the Redis
engine with two workers, `info` must show both workers' snapshots, each with this worker's own
client count (the counts add up to the connected clients, not twice the total).

centrifuge's `incBrokerPublishSuppressed` counts a publication the broker dropped, in
`centrifugo_broker_publish_suppressed_count{reason, channel_namespace}`: an older version
(reason "version") and a repeated idempotency key (reason "idempotency").
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, WsClient

INTERVAL = 1.0
SNAPSHOT_TIMEOUT = 20.0  # a 1 s snapshot reaches peers with the next 3 s heartbeat

CONFIG: dict[str, Any] = {
    "node": {"info_metrics_aggregate_interval": "1s"},
    "prometheus": {"enabled": True},
    "channel": {
        "namespaces": [
            {"name": "ver", "history_size": 10, "history_ttl": "300s"},
        ],
    },
}


@pytest.fixture(scope="module")
def server(server_factory: Any, engine: str) -> ServerHandle:
    # The memory engine is one node by design; the Redis engine runs a node per worker.
    return server_factory(CONFIG, workers=2 if engine == "redis" else 1)


def _workers(server: ServerHandle) -> int:
    return 2 if server.config.get("engine", {}).get("type") == "redis" else 1


async def wait_info(
    api: ApiClient, pred: Any, what: str, timeout: float = SNAPSHOT_TIMEOUT
) -> list[dict[str, Any]]:
    """Poll `info` (random workers) until `pred(nodes)` holds."""
    deadline = time.monotonic() + timeout
    nodes: list[dict[str, Any]] = []
    while True:
        nodes = (await api.result("info"))["nodes"]
        if pred(nodes):
            return nodes
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {timeout}s; last info: {nodes}")
        await asyncio.sleep(0.1)  # poll interval


def _clients(node: dict[str, Any]) -> float | None:
    return node.get("metrics", {}).get("items", {}).get("centrifugo.node.num_clients")


async def test_info_answers_each_nodes_metrics_snapshot(server: ServerHandle) -> None:
    workers = _workers(server)
    api = ApiClient(server)
    clients = [WsClient(server.ws_url, f"c{i}") for i in range(3)]
    try:
        nodes = await api.wait_nodes(workers)
        # Every node has a snapshot from its start, with the configured interval.
        nodes = await wait_info(
            api,
            lambda ns: len(ns) == workers and all(_clients(n) is not None for n in ns),
            "snapshot on every node",
        )
        for n in nodes:
            assert n["metrics"]["interval"] == INTERVAL
            items = n["metrics"]["items"]
            # eagle's names: namespace.subsystem.name, then label name/value pairs.
            assert any(k.startswith("centrifugo.node.build.version.") for k in items), items
        for c in clients:
            await c.open()
            await c.connect(server.token(c.name))
        # A refreshed snapshot per node: each counts its own clients, together all of them.
        nodes = await wait_info(
            api,
            lambda ns: (
                len(ns) == workers
                and sum(_clients(n) or 0 for n in ns) == len(clients)
                and all(_clients(n) == n["num_clients"] for n in ns)
            ),
            f"snapshots counting {len(clients)} clients",
        )
        assert {n["uid"] for n in nodes} == {n["uid"] for n in await api.wait_nodes(workers)}
    finally:
        for c in clients:
            await c.close()
        await api.close()


def _scrape(server: ServerHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


SUPPRESSED = "centrifugo_broker_publish_suppressed_count"


async def test_suppressed_publishes_are_counted_by_reason(server: ServerHandle) -> None:
    api = ApiClient(server)
    ch = f"ver:{uuid.uuid4().hex[:8]}"
    try:
        before = _scrape(server)
        version_key = (SUPPRESSED, (("channel_namespace", "ver"), ("reason", "version")))
        idem_key = (SUPPRESSED, (("channel_namespace", "ver"), ("reason", "idempotency")))
        r2 = await api.result("publish", {"channel": ch, "data": {"v": 2}, "version": 2})
        r1 = await api.result("publish", {"channel": ch, "data": {"v": 1}, "version": 1})
        assert r1 == r2  # dropped: answered with the current top
        for _ in range(2):
            await api.result("publish", {"channel": ch, "data": {"v": 3}, "idempotency_key": "k1"})
        after = _scrape(server)
        assert after.get(version_key, 0) - before.get(version_key, 0) == 1
        assert after.get(idem_key, 0) - before.get(idem_key, 0) == 1
    finally:
        await api.close()
