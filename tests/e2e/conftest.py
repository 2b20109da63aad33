"""Fixtures for end-to-end tests (server factories live in tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisProcess

from .helpers import node_available


@pytest.fixture(scope="session")
def node_js() -> None:
    """Skip the test when node or the npm-installed centrifuge-js is missing (fail under CI)."""
    reason = node_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs it)")
        pytest.skip(reason)


def _redis() -> Iterator[RedisProcess]:
    r = RedisProcess()
    r.start()
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def redis_server(redis_server_available: str) -> Iterator[RedisProcess]:
    """A redis-server of the module's own (free port, no persistence); the binary is
    tests/support/redis_binary.py's (skipped without one, failed under CI)."""
    yield from _redis()


@pytest.fixture
def fresh_redis_server(redis_server_available: str) -> Iterator[RedisProcess]:
    """A redis-server of the test's own, for tests that stop, kill or freeze it."""
    yield from _redis()
