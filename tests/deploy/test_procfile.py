"""The Procfile's `web` process, started the way Heroku-style platforms start it: `bash -c`
in the app root with only environment variables (PORT, WEB_CONCURRENCY, CENTRIFUGO_*, and a
Redis add-on's REDIS_URL), stopped as a dyno is: SIGTERM to every process, SIGKILL 30 s later.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import TLSRedis, probe_context, require_tls, start_tls_redis
from tests.support.tls_certs import self_signed

from . import (
    REPO_ROOT,
    clean_env,
    free_port,
    http_get,
    start,
    stop,
    wait_healthy,
    wait_workers,
    ws_round_trip,
)

PROCFILE = REPO_ROOT / "Procfile"


def procfile_processes() -> dict[str, str]:
    """Process type -> command, parsed like the platforms do (`name: command` per line)."""
    processes = {}
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip())
        assert m, f"malformed Procfile line: {line!r}"
        processes[m.group(1)] = m.group(2)
    return processes


def test_procfile_declares_web_honouring_port() -> None:
    processes = procfile_processes()
    assert set(processes) == {"web"}
    assert "$PORT" in processes["web"] or "${PORT" in processes["web"]


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    """The app root as a platform checks it out, without any config.json a developer may have
    generated in the working tree: app/ and lua/ are links to the repository's."""
    root = tmp_path / "slug"
    root.mkdir()
    for name in ("app", "lua", "Procfile", "pyproject.toml", "requirements.txt", ".python-version"):
        (root / name).symlink_to(REPO_ROOT / name)
    return root


def run_web(app_root: Path, tmp_path: Path, env: dict[str, str]) -> str:
    """Start the web command with `env` only; check workers, /health, WebSocket and API, and
    that SIGTERM ends it within a dyno's 30 s grace. Returns the log."""
    port = free_port()
    hmac_key = "hmac-" + secrets.token_hex(16)
    api_key = "api-" + secrets.token_hex(16)
    full_env = clean_env(
        {
            "PORT": str(port),
            "CENTRIFUGO_HTTP_SERVER_ADDRESS": "127.0.0.1",
            "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": hmac_key,
            "CENTRIFUGO_HTTP_API_KEY": api_key,
            "CENTRIFUGO_HEALTH_ENABLED": "true",
            "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_ALLOW_SUBSCRIBE_FOR_CLIENT": "true",
            **env,
        }
    )
    log_path = tmp_path / "web.log"
    proc = start(["bash", "-c", procfile_processes()["web"]], full_env, app_root, log_path)
    base = f"http://127.0.0.1:{port}"
    stopping = None
    try:
        wait_healthy(proc, f"{base}/health", log_path)
        # The web command execs the server, so the platform's process is gunicorn's master.
        wait_workers(proc.pid, int(env["WEB_CONCURRENCY"]))
        status, body = http_get(f"{base}/health")
        assert (status, json.loads(body)) == (200, {})
        connect = asyncio.run(ws_round_trip(base, hmac_key, api_key))
        assert connect["connect"]["version"]
        stopping = time.monotonic()
    finally:
        code = stop(proc)
    log = log_path.read_text()
    assert code == 0, f"exit code {code} after SIGTERM:\n{log}"
    assert stopping is not None and time.monotonic() - stopping < 30, "slower than a dyno's grace"
    assert "Traceback" not in log, log
    assert not (app_root / "config.json").exists()
    return log


def test_web_memory_engine_one_worker(app_root: Path, tmp_path: Path) -> None:
    run_web(app_root, tmp_path, {"WEB_CONCURRENCY": "1"})


def test_web_redis_engine_two_workers(app_root: Path, tmp_path: Path, e2e_redis_url: str) -> None:
    run_web(
        app_root,
        tmp_path,
        {
            "WEB_CONCURRENCY": "2",
            "CENTRIFUGO_ENGINE_TYPE": "redis",
            "CENTRIFUGO_ENGINE_REDIS_ADDRESS": e2e_redis_url,
            "CENTRIFUGO_ENGINE_REDIS_PREFIX": "procfile-" + secrets.token_hex(4),
        },
    )


def test_web_refuses_memory_engine_with_two_workers(app_root: Path, tmp_path: Path) -> None:
    # A platform that sets WEB_CONCURRENCY from the dyno size must get a clear one-line error,
    # not a crash loop of workers with split state.
    log_path = tmp_path / "web.log"
    env = clean_env({"PORT": str(free_port()), "WEB_CONCURRENCY": "2"})
    proc = start(["bash", "-c", procfile_processes()["web"]], env, app_root, log_path)
    assert proc.wait(30) == 1
    log = log_path.read_text()
    assert "redis engine" in log and "Traceback" not in log, log


# --------------------------------------------------------------------------------------------
# Heroku Redis: REDIS_URL is rediss:// to a server with a self-signed certificate


@pytest.fixture
def heroku_redis(tmp_path: Path) -> Iterator[tuple[TLSRedis, str]]:
    """A TLS-only redis-server with a password and a self-signed certificate for a name that is
    not the address dialled (Heroku Redis's is issued for its EC2 host), and the add-on's URL."""
    require_tls()
    leaf = self_signed(tmp_path, "heroku-redis", hosts=("redis.internal.example",))
    server = start_tls_redis(tmp_path / "redis", "heroku", leaf, leaf.cert_path)
    password = secrets.token_hex(16)
    admin = server.client(ssl=True, ssl_cert_reqs="none")
    try:
        admin.config_set("requirepass", password)
        yield server, f"rediss://:{password}@127.0.0.1:{server.port}"
    finally:
        admin.close()
        server.stop()


def test_heroku_redis_certificate_is_not_trusted_by_default(
    heroku_redis: tuple[TLSRedis, str],
) -> None:
    # Control: verification with the system roots (what a rediss:// address gets without the
    # TLS block) refuses this server, so the Procfile test below really skips verification.
    server, _ = heroku_redis
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        probe_context(None).wrap_socket(raw, server_hostname="127.0.0.1").close()


@pytest.mark.timeout(120)
def test_web_on_heroku_redis_url_with_two_workers(
    app_root: Path, tmp_path: Path, heroku_redis: tuple[TLSRedis, str]
) -> None:
    server, url = heroku_redis
    log = run_web(
        app_root,
        tmp_path,
        {
            "WEB_CONCURRENCY": "2",
            # As the platform sets it; the operator opts into the Redis engine and accepts the
            # self-signed certificate with Centrifugo's TLS keys, never copying the URL.
            "REDIS_URL": url,
            "CENTRIFUGO_ENGINE_TYPE": "redis",
            "CENTRIFUGO_ENGINE_REDIS_TLS_ENABLED": "true",
            "CENTRIFUGO_ENGINE_REDIS_TLS_INSECURE_SKIP_VERIFY": "true",
        },
    )
    # Said once, by the master, at start; the credentials never reach the log.
    line = "engine.redis.address not configured: using REDIS_URL (set by the platform)"
    assert log.count(line) == 1, log
    password = url.split("@")[0].rsplit(":", 1)[1]
    assert password not in log
    # The channel went through this server: a node subscribed to it and the publication was
    # published there (with the memory engine neither command would have been sent).
    with redis.Redis(
        host="127.0.0.1", port=server.port, password=password, ssl=True, ssl_cert_reqs="none"
    ) as check:
        commands = check.info("commandstats")
    assert commands.get("cmdstat_ssubscribe", {}).get("calls", 0) >= 1, commands
    assert commands.get("cmdstat_spublish", {}).get("calls", 0) >= 1, commands
