"""The Grafana dashboard (deploy/grafana/centrifugo-py.json) against a real Prometheus.

Debian's `prometheus` server scrapes a two-worker server on the Redis engine every second
while a little traffic of every kind the dashboard shows runs twice (connect, subscribe,
publish, recover, tags filter, map and shared poll channels, server API calls and errors,
pings, server unsubscribes and disconnects, a PUB/SUB connection killed in Redis). Then
every panel's every query, with the dashboard's variables at their defaults, is evaluated
through Prometheus's HTTP API and must return at least one series with a number (not NaN:
a latency panel whose histogram saw no new observation in the window shows nothing).

Two waves, the second after Prometheus has scraped the first: a rate() or a
histogram_quantile() needs a series that grew between two scrapes in its window.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from app.sharedpoll.signature import sign
from tests.support.poll_backend import Backend

from .helpers import ServerHandle, free_port, start_server
from .redis_e2e_helpers import ApiClient, RedisProcess, WsClient, redis_config, worker_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "centrifugo-py.json"
PROMETHEUS = shutil.which("prometheus")
WORKERS = 2
SECRET = "dashboard-poll-secret"
USER = "alice"
# The dashboard's variables at their defaults; $__rate_interval as Grafana computes it
# for a 1 s scrape interval is at least 4 scrapes: 1m keeps both waves in every window.
VARIABLES = {
    "$__rate_interval": "1m",
    "$quantile": "0.99",
    "$job": ".*",
    "$instance": ".*",
}


def uid() -> str:
    return uuid.uuid4().hex[:8]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))  # a collapsed row holds its panels
        else:
            out.append(p)
    return out


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


async def test_dashboard_shape() -> None:
    """Every panel queries Prometheus, titles are unique, variables are the ones above."""
    dash = json.loads(DASHBOARD.read_text())
    ps = panels(dash)
    assert len(ps) >= 45
    titles = [p["title"] for p in ps]
    assert len(titles) == len(set(titles))
    for p in ps:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            expand(t["expr"])
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"datasource", "job", "instance", "quantile"}


class Prometheus:
    """A throwaway Prometheus server scraping one target every second."""

    def __init__(self, target_port: int) -> None:
        assert PROMETHEUS is not None
        self.dir = Path(tempfile.mkdtemp(prefix="cfpy-prom-"))
        self.port = free_port()
        config = self.dir / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "centrifugo",
                            "scrape_interval": "1s",
                            "scrape_timeout": "900ms",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                        }
                    ],
                }
            )
        )
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert self.proc.poll() is None, self.log_tail()
                assert time.monotonic() < deadline, "prometheus not ready\n" + self.log_tail()
                await asyncio.sleep(0.1)  # poll interval while it starts

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp:
                body = await resp.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for(self, expr: str, timeout: float = 15.0) -> None:
        """Until `expr` has a series with a number (the scrape loop's cadence)."""
        deadline = time.monotonic() + timeout
        while not has_number(await self.query(expr)):
            assert time.monotonic() < deadline, f"no data for {expr}\n{self.log_tail()}"
            await asyncio.sleep(0.25)  # poll interval: a scrape a second

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


def _poll_namespace(name: str, proxy: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "subscription_type": "shared_poll",
        "allow_subscribe_for_client": True,
        "shared_poll": {"refresh_interval": "200ms", "proxy_name": proxy, **extra},
    }


@pytest.fixture(scope="module")
def server(redis_server: RedisProcess, backend: Backend) -> Iterator[ServerHandle]:
    cfg = redis_config(
        redis_server.port,
        prometheus={
            "enabled": True,
            "instrument_http_handlers": True,
            "recovered_publications_histogram": True,
        },
    )
    cfg["map_broker"] = {"type": "redis", "redis": cfg["engine"]["redis"]}
    cfg["client"] = {**cfg["client"], "ping_interval": "1s", "pong_timeout": "900ms"}
    cfg["shared_poll"] = {"hmac_secret_key": SECRET}
    dead = free_port()  # nothing listens: every call to it fails (proxy errors)
    cfg["proxies"] = [
        {"name": "poller", "endpoint": f"http://127.0.0.1:{backend.port}/poll", "timeout": "2s"},
        {"name": "dead", "endpoint": f"http://127.0.0.1:{dead}/poll", "timeout": "1s"},
    ]
    cfg["channel"]["namespaces"] += [
        {"name": "tf", "allow_subscribe_for_client": True, "allow_tags_filter": True},
        {
            "name": "kv",
            "subscription_type": "map",
            "allow_subscribe_for_client": True,
            "map": {"mode": "ephemeral", "key_ttl": "60s"},
        },
        _poll_namespace("poll", "poller", mode="versioned", publish_enabled=True),
        _poll_namespace("pollbad", "dead"),
    ]
    handle = start_server(cfg, workers=WORKERS)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def prometheus(server: ServerHandle) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        # .ci/run installs it: under CI a missing binary is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail("no prometheus binary under CI (Debian package `prometheus`)")
        pytest.skip("no prometheus binary (Debian package `prometheus`)")
    prom = Prometheus(server.port)
    yield prom
    prom.stop()


class PingedClient(WsClient):
    """WsClient (which answers pings) counting the pings it got."""

    def __init__(self, url: str, name: str = "") -> None:
        super().__init__(url, name)
        self.pings = 0

    def _on_reply(self, obj: dict[str, Any]) -> None:
        if not obj:
            self.pings += 1
        super()._on_reply(obj)


async def clients_on_both_workers(srv: ServerHandle, closing: list[Any]) -> list[PingedClient]:
    """Connected clients of USER, at least one on each worker."""
    seen: dict[int, PingedClient] = {}
    for i in range(40):
        c = PingedClient(srv.ws_url, f"d{i}")
        closing.append(c)
        await c.connect(srv.token(USER))
        pid = worker_of(srv, c.local_port)
        assert pid is not None
        seen.setdefault(pid, c)
        if len(seen) == WORKERS:
            return list(seen.values())
    raise AssertionError("connections never covered both workers")


async def wave(srv: ServerHandle, redis: RedisProcess, backend: Backend) -> None:
    """One round of every kind of traffic the dashboard shows."""
    closing: list[Any] = []
    api = ApiClient(srv)
    closing.append(api)
    try:
        clients = await clients_on_both_workers(srv, closing)
        stream, tags, kv, poll, bad = (
            f"rec:{uid()}",
            f"tf:{uid()}",
            f"kv:{uid()}",
            f"poll:{uid()}",
            f"pollbad:{uid()}",
        )
        backend.set(poll, "k", {"v": 1}, 1)
        now = int(time.time())
        for c in clients:
            first = await c.subscribe(stream)
            await c.subscribe(tags, tf={"key": "t", "cmp": "eq", "val": "yes"})
            await c.subscribe(kv, type=1, phase=2)
            reply = await c.command({"subscribe": {"channel": f"nope:{uid()}"}})
            assert reply["error"]["code"] == 102, reply  # a reply error
            for ch in (poll, bad):
                assert "subscribe" in await c.command({"subscribe": {"channel": ch, "type": 4}})
            for ch in (poll, bad):  # `bad`'s refresh proxy fails: proxy and handler errors
                batch = {
                    "signature": sign(SECRET, ch, ["k"], USER, now, now + 3600),
                    "items": [{"key": "k", "version": 0}],
                }
                reply = await c.command(
                    {"sub_refresh": {"channel": ch, "type": 1, "track": [batch]}}
                )
                assert "sub_refresh" in reply, reply
        for i in range(3):
            await api.result("publish", {"channel": stream, "data": {"n": i}})
            await api.result("publish", {"channel": tags, "data": {"n": i}, "tags": {"t": "no"}})
            await api.result("map_publish", {"channel": kv, "key": f"k{i}", "data": {"n": i}})
        for _ in range(2):  # the second is suppressed (idempotency)
            await api.result("publish", {"channel": stream, "data": {}, "idempotency_key": uid()})
        key = uid()
        for _ in range(2):
            await api.result("publish", {"channel": stream, "data": {}, "idempotency_key": key})
        # Recovery with publications, from the position the first subscribe reported.
        late = WsClient(srv.ws_url, "late")
        closing.append(late)
        await late.connect(srv.token("late"))
        recovered = await late.subscribe(
            stream, recover=True, offset=first.get("offset", 0), epoch=first["epoch"]
        )
        assert recovered.get("recovered") is True, recovered
        for method, params in (
            ("history", {"channel": stream, "limit": 10}),
            ("presence", {"channel": stream}),
            ("presence_stats", {"channel": stream}),
            ("channels", {}),
            ("info", {}),
        ):
            await api.result(method, params)
        await api.result(
            "shared_poll_publish", {"channel": poll, "key": "k", "version": 10 + now, "data": 1}
        )
        err = await api.call("publish", {"channel": f"nope:{uid()}", "data": {}})
        assert err["error"]["code"] == 102, err  # an API error
        await backend.wait(lambda: bool(backend.of(poll)))
        # A ping and its pong on each client (ping_interval 1s).
        await asyncio.gather(
            *(c.wait_for(lambda c=c: c.pings >= 1, what="a ping") for c in clients)
        )
        # Server unsubscribes and disconnects (close frames sent by the server).
        await api.result("unsubscribe", {"user": "late", "channel": stream})
        await api.result("disconnect", {"user": "late"})
        await late.wait_for(lambda: late.closed is not None, what="disconnected")
        # Redis drops our PUB/SUB connections: each worker reconnects (a PUB/SUB error).
        redis.client().execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        for item in closing:
            await item.close()


async def test_every_panel_shows_data(
    server: ServerHandle,
    prometheus: Prometheus,
    redis_server: RedisProcess,
    backend: Backend,
) -> None:
    await prometheus.wait_ready()
    await prometheus.wait_for('up{job="centrifugo"} == 1')
    await wave(server, redis_server, backend)
    # The first wave's series are in Prometheus before the second wave grows them.
    await prometheus.wait_for("centrifugo_node_pub_sub_lag_seconds_count")
    await prometheus.wait_for("centrifugo_client_ping_pong_duration_seconds_count")
    await prometheus.wait_for("centrifugo_shared_poll_num_keys > 0")
    await wave(server, redis_server, backend)
    # Two scrapes after the second wave: every series it grew has been read.
    start = time.time()
    await prometheus.wait_for(f"timestamp(up) > {start + 2}")

    dash = json.loads(DASHBOARD.read_text())
    empty = []
    for p in panels(dash):
        for t in p["targets"]:
            expr = expand(t["expr"])
            if not has_number(await prometheus.query(expr)):
                empty.append(f"{p['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty) + "\n" + server.log_tail()
