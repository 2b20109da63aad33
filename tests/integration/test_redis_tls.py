"""Redis TLS like Centrifugo (app/engines/redis/tls.py): real redis-servers that speak only
TLS (`--port 0 --tls-port N`) with certificates made here by a test CA.

The servers have no plain port, so an engine that works against them proves that every path
it opens dialled TLS: redis-py's first contact and control publish, the implicit pipeline
(publish, history, presence scripts), the PUB/SUB readers (subscribe, control). A certificate
issued only for `redis.internal` proves the same for `server_name` (any path that checked the
dialled 127.0.0.1 instead would fail).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import load_config
from app.engines.redis import RedisBroker, RedisPresenceManager, create_redis_engine
from app.engines.redis.address import RedisConfigError, specs_from_config
from app.engines.redis.shard import Shard
from app.models import ClientInfo, HistoryFilter, PublishOptions
from tests.support.engine import EngineEvents
from tests.support.ports import free_port
from tests.support.redis_server import TLSRedis, require_tls, start_tls_redis
from tests.support.tls_certs import CA, Leaf, make_ca, self_signed

VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


@dataclass(frozen=True)
class Pki:
    ca: CA
    server: Leaf  # for 127.0.0.1 and localhost, signed by ca
    client: Leaf  # client certificate signed by ca
    named: Leaf  # for redis.internal only, signed by ca
    self_signed: Leaf  # for 127.0.0.1, signed by itself
    other_ca: CA  # trusts none of the servers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d)
    return Pki(
        ca=ca,
        server=ca.issue("server"),
        client=ca.issue("client", hosts=(), client=True),
        named=ca.issue("named", hosts=("redis.internal",)),
        self_signed=self_signed(d, "selfsigned"),
        other_ca=make_ca(tmp_path_factory.mktemp("other-pki"), "other-ca"),
    )


def _server(
    tmp_path_factory: pytest.TempPathFactory, name: str, leaf: Leaf, pki: Pki, **kw: Any
) -> Iterator[TLSRedis]:
    require_tls()
    rp = start_tls_redis(tmp_path_factory.mktemp(name), name, leaf, pki.ca.cert_path, **kw)
    yield rp
    rp.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, pki) -> Iterator[TLSRedis]:
    yield from _server(tmp_path_factory, "tls", pki.server, pki)


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory, pki) -> Iterator[TLSRedis]:
    yield from _server(
        tmp_path_factory, "mtls", pki.server, pki, auth_clients=True, probe_client=pki.client
    )


@pytest.fixture(scope="module")
def self_signed_redis(tmp_path_factory, pki) -> Iterator[TLSRedis]:
    yield from _server(tmp_path_factory, "selfsigned", pki.self_signed, pki)


@pytest.fixture(scope="module")
def named_redis(tmp_path_factory, pki) -> Iterator[TLSRedis]:
    yield from _server(tmp_path_factory, "named", pki.named, pki)


def redis_config(address: str | list[str] | None = None, **opts: Any) -> Any:
    """An engine.redis section; `opts` are its keys with dots ("tls.enabled")."""
    flags: dict[str, Any] = {"engine.type": "redis", "engine.redis.prefix": uuid.uuid4().hex}
    if address is not None:
        flags["engine.redis.address"] = address
    flags.update({f"engine.redis.{k}": v for k, v in opts.items()})
    return load_config(None, env={}, flags=flags).engine.redis


def ca_tls(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"tls.enabled": True, "tls.server_ca_pem": str(pki.ca.cert_path), **more}


@pytest.fixture
async def engine_of() -> Any:
    """`await engine_of(rcfg)` -> running (broker, presence, recorder); closed after the test."""
    made: list[RedisBroker] = []

    async def make(rcfg: Any) -> tuple[RedisBroker, RedisPresenceManager, EngineEvents]:
        broker, presence = create_redis_engine(rcfg, "engine.redis")
        made.append(broker)
        rec = EngineEvents("node-1")
        await broker.run_control(rec)
        await broker.run(rec)
        return broker, presence, rec

    yield make
    for broker in made:
        await broker.close()


async def exercise(engine_of: Any, rcfg: Any) -> None:
    """Publish/subscribe, history, presence and a control message through the engine."""
    broker, presence, rec = await engine_of(rcfg)
    assert broker.healthy
    await broker.subscribe(["news"])
    opts = PublishOptions(history_size=10, history_ttl=60)
    for i in range(3):
        await broker.publish("news", b'{"n":%d}' % i, opts)
    pubs = await rec.wait_pubs("news", 3)
    assert [(p.data, p.offset) for p in pubs] == [(b'{"n":%d}' % i, i + 1) for i in range(3)]
    hist = await broker.history("news", HistoryFilter(limit=-1))
    assert [p.data for p in hist.publications] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    info = ClientInfo("u1", "c1")
    await presence.add_presence("news", "c1", info)
    assert await presence.presence("news") == {"c1": info}
    # redis-py's client (PUBLISH) to the control PUB/SUB link.
    await broker.publish_control(b"ctl")
    await rec.wait_for(lambda: b"ctl" in rec.controls)


async def first_contact_error(rcfg: Any) -> str:
    """The error of a shard's first contact (redis-py), which must fail."""
    shard = Shard(specs_from_config(rcfg)[0], rcfg, 0)
    try:
        with pytest.raises(RedisConnectionError) as ei:
            await shard.connect()
    finally:
        await shard.close()
    return str(ei.value)


# --- CA-verified TLS ---


async def test_ca_verified_tls_carries_every_engine_path(engine_of, tls_redis, pki):
    await exercise(engine_of, redis_config(tls_redis.address(), **ca_tls(pki)))


async def test_plain_connection_to_a_tls_only_redis_fails(tls_redis):
    # The control experiment of the test above: without `tls` the same address is unusable.
    await first_contact_error(redis_config(tls_redis.address()))


async def test_certificate_of_an_untrusted_ca_is_rejected(tls_redis, pki):
    rcfg = redis_config(
        tls_redis.address(),
        **{"tls.enabled": True, "tls.server_ca_pem": str(pki.other_ca.cert_path)},
    )
    assert VERIFY_FAILED in await first_contact_error(rcfg)


async def test_rediss_address_turns_tls_on(engine_of, tls_redis, pki):
    # rediss:// with the tls block: the block's CA is used.
    await exercise(engine_of, redis_config(tls_redis.address("rediss"), **ca_tls(pki)))


async def test_rediss_address_alone_verifies_with_system_roots(tls_redis):
    # As Centrifugo: rediss:// without tls.enabled is TLS with the system's roots, which do
    # not hold the test CA: the handshake is tried and the certificate refused.
    assert VERIFY_FAILED in await first_contact_error(redis_config(tls_redis.address("rediss")))


async def test_tls_enabled_query_option_turns_tls_on(tls_redis):
    rcfg = redis_config(tls_redis.address() + "?tls_enabled=true")
    assert VERIFY_FAILED in await first_contact_error(rcfg)


# --- mTLS and PEM forms ---


def pem_form(form: str, path: Path, pem: bytes) -> str:
    if form == "path":
        return str(path)
    if form == "raw":
        return pem.decode()
    return base64.b64encode(pem).decode()


@pytest.mark.parametrize("form", ["path", "raw", "base64"])
async def test_mtls_with_client_certificate_in_each_pem_form(engine_of, mtls_redis, pki, form):
    opts = {
        "tls.enabled": True,
        "tls.server_ca_pem": pem_form(form, pki.ca.cert_path, pki.ca.cert_pem),
        "tls.cert_pem": pem_form(form, pki.client.cert_path, pki.client.cert_pem),
        "tls.key_pem": pem_form(form, pki.client.key_path, pki.client.key_pem),
    }
    await exercise(engine_of, redis_config(mtls_redis.address(), **opts))


async def test_mtls_refused_without_client_certificate(mtls_redis, pki):
    await first_contact_error(redis_config(mtls_redis.address(), **ca_tls(pki)))


async def test_engine_unhealthy_on_mtls_redis_without_client_certificate(
    engine_of, mtls_redis, pki
):
    broker, _, _ = await engine_of(redis_config(mtls_redis.address(), **ca_tls(pki)))
    assert not broker.healthy


# --- self-signed server (Heroku-style rediss://) ---


async def test_self_signed_server_rejected_without_insecure_skip_verify(self_signed_redis):
    rcfg = redis_config(self_signed_redis.address("rediss"), **{"tls.enabled": True})
    assert VERIFY_FAILED in await first_contact_error(rcfg)


async def test_self_signed_server_accepted_with_insecure_skip_verify(engine_of, self_signed_redis):
    rcfg = redis_config(
        self_signed_redis.address("rediss"),
        **{"tls.enabled": True, "tls.insecure_skip_verify": True},
    )
    await exercise(engine_of, rcfg)


# --- server_name ---


async def test_server_name_is_verified_on_every_path(engine_of, named_redis, pki):
    rcfg = redis_config(
        named_redis.address(), **ca_tls(pki, **{"tls.server_name": "redis.internal"})
    )
    await exercise(engine_of, rcfg)


async def test_server_name_mismatch_rejected(named_redis, pki):
    rcfg = redis_config(
        named_redis.address(), **ca_tls(pki, **{"tls.server_name": "other.internal"})
    )
    error = await first_contact_error(rcfg)
    assert VERIFY_FAILED in error and "other.internal" in error


async def test_dialled_address_is_verified_without_server_name(named_redis, pki):
    # The certificate names redis.internal, not the 127.0.0.1 dialled.
    error = await first_contact_error(redis_config(named_redis.address(), **ca_tls(pki)))
    assert VERIFY_FAILED in error and "127.0.0.1" in error


# --- Cluster: one TLS node that holds every slot ---


@pytest.fixture(scope="module")
def tls_cluster_node(tmp_path_factory, pki) -> Iterator[TLSRedis]:
    require_tls()
    d = tmp_path_factory.mktemp("cluster")
    bus = free_port()
    rp = start_tls_redis(
        d,
        "cluster",
        pki.server,
        pki.ca.cert_path,
        extra=[
            "--cluster-enabled",
            "yes",
            "--tls-cluster",
            "yes",
            "--cluster-port",
            str(bus),
            "--cluster-config-file",
            str(d / "nodes-{port}.conf"),
        ],  # fmt: skip
    )
    client = redis.Redis(
        host="127.0.0.1", port=rp.port, ssl=True, ssl_ca_certs=str(pki.ca.cert_path)
    )
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        for _ in range(500):
            if client.cluster("info")["cluster_state"] == "ok":
                break
            time.sleep(0.02)  # cluster state has no notification
        else:
            raise RuntimeError("single-node TLS cluster never became ok")
    finally:
        client.close()
    yield rp
    rp.stop()


async def test_cluster_over_tls(engine_of, tls_cluster_node, pki):
    rcfg = redis_config(
        **{"cluster_address": [f"127.0.0.1:{tls_cluster_node.port}"]}, **ca_tls(pki)
    )
    await exercise(engine_of, rcfg)


# --- Sentinel: TLS to the Sentinel (sentinel_tls) and to the master it names (tls) ---


@pytest.fixture(scope="module")
def tls_sentinel(tmp_path_factory, pki) -> Iterator[TLSRedis]:
    """A TLS-only master and a TLS-only sentinel monitoring it (over TLS) as `mymaster`."""
    require_tls()
    d = tmp_path_factory.mktemp("sentinel")
    master = start_tls_redis(d, "master", pki.server, pki.ca.cert_path)
    try:
        sentinel = start_tls_redis(
            d,
            "sentinel",
            pki.server,
            pki.ca.cert_path,
            sentinel=True,
            extra=[
                "tls-replication yes",  # the sentinel speaks TLS to the master
                f"sentinel monitor mymaster 127.0.0.1 {master.port} 1",
            ],
        )
    except BaseException:
        master.stop()
        raise
    yield sentinel
    sentinel.stop()
    master.stop()


def sentinel_config(sentinel: TLSRedis, **opts: Any) -> Any:
    return redis_config(
        sentinel_address=[f"127.0.0.1:{sentinel.port}"], sentinel_master_name="mymaster", **opts
    )


def sentinel_ca_tls(pki: Pki) -> dict[str, Any]:
    ca = str(pki.ca.cert_path)
    return {"sentinel_tls.enabled": True, "sentinel_tls.server_ca_pem": ca}


async def test_sentinel_over_tls(engine_of, tls_sentinel, pki):
    await exercise(engine_of, sentinel_config(tls_sentinel, **ca_tls(pki), **sentinel_ca_tls(pki)))


async def test_sentinel_address_form_over_tls(engine_of, tls_sentinel, pki):
    address = f"redis+sentinel://127.0.0.1:{tls_sentinel.port}?sentinel_master_name=mymaster"
    await exercise(engine_of, redis_config(address, **ca_tls(pki), **sentinel_ca_tls(pki)))


async def test_sentinel_without_sentinel_tls_fails(tls_sentinel, pki):
    # `tls` is for the master only: the Sentinel itself is dialled plain and does not answer.
    await first_contact_error(sentinel_config(tls_sentinel, **ca_tls(pki)))


async def test_rediss_sentinel_address_verifies_sentinel_with_system_roots(tls_sentinel):
    address = f"rediss+sentinel://127.0.0.1:{tls_sentinel.port}?sentinel_master_name=mymaster"
    assert VERIFY_FAILED in await first_contact_error(redis_config(address))


# --- settings that cannot be used refuse start-up with the key named ---


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"tls.server_ca_pem": "/no/such/ca.pem"}, "engine.redis.tls.server_ca_pem: "),
        ({"tls.server_ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
         "engine.redis.tls.server_ca_pem: invalid certificate"),
        ({"tls.cert_pem": "/no/such/cert.pem", "tls.key_pem": "/no/such/key.pem"},
         "engine.redis.tls.cert_pem: "),
        ({"tls.cert_pem": "CLIENT_CERT"}, "engine.redis.tls.key_pem: required with engine.redis.tls.cert_pem"),
        ({"tls.key_pem": "CLIENT_KEY"}, "engine.redis.tls.cert_pem: required with engine.redis.tls.key_pem"),
        ({"tls.cert_pem": "CLIENT_CERT", "tls.key_pem": "SERVER_KEY"},
         "engine.redis.tls.key_pem: not a private key matching engine.redis.tls.cert_pem"),
        ({"tls.cert_pem": "BROKEN_CERT", "tls.key_pem": "CLIENT_KEY"},
         "engine.redis.tls.cert_pem: invalid certificate"),
    ],
)  # fmt: skip
def test_unusable_tls_setting_names_its_key(pki, opts, message):
    stand_in = {
        "CLIENT_CERT": str(pki.client.cert_path),
        "CLIENT_KEY": str(pki.client.key_path),
        "SERVER_KEY": str(pki.server.key_path),
        "BROKEN_CERT": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    }
    opts = {k: stand_in.get(v, v) for k, v in opts.items()}
    rcfg = redis_config("redis://127.0.0.1:6379", **{"tls.enabled": True, **opts})
    with pytest.raises(RedisConfigError) as ei:
        specs_from_config(rcfg, "engine.redis")
    assert str(ei.value).startswith(message), str(ei.value)
    assert "\n" not in str(ei.value)


def test_sentinel_tls_setting_names_its_key():
    rcfg = redis_config(
        sentinel_address=["127.0.0.1:26379"],
        sentinel_master_name="m",
        **{"sentinel_tls.enabled": True, "sentinel_tls.server_ca_pem": "/no/such/ca.pem"},
    )
    with pytest.raises(RedisConfigError, match=r"^broker\.redis\.sentinel_tls\.server_ca_pem: "):
        specs_from_config(rcfg, "broker.redis")


def test_tls_block_without_enabled_is_not_read():
    # Centrifugo reads the block only when `enabled`: its settings are not even loaded.
    rcfg = redis_config("redis://127.0.0.1:6379", **{"tls.server_ca_pem": "/no/such/ca.pem"})
    (spec,) = specs_from_config(rcfg, "engine.redis")
    assert spec.tls is None


def test_invalid_tls_enabled_query_option_refused():
    rcfg = redis_config("redis://127.0.0.1:6379?tls_enabled=maybe")
    with pytest.raises(RedisConfigError, match="invalid tls_enabled value: 'maybe'"):
        specs_from_config(rcfg, "engine.redis")
