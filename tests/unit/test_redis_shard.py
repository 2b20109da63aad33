"""Redis engine addressing, hashing and key names (app/engines/redis/address.py, keys.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from redis.crc import key_slot

from app.config import load_config
from app.engines.redis.address import RedisConfigError, parse_address, specs_from_config
from app.engines.redis.keys import (
    CLUSTER_PARTITIONS,
    REDIS_SLOTS,
    Keys,
    balanced_partition_tags,
    fnv64a,
    jump_hash,
)


def rcfg(**flags):
    return load_config(
        None, env={}, flags={f"engine.redis.{k}": v for k, v in flags.items()}
    ).engine.redis


# --- parse_address ---


def test_parse_redis_url_with_credentials_and_db():
    s = parse_address("redis://user:pass@h:6380/2", rcfg())
    assert (s.kind, s.host, s.port, s.db) == ("standalone", "h", 6380, 2)
    assert (s.username, s.password, s.tls is None, s.unix_path) == ("user", "pass", True, "")


def test_parse_redis_url_percent_encoded_password_and_defaults():
    s = parse_address("redis://:p%40ss%3A@h", rcfg())
    assert (s.username, s.password, s.host, s.port, s.db) == ("", "p@ss:", "h", 6379, 0)


def test_parse_rediss_enables_tls():
    s = parse_address("rediss://h:6390", rcfg())
    assert (s.kind, s.host, s.port, s.tls is not None) == ("standalone", "h", 6390, True)


def test_parse_unix_socket_with_db():
    s = parse_address("unix:///var/run/redis.sock?db=1", rcfg())
    assert (s.kind, s.unix_path, s.db) == ("standalone", "/var/run/redis.sock", 1)


def test_parse_sentinel():
    s = parse_address("redis+sentinel://h:26379?sentinel_master_name=m&addr=h2:26380", rcfg())
    assert s.kind == "sentinel"
    assert s.seeds == [("h", 26379), ("h2", 26380)]
    assert s.master_name == "m"
    # Default sentinel port, and the master name may come from the config instead.
    s = parse_address("redis+sentinel://h?addr=h2", rcfg(sentinel_master_name="mm"))
    assert s.seeds == [("h", 26379), ("h2", 26379)] and s.master_name == "mm"


def test_parse_sentinel_without_master_name_is_an_error():
    with pytest.raises(RedisConfigError, match="sentinel_master_name"):
        parse_address("redis+sentinel://h:26379", rcfg())


def test_parse_cluster():
    s = parse_address("redis+cluster://h:7000?addr=h2:7001&addr=h3:7002", rcfg())
    assert s.kind == "cluster"
    assert s.seeds == [("h", 7000), ("h2", 7001), ("h3", 7002)]


def test_parse_bare_host_port_and_host():
    s = parse_address("10.0.0.5:6381", rcfg())
    assert (s.kind, s.host, s.port, s.tls is None) == ("standalone", "10.0.0.5", 6381, True)
    s = parse_address("localhost", rcfg())
    assert (s.host, s.port) == ("localhost", 6379)


def test_parse_takes_config_defaults():
    s = parse_address("redis://h:1", rcfg(user="u", password="p", db=3))
    assert (s.username, s.password, s.db) == ("u", "p", 3)
    s = parse_address("redis://x:y@h:1/4", rcfg(user="u", password="p", db=3))
    assert (s.username, s.password, s.db) == ("x", "y", 4)


@pytest.mark.parametrize("address", ["http://h:1", "memcached://h:11211", "redis://h:port"])
def test_parse_bad_address_is_an_error(address):
    with pytest.raises(RedisConfigError):
        parse_address(address, rcfg())


def test_specs_from_config_forms():
    specs = specs_from_config(rcfg(address=["redis://a:1", "b:2"]))
    assert [(s.kind, s.host, s.port) for s in specs] == [
        ("standalone", "a", 1),
        ("standalone", "b", 2),
    ]
    (c,) = specs_from_config(rcfg(cluster_address=["a:7000", "redis://b:7001"]))
    assert c.kind == "cluster" and c.seeds == [("a", 7000), ("b", 7001)]
    (s,) = specs_from_config(rcfg(sentinel_address=["a:26379"], sentinel_master_name="m"))
    assert s.kind == "sentinel" and s.seeds == [("a", 26379)] and s.master_name == "m"


# --- hashing ---


def test_fnv64a_known_values():
    assert fnv64a(b"") == 0xCBF29CE484222325
    assert fnv64a(b"a") == 0xAF63DC4C8601EC8C
    assert fnv64a(b"foobar") == 0x85944171F73967E8


def test_jump_hash_range_and_stability():
    keys = [random.Random(i).getrandbits(64) for i in range(2000)]
    for n in (1, 2, 3, 7, 16):
        first = [jump_hash(k, n) for k in keys]
        assert first == [jump_hash(k, n) for k in keys]
        assert set(first) == set(range(n))
    assert {jump_hash(k, 1) for k in keys} == {0}


def test_jump_hash_moves_about_one_in_n_plus_one_keys_and_only_to_the_new_bucket():
    keys = [fnv64a(f"channel-{i}".encode()) for i in range(20000)]
    for n in (1, 2, 4, 9):
        moved = 0
        for k in keys:
            before, after = jump_hash(k, n), jump_hash(k, n + 1)
            if before != after:
                assert after == n  # a key only ever moves to the added bucket
                moved += 1
        share = moved / len(keys)
        assert abs(share - 1 / (n + 1)) < 0.02, (n, share)


def test_jump_hash_is_balanced():
    counts = Counter(jump_hash(fnv64a(f"ch{i}".encode()), 5) for i in range(20000))
    assert all(3600 < c < 4400 for c in counts.values()), counts


@pytest.mark.parametrize("n", [CLUSTER_PARTITIONS, 32, 5])
def test_balanced_partition_tags_slots_in_range(n):
    tags = balanced_partition_tags(n)
    assert len(tags) == len(set(tags)) == n
    for i, tag in enumerate(tags):
        assert "{" not in tag and "}" not in tag
        slot = key_slot(tag.encode())
        assert i * REDIS_SLOTS // n <= slot < (i + 1) * REDIS_SLOTS // n


# --- key names ---

CHANNELS = ["news", "ns:room.1", "$priv", "user#42,43", "a}.b{c", "dots.in.name", "x" * 200]


def test_standalone_key_names():
    k = Keys("centrifugo", cluster=False)
    assert k.stream("ch") == "centrifugo.stream.ch"
    assert k.meta("ch") == "centrifugo.stream.meta.ch"
    assert k.result("ch", "key") == "centrifugo.result.ch.key"
    assert k.client_channel("ch") == "centrifugo.client.ch"
    assert k.presence_data("ch") == "centrifugo.presence.data.ch"
    assert k.presence_expire("ch") == "centrifugo.presence.expire.ch"
    assert k.presence_user_expire("ch") == "centrifugo.presence.user.expire.ch"
    assert k.presence_user_clients("ch") == "centrifugo.presence.user.clients.ch"
    assert k.control == b"centrifugo.control"
    assert k.node_channel("n1") == b"centrifugo.node.n1"
    assert {k.partition(ch) for ch in CHANNELS} == {0}
    assert Keys("app", cluster=False).stream("ch") == "app.stream.ch"


def test_cluster_key_names_share_one_partition_tag():
    k = Keys("centrifugo", cluster=True)
    assert len(k.partition_tags) == CLUSTER_PARTITIONS
    seen = set()
    for ch in CHANNELS:
        p = k.partition(ch)
        assert 0 <= p < CLUSTER_PARTITIONS and k.partition(ch) == p
        seen.add(p)
        tag = "{" + k.partition_tags[p] + "}"
        assert k.stream(ch) == f"centrifugo.stream.{tag}.{ch}"
        assert k.meta(ch) == f"centrifugo.stream.meta.{tag}.{ch}"
        assert k.result(ch, "key") == f"centrifugo.result.{tag}.{ch}.key"
        assert k.client_channel(ch) == f"centrifugo.client.{tag}.{ch}"
        # One Lua call touches the stream, meta, result and SPUBLISH channel: one slot.
        names = [k.stream(ch), k.meta(ch), k.result(ch, "key"), k.client_channel(ch)]
        assert len({key_slot(n.encode()) for n in names}) == 1
        # Presence uses the channel itself as the tag.
        assert k.presence_data(ch) == "centrifugo.presence.data.{" + ch + "}"
        assert k.presence_expire(ch) == "centrifugo.presence.expire.{" + ch + "}"
        assert k.presence_user_expire(ch) == "centrifugo.presence.user.expire.{" + ch + "}"
        assert k.presence_user_clients(ch) == "centrifugo.presence.user.clients.{" + ch + "}"
    assert len(seen) > 1
    many = {k.partition(f"c{i}") for i in range(1000)}
    assert many == set(range(CLUSTER_PARTITIONS))


@pytest.mark.parametrize("cluster", [False, True])
@pytest.mark.parametrize("prefix", ["centrifugo", "my.app"])
def test_channel_from_pubsub_inverts_client_channel(cluster, prefix):
    k = Keys(prefix, cluster=cluster)
    for ch in CHANNELS:
        assert k.channel_from_pubsub(k.client_channel(ch).encode()) == ch
