"""Fixtures for end-to-end tests (server factories live in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from .helpers import node_available


@pytest.fixture(scope="session")
def node_js() -> None:
    """Skip the test when node or the npm-installed centrifuge-js is missing (fail under CI)."""
    reason = node_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs it)")
        pytest.skip(reason)
