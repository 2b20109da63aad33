"""The real server (`python -m app`, 2 workers) on a Redis that speaks only TLS.

A publication from a client on one connection reaches a subscriber through Redis (the workers
share nothing else), with history kept there; and a TLS setting that cannot be used stops
`python -m app` before any worker starts, with one line naming the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import TLSRedis, require_tls, start_tls_redis
from tests.support.tls_certs import CA, make_ca

from .helpers import REPO_ROOT, ServerHandle, prepare_config, start_server
from .redis_e2e_helpers import ApiClient, SdkSubscriber

WORKERS = 2


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[TLSRedis]:
    require_tls()
    client = ca.issue("client", hosts=(), client=True)
    rp = start_tls_redis(
        tmp_path_factory.mktemp("redis"),
        "redis",
        ca.issue("server"),
        ca.cert_path,
        auth_clients=True,
        probe_client=client,
    )
    yield rp
    rp.stop()


def tls_config(address: str, tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "engine": {
            "type": "redis",
            "redis": {"address": address, "prefix": f"t{uuid.uuid4().hex[:10]}", "tls": tls},
        },
        "channel": {
            "namespaces": [
                {
                    "name": "rec",
                    "history_size": 10,
                    "history_ttl": "300s",
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_client": True,
                    "allow_history_for_client": True,
                }
            ]
        },
    }


@pytest.fixture(scope="module")
def srv(mtls_redis: TLSRedis, ca: CA) -> Iterator[ServerHandle]:
    client = ca.issue("server-client", hosts=(), client=True)
    tls = {
        "enabled": True,
        "server_ca_pem": ca.cert_pem.decode(),
        "cert_pem": str(client.cert_path),
        "key_pem": str(client.key_path),
    }
    handle = start_server(tls_config(mtls_redis.address("rediss"), tls), workers=WORKERS)
    yield handle
    handle.stop()


@pytest.fixture
async def api(srv: ServerHandle) -> AsyncIterator[ApiClient]:
    client = ApiClient(srv)
    yield client
    await client.close()


async def test_client_publish_reaches_subscriber_through_tls_redis(srv: ServerHandle, api):
    # Every worker reached Redis over TLS: each announces its node through Redis PUB/SUB.
    await api.wait_nodes(WORKERS)
    channel = f"rec:{uuid.uuid4().hex[:8]}"
    subscriber = SdkSubscriber(srv.ws_url, srv.token("reader"), channel, "reader")
    publisher = SdkSubscriber(srv.ws_url, srv.token("writer"), "rec:other", "writer")
    try:
        await subscriber.start()
        await publisher.start()
        await publisher.client.publish(channel, {"over": "tls"})
        await subscriber.wait_for(lambda: bool(subscriber.pubs), what="the publication")
        assert subscriber.pubs == [(1, {"over": "tls"})]
        history = await api.result("history", {"channel": channel, "limit": 10})
        assert [p["data"] for p in history["publications"]] == [{"over": "tls"}]
    finally:
        await subscriber.stop()
        await publisher.stop()


def test_unusable_client_key_stops_start_up_with_one_line(tmp_path: Path, ca: CA) -> None:
    cert = ca.issue("lonely", hosts=(), client=True)
    tls = {"enabled": True, "cert_pem": str(cert.cert_path), "key_pem": str(tmp_path / "nope")}
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(prepare_config(tls_config("rediss://127.0.0.1:1", tls))))
    done = subprocess.run(
        [sys.executable, "-m", "app", "-c", str(config_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: engine.redis.tls.key_pem: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
