"""Map subscriptions end to end on the PostgreSQL map broker: test_map_subscriptions.py's
scenarios (imported, so they run here against this module's `srv`) through centrifuge-js,
on a server with `map_broker: {type: postgres}` and two workers (the Redis engine for the
rest), so a client and the API
call that changes its map often land on different workers and every change crosses
PostgreSQL (the stream table read by each worker).

Not rerun here: test_gap_beyond_stream_resyncs_from_state (the PostgreSQL broker keeps its
stream whole until the partition is dropped, as Centrifugo's does, so that gap is recovered,
not resynced: test_gap_is_recovered_from_the_kept_stream below), and the Redis-specific
SIGKILL catch-up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import postgres

from .helpers import ServerHandle, start_server
from .test_map_subscriptions import (
    CONFIG,
    js,
    test_client_publish_and_remove,
    test_clients_presence_channel,
    test_key_ttl_expiry_is_a_removal,
    test_per_key_delta,
    test_recovery_after_disconnect,
    test_refusals,
    test_state_sync_across_pages_then_live,
    test_state_then_stream_pages_then_live,
    uid,
)

__all__ = [  # collected here, with this module's `srv`
    "test_client_publish_and_remove",
    "test_clients_presence_channel",
    "test_key_ttl_expiry_is_a_removal",
    "test_per_key_delta",
    "test_recovery_after_disconnect",
    "test_refusals",
    "test_state_sync_across_pages_then_live",
    "test_state_then_stream_pages_then_live",
]

pytestmark = pytest.mark.usefixtures("node_js")


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(postgres.require())
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def srv(pg: postgres.PostgresServer, e2e_redis_url: str) -> Iterator[ServerHandle]:
    section = {
        "dsn": pg.dsn,
        # Protobuf clients publish any bytes: BYTEA columns (JSONB wants JSON).
        "binary_data": True,
        "use_notify": True,
        "ttl_check_interval": "200ms",
    }
    # Two workers need a shared engine for everything else (Centrifugo's rule: memory
    # serves one process); the map channels are PostgreSQL's alone.
    engine = {"type": "redis", "redis": {"address": e2e_redis_url, "prefix": f"t{uid()}"}}
    config = {**CONFIG, "engine": engine, "map_broker": {"type": "postgres", "postgres": section}}
    handle = start_server(config, workers=2)
    yield handle
    handle.stop()


def test_gap_is_recovered_from_the_kept_stream(srv: ServerHandle) -> None:
    """stream_size 2, five changes while away: the PostgreSQL stream still holds them, so the
    SDK recovers without a second sync (Centrifugo's PostgreSQL broker trims nothing)."""
    out = js(
        srv,
        """
        const c = newClient({ token: token('u') });
        const sub = c.newMapSubscription(env.CH);
        const syncs = collect(sub, 'sync');
        const updates = collect(sub, 'update');
        sub.subscribe(); c.connect();
        await sub.ready(5000);
        c.disconnect();
        for (let i = 0; i < 5; i++) {
          await api('map_publish', { channel: env.CH, key: `k${i}`, data: { i } });
        }
        c.connect();
        await waitUntil(sub, 'update', () => updates.length >= 5, 8000, 'recovered updates');
        return { syncs: syncs.length, keys: updates.map((u) => u.key) };
        """,
        CH=f"small:{uid()}",
    )
    assert out == {"syncs": 1, "keys": ["k0", "k1", "k2", "k3", "k4"]}
