"""The Procfile's `web` process, started the way Heroku-style platforms start it: `bash -c`
in the app root with only environment variables (PORT, WEB_CONCURRENCY, CENTRIFUGO_*)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path

import pytest

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
    for name in ("app", "lua", "Procfile", "pyproject.toml"):
        (root / name).symlink_to(REPO_ROOT / name)
    return root


def run_web(app_root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """Start the web command with `env` only; check workers, /health, WebSocket and API."""
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
    try:
        wait_healthy(proc, f"{base}/health", log_path)
        # The web command execs the server, so the platform's process is gunicorn's master.
        wait_workers(proc.pid, int(env["WEB_CONCURRENCY"]))
        status, body = http_get(f"{base}/health")
        assert (status, json.loads(body)) == (200, {})
        connect = asyncio.run(ws_round_trip(base, hmac_key, api_key))
        assert connect["connect"]["version"]
    finally:
        code = stop(proc)
    log = log_path.read_text()
    assert code == 0, f"exit code {code} after SIGTERM:\n{log}"
    assert "Traceback" not in log, log
    assert not (app_root / "config.json").exists()


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
