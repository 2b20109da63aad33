"""RedisPresenceManager: entries, refresh, removal, zset expiry and user counts (research §4)."""

from __future__ import annotations

import time

import pytest

from app.engines.redis import create_redis_engine
from app.models import ClientInfo, PresenceStats

from .conftest import engine_config, url_of

DATA = "centrifugo.presence.data.ch"
EXPIRE = "centrifugo.presence.expire.ch"
USER_EXPIRE = "centrifugo.presence.user.expire.ch"
USER_CLIENTS = "centrifugo.presence.user.clients.ch"
ALL_KEYS = (DATA, EXPIRE, USER_EXPIRE, USER_CLIENTS)


@pytest.fixture
async def engine(make_engine, redis_proc, rdb):
    _, presence, _ = await make_engine(url_of(redis_proc), presence_ttl="30s")
    return presence, rdb


async def expire_client(rdb, client: str) -> None:
    """Make a client look like nobody refreshed it for a whole TTL (its node died)."""
    assert await rdb.zadd(EXPIRE, {client: int(time.time()) - 1}, xx=True) == 0
    assert await rdb.zscore(EXPIRE, client) < time.time()


async def test_add_get_and_stats(engine):
    presence, _ = engine
    infos = {
        "c1": ClientInfo("u1", "c1", b'{"name":"A"}', b"\x00chan"),
        "c2": ClientInfo("u1", "c2"),
        "c3": ClientInfo("u2", "c3", None, b"{}"),
    }
    assert await presence.presence("ch") == {}
    assert await presence.presence_stats("ch") == PresenceStats(0, 0)
    for cid, info in infos.items():
        await presence.add_presence("ch", cid, info)
    assert await presence.presence("ch") == infos
    # Two clients of one user count as one user.
    assert await presence.presence_stats("ch") == PresenceStats(3, 2)
    assert await presence.presence("other") == {}


async def test_entries_and_keys_carry_the_ttl(engine):
    presence, rdb = engine
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    now = time.time()
    for key in ALL_KEYS:
        assert 25 <= await rdb.ttl(key) <= 30, key
    assert now + 25 <= await rdb.zscore(EXPIRE, "c1") <= now + 31
    assert now + 25 <= await rdb.zscore(USER_EXPIRE, "u1") <= now + 31


async def test_refresh_updates_info_and_extends_expiry(engine):
    presence, rdb = engine
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1", b"old"))
    await rdb.zadd(EXPIRE, {"c1": int(time.time()) + 2})
    for key in ALL_KEYS:
        await rdb.expire(key, 5)
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1", b"new"))
    assert await presence.presence("ch") == {"c1": ClientInfo("u1", "c1", b"new")}
    assert await rdb.zscore(EXPIRE, "c1") >= time.time() + 25
    for key in ALL_KEYS:
        assert await rdb.ttl(key) >= 25, key
    # Refreshing an existing client does not count its user twice.
    for _ in range(3):
        await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    assert await presence.presence_stats("ch") == PresenceStats(1, 1)
    assert await rdb.hget(USER_CLIENTS, "u1") == "1"


async def test_remove(engine):
    presence, rdb = engine
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    await presence.add_presence("ch", "c2", ClientInfo("u1", "c2"))
    await presence.add_presence("ch", "c3", ClientInfo("u2", "c3"))
    await presence.remove_presence("ch", "c1", "u1")
    assert set(await presence.presence("ch")) == {"c2", "c3"}
    assert await presence.presence_stats("ch") == PresenceStats(2, 2)
    # Removing twice, or an unknown client, changes nothing.
    await presence.remove_presence("ch", "c1", "u1")
    await presence.remove_presence("ch", "nope", "u1")
    assert await presence.presence_stats("ch") == PresenceStats(2, 2)
    # The user's last client leaving drops the user.
    await presence.remove_presence("ch", "c2", "u1")
    assert await presence.presence_stats("ch") == PresenceStats(1, 1)
    assert await rdb.zscore(USER_EXPIRE, "u1") is None
    assert await rdb.hget(USER_CLIENTS, "u1") is None
    await presence.remove_presence("ch", "c3", "u2")
    assert await presence.presence("ch") == {}
    assert await presence.presence_stats("ch") == PresenceStats(0, 0)


async def test_expired_entries_vanish(engine):
    presence, rdb = engine
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    await presence.add_presence("ch", "c2", ClientInfo("u2", "c2"))
    await expire_client(rdb, "c1")
    assert set(await presence.presence("ch")) == {"c2"}
    # The read cleaned up after the dead entry.
    assert not await rdb.hexists(DATA, "c1")
    assert await rdb.zscore(EXPIRE, "c1") is None
    await expire_client(rdb, "c2")
    assert await presence.presence_stats("ch") == PresenceStats(0, 0)


async def test_stats_drop_users_whose_clients_all_expired(engine):
    presence, rdb = engine
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    await presence.add_presence("ch", "c2", ClientInfo("u1", "c2"))
    await presence.add_presence("ch", "c3", ClientInfo("u2", "c3"))
    await expire_client(rdb, "c1")
    assert await presence.presence_stats("ch") == PresenceStats(2, 2)
    await expire_client(rdb, "c2")
    assert await presence.presence_stats("ch") == PresenceStats(1, 1)
    # Expiry by a presence read is counted the same way.
    await expire_client(rdb, "c3")
    assert await presence.presence("ch") == {}
    assert await presence.presence_stats("ch") == PresenceStats(0, 0)


async def test_user_counts_stay_right_after_a_client_expired(engine):
    presence, _ = engine
    # u1 has a client on a node that died (c1) and one on a live node (c2).
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    await presence.add_presence("ch", "c2", ClientInfo("u1", "c2"))
    await expire_client(engine[1], "c1")
    assert await presence.presence_stats("ch") == PresenceStats(1, 1)
    # c2 leaves: u1 has no client left anywhere.
    await presence.remove_presence("ch", "c2", "u1")
    assert await presence.presence_stats("ch") == PresenceStats(0, 0)
    # An expired client coming back (its node resumed) counts once again.
    await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
    await presence.add_presence("ch", "c3", ClientInfo("u1", "c3"))
    await presence.remove_presence("ch", "c1", "u1")
    assert await presence.presence_stats("ch") == PresenceStats(1, 1)
    await presence.remove_presence("ch", "c3", "u1")
    assert await presence.presence_stats("ch") == PresenceStats(0, 0)


async def test_presence_is_shared_between_nodes(make_engine, redis_proc, rdb):
    _, pa, _ = await make_engine(url_of(redis_proc), node_id="a")
    _, pb, _ = await make_engine(url_of(redis_proc), node_id="b")
    await pa.add_presence("ch", "ca", ClientInfo("u1", "ca"))
    await pb.add_presence("ch", "cb", ClientInfo("u1", "cb"))
    assert set(await pa.presence("ch")) == {"ca", "cb"}
    assert await pb.presence_stats("ch") == PresenceStats(2, 1)
    await pa.remove_presence("ch", "ca", "u1")
    assert await pb.presence("ch") == {"cb": ClientInfo("u1", "cb")}


async def test_presence_manager_without_a_running_broker(redis_proc, rdb):
    broker, presence = create_redis_engine(engine_config(url_of(redis_proc), prefix="solo"))
    try:
        await presence.add_presence("ch", "c1", ClientInfo("u1", "c1"))
        assert await presence.presence("ch") == {"c1": ClientInfo("u1", "c1")}
        assert await rdb.exists("solo.presence.data.ch") == 1
        assert 55 <= await rdb.ttl("solo.presence.data.ch") <= 60  # default presence_ttl 60s
    finally:
        await broker.close()
