"""HTTPS and WSS on the server's own listeners: `http_server.tls`, `internal_tls`, `tls_external`.

Certificates are made at test time (tests/support/tls_certs.py); the server is `python -m app` under
gunicorn; clients are real TLS clients: Python's ssl module, aiohttp, and centrifuge-js over
`wss://` trusting the test CA through NODE_EXTRA_CA_CERTS.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.config import ConfigError, TLSConfig
from app.tls import server_context
from tests.support.tls_certs import CA, make_ca, self_signed

from .helpers import REPO_ROOT, deep_merge, free_port, node_available, run_js, start_server
from .redis_e2e_helpers import RedisProcess, redis_config, worker_of


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return make_ca(tmp_path_factory.mktemp("tls"))


def _https(
    url: str, ctx: ssl.SSLContext, body: dict[str, Any] | None = None, key: str = ""
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "X-API-Key": key} if key else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ready_over(ctx: ssl.SSLContext | None, port_of: Any = None) -> Any:
    def ready(handle: Any) -> bool:
        port = port_of(handle) if port_of else handle.port
        scheme = "https" if ctx is not None else "http"
        try:
            status, _ = _https(
                f"{scheme}://127.0.0.1:{port}/health", ctx or ssl.create_default_context()
            )
        except (urllib.error.URLError, OSError):
            return False
        return status == 200

    return ready


@pytest.fixture(scope="module")
def tls_server(ca: CA) -> Iterator[Any]:
    leaf = ca.issue("server")
    handle = start_server(
        {
            # File paths for the certificate, raw PEM text for the key: both forms work.
            "http_server": {
                "tls": {
                    "enabled": True,
                    "cert_pem": str(leaf.cert_path),
                    "key_pem": leaf.key_pem.decode(),
                }
            },
            "channel": {
                "without_namespace": {
                    "allow_subscribe_for_client": True,
                    "allow_publish_for_subscriber": True,
                }
            },
            "client": {"allowed_origins": ["*"]},
        },
        ready=_ready_over(ca.client_context()),
    )
    yield handle
    handle.stop()


def test_api_over_https_verified_by_the_ca(tls_server: Any, ca: CA) -> None:
    url = f"https://127.0.0.1:{tls_server.port}/api/info"
    status, body = _https(url, ca.client_context(), {}, key=tls_server.api_key)
    assert status == 200, body
    assert "nodes" in json.loads(body)["result"]


def test_plain_http_is_not_served_on_a_tls_port(tls_server: Any) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        with urllib.request.urlopen(f"http://127.0.0.1:{tls_server.port}/health", timeout=5) as r:
            r.read()


def test_untrusted_client_refuses_the_certificate(tls_server: Any) -> None:
    with pytest.raises(urllib.error.URLError) as info:
        _https(f"https://127.0.0.1:{tls_server.port}/health", ssl.create_default_context())
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


@pytest.mark.skipif(node_available() is not None, reason=str(node_available()))
def test_centrifuge_js_over_wss(tls_server: Any, ca: CA) -> None:
    env = tls_server.js_env(
        CF_WS_URL=f"wss://127.0.0.1:{tls_server.port}/connection/websocket",
        CF_HTTP_URL=f"https://127.0.0.1:{tls_server.port}",
        NODE_EXTRA_CA_CERTS=str(ca.cert_path),
    )
    result = run_js(
        """
        const c = newClient({ token: token('alice') });
        const sub = c.newSubscription('tls');
        const got = collect(sub, 'publication');
        c.connect();
        sub.subscribe();
        await waitEvent(sub, 'subscribed');
        await api('publish', { channel: 'tls', data: { from: 'api' } });
        await sub.publish({ from: 'client' });
        await waitUntil(sub, ['publication'], () => got.length === 2, 5000, 'two publications');
        return { data: got.map((p) => p.data) };
        """,
        env,
    )
    assert result["data"] == [{"from": "api"}, {"from": "client"}]


def test_client_certificates_required_with_client_ca(ca: CA) -> None:
    leaf = ca.issue("server-mtls")
    client_leaf = ca.issue("client", hosts=(), client=True)
    other_ca = make_ca(ca.directory, "other-ca")
    stranger = other_ca.issue("stranger", hosts=(), client=True)
    handle = start_server(
        {
            "http_server": {
                "tls": {
                    "enabled": True,
                    "cert_pem": str(leaf.cert_path),
                    "key_pem": str(leaf.key_path),
                    "client_ca_pem": base64.b64encode(ca.cert_pem).decode(),  # base64 form
                }
            }
        },
        ready=_ready_over(ca.client_context(client_leaf)),
    )
    try:
        url = f"https://127.0.0.1:{handle.port}/health"
        assert _https(url, ca.client_context(client_leaf))[0] == 200
        for ctx in (ca.client_context(), ca.client_context(stranger)):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _https(url, ctx)
    finally:
        handle.stop()


def test_internal_port_tls_rules(ca: CA) -> None:
    """internal_tls serves its own certificate on the internal port; tls_external leaves the
    internal port plain; with neither, the internal port serves http_server.tls."""
    main_leaf = ca.issue("main")
    internal_ca = make_ca(ca.directory, "internal-ca")
    internal_leaf = internal_ca.issue("internal")
    main_tls = {
        "enabled": True,
        "cert_pem": str(main_leaf.cert_path),
        "key_pem": str(main_leaf.key_path),
    }
    cases = [
        (
            {
                "internal_tls": {
                    "enabled": True,
                    "cert_pem": str(internal_leaf.cert_path),
                    "key_pem": str(internal_leaf.key_path),
                }
            },
            internal_ca.client_context(),
        ),
        ({"tls_external": True}, None),
        ({}, ca.client_context()),
    ]
    for extra, internal_ctx in cases:
        internal_port = free_port()
        handle = start_server(
            {"http_server": {"tls": main_tls, "internal_port": internal_port, **extra}},
            ready=_ready_over(internal_ctx, lambda h, p=internal_port: p),
        )
        try:
            # Health is an internal endpoint: answered on the internal port only.
            scheme = "https" if internal_ctx is not None else "http"
            status, _ = _https(
                f"{scheme}://127.0.0.1:{internal_port}/health",
                internal_ctx or ssl.create_default_context(),
            )
            assert status == 200, extra
            # The main port keeps its own certificate whatever the internal port does.
            status, _ = _https(
                f"https://127.0.0.1:{handle.port}/connection/websocket", ca.client_context()
            )
            assert status in (400, 405), extra  # a plain GET, no upgrade: answered over TLS
        finally:
            handle.stop()


def _start_fails(tmp_path: Path, tls: dict[str, Any]) -> str:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"http_server": {"address": "127.0.0.1", "tls": tls}}))
    done = subprocess.run(
        [sys.executable, "-m", "app", "-c", str(config), "--http_server.port", str(free_port())],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_bad_certificates_refuse_to_start(tmp_path: Path, ca: CA) -> None:
    leaf = ca.issue("bad-start")
    other = ca.issue("other")
    missing = str(tmp_path / "missing.crt")
    line = _start_fails(
        tmp_path, {"enabled": True, "cert_pem": missing, "key_pem": str(leaf.key_path)}
    )
    assert "http_server.tls.cert_pem" in line
    line = _start_fails(
        tmp_path, {"enabled": True, "cert_pem": str(leaf.cert_path), "key_pem": str(other.key_path)}
    )
    assert "http_server.tls" in line and "key" in line
    line = _start_fails(tmp_path, {"enabled": True})
    assert "http_server.tls: cert_pem and key_pem are required" in line


def test_server_context_accepts_every_pem_form(tmp_path: Path) -> None:
    leaf = self_signed(tmp_path, "forms")
    forms = [
        (str(leaf.cert_path), str(leaf.key_path)),
        (leaf.cert_pem.decode(), leaf.key_pem.decode()),
        (base64.b64encode(leaf.cert_pem).decode(), base64.b64encode(leaf.key_pem).decode()),
    ]
    for cert, key in forms:
        ctx = server_context(TLSConfig(enabled=True, cert_pem=cert, key_pem=key), "http_server.tls")
        assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(TLSConfig(), "http_server.tls") is None
    with pytest.raises(ConfigError, match="http_server.tls.key_pem"):
        server_context(
            TLSConfig(enabled=True, cert_pem=str(leaf.cert_path), key_pem="nope"), "http_server.tls"
        )


async def test_every_worker_serves_wss(ca: CA, redis_server: RedisProcess) -> None:
    """Two gunicorn workers (one SO_REUSEPORT listener each): both answer over TLS."""
    leaf = ca.issue("two-workers")
    config = deep_merge(
        redis_config(redis_server.port),
        {
            "http_server": {
                "tls": {
                    "enabled": True,
                    "cert_pem": str(leaf.cert_path),
                    "key_pem": str(leaf.key_path),
                }
            }
        },
    )
    handle = start_server(config, workers=2, ready=_ready_over(ca.client_context()))
    try:
        ctx = ca.client_context()
        workers: set[int | None] = set()
        async with aiohttp.ClientSession() as session:
            sockets = []
            for _ in range(40):
                ws = await session.ws_connect(
                    f"wss://127.0.0.1:{handle.port}/connection/websocket", ssl=ctx
                )
                await ws.send_str(json.dumps({"id": 1, "connect": {"token": handle.token("u")}}))
                reply = json.loads((await ws.receive(timeout=5)).data)
                assert "connect" in reply, reply
                sockets.append(ws)
            for ws in sockets:
                local = ws.get_extra_info("sockname")[1]
                workers.add(worker_of(handle, local))
            for ws in sockets:
                await ws.close()
        assert None not in workers and len(workers) == 2, workers
    finally:
        handle.stop()


def test_checkconfig_checks_certificates(tmp_path: Path) -> None:
    """checkconfig passes only a config that can start: the certificate files are read."""
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "http_server": {
                    "tls": {
                        "enabled": True,
                        "cert_pem": str(tmp_path / "x.crt"),
                        "key_pem": str(tmp_path / "x.key"),
                    }
                }
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "app", "checkconfig", "-c", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: http_server.tls.cert_pem:"), done.stderr
