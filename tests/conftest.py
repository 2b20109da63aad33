"""Fixtures shared by every test directory.

`server_factory` (module scope) and `fresh_server_factory` (function scope) start real server
processes; see tests/e2e/helpers.py for ServerHandle (url, ws_url, api_key, hmac_key, token(),
sub_token(), api(), log_text(), ...). Servers are stopped at the end of their scope, and the
test fails if the server log contains a Python traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

# Same module object the e2e tests import (`from .helpers import ...` inside package `e2e`);
# the fallback covers a layout where tests/ itself becomes a package.
try:
    from e2e.helpers import ServerHandle, start_server
except ImportError:
    from tests.e2e.helpers import ServerHandle, start_server

ServerFactory = Callable[..., ServerHandle]


def _factory() -> tuple[ServerFactory, list[ServerHandle]]:
    started: list[ServerHandle] = []

    def start(
        config: Mapping[str, Any],
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> ServerHandle:
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
def server_factory() -> Iterator[ServerFactory]:
    """`start(config, workers=1, env=None, args=()) -> ServerHandle`, stopped after the module."""
    start, started = _factory()
    yield start
    _stop_all(started)


@pytest.fixture
def fresh_server_factory() -> Iterator[ServerFactory]:
    """Like `server_factory` but the servers are stopped after the test."""
    start, started = _factory()
    yield start
    _stop_all(started)
