"""Two server processes ("nodes", two gunicorn workers each, so four Centrifugo nodes) on one
PostgreSQL with `broker.type: postgres` and `controller.type: postgres`: node-to-node
control (heartbeats, surveys, API actions by user) passes through Centrifugo's
`cf_controller_messages` table, where without the controller it stays within each worker.

- API `info` asked of either server lists all four nodes (their heartbeats), and API
  `channels` (a survey answered by every node, replies sent to the asking node by id) finds
  a subscriber connected to the other server.
- API `disconnect` of a user through one server disconnects that user's centrifuge-python
  clients on both servers, with the code asked for, and leaves other users connected.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.support import postgres

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, SdkSubscriber, api_pair, two_servers

WORKERS = 2
NS = "pgc"


def uid() -> str:
    return uuid.uuid4().hex[:8]


def disconnected_with(s: SdkSubscriber, code: int) -> Callable[[], bool]:
    def done() -> bool:
        return code in s.disconnect_codes

    return done


async def every_worker_lists(api: ApiClient, count: int, streak: int = 8) -> list[Any]:
    """API `info` until `streak` answers in a row (new connections, random workers) list
    `count` nodes: a worker that booted last knows the others from their next heartbeat."""
    seen = 0
    last: list[Any] = []
    deadline = time.monotonic() + 20
    while seen < streak:
        last = (await api.result("info"))["nodes"]
        assert len(last) <= count, last
        seen = seen + 1 if len(last) == count else 0
        if time.monotonic() > deadline:
            raise AssertionError(f"not {count} nodes x{streak}: {last}")
        if seen == 0:
            await asyncio.sleep(0.1)  # poll interval: heartbeats have no event to await
    return last


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


def pg_config(dsn: str) -> dict[str, Any]:
    return {
        "broker": {"enabled": True, "type": "postgres", "postgres": {"dsn": dsn}},
        "controller": {
            "enabled": True,
            "type": "postgres",
            "postgres": {"dsn": dsn, "use_notify": True},
        },
        "channel": {"namespaces": [{"name": NS, "allow_subscribe_for_client": True}]},
    }


@pytest.fixture(scope="module")
def nodes(pg: postgres.PostgresServer) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    cfg = pg_config(pg.dsn)
    with two_servers(cfg, WORKERS) as pair:
        yield pair


@pytest.fixture
async def apis(nodes: tuple[ServerHandle, ServerHandle]) -> AsyncIterator[tuple[ApiClient, ...]]:
    async with api_pair(nodes) as pair:
        yield pair


async def test_info_lists_every_node_and_surveys_reach_the_other_server(
    nodes: tuple[ServerHandle, ServerHandle], apis: tuple[ApiClient, ApiClient]
) -> None:
    a, _ = nodes
    api_a, api_b = apis
    for api in (api_a, api_b):
        listed = await every_worker_lists(api, 2 * WORKERS)
        assert len({n["uid"] for n in listed}) == 2 * WORKERS, listed

    channel = f"{NS}:survey-{uid()}"
    s = SdkSubscriber(a.ws_url, a.token("u-survey"), channel, name="sub@a")
    await s.start()
    try:
        # Asked of B: only A's worker holding the subscriber knows the channel.
        for _ in range(4):
            found = (await api_b.result("channels", {"pattern": channel}))["channels"]
            assert found == {channel: {"num_clients": 1}}, found
    finally:
        await s.stop()


async def test_disconnect_through_one_server_reaches_the_user_on_the_other(
    nodes: tuple[ServerHandle, ServerHandle], apis: tuple[ApiClient, ApiClient]
) -> None:
    a, b = nodes
    _, api_b = apis
    user, other = f"u-{uid()}", f"u-{uid()}"
    target_a = SdkSubscriber(a.ws_url, a.token(user), f"{NS}:d-{uid()}", name="user@a")
    target_b = SdkSubscriber(b.ws_url, b.token(user), f"{NS}:d-{uid()}", name="user@b")
    bystander = SdkSubscriber(a.ws_url, a.token(other), f"{NS}:d-{uid()}", name="other@a")
    clients = [target_a, target_b, bystander]
    for c in clients:
        await c.start()
    try:
        await api_b.result(
            "disconnect", {"user": user, "disconnect": {"code": 4500, "reason": "by api"}}
        )
        for c in (target_a, target_b):
            await c.wait_for(disconnected_with(c, 4500), what="disconnected")
            assert c.client_log[-1] == "disconnected", c.describe()
        # The bystander on A is untouched: still connected and subscribed.
        assert bystander.disconnect_codes == [] and bystander.client_log == [
            "connecting",
            "connected",
        ]
        found = (await api_b.result("channels", {"pattern": bystander.channel}))["channels"]
        assert found == {bystander.channel: {"num_clients": 1}}, found
    finally:
        for c in clients:
            await c.stop()
