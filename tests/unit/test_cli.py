"""The centrifugo CLI, run as `python -m app ...` in a scratch directory (never starts a server)."""

import json
import os
import re
import stat
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from jwt.warnings import InsecureKeyLengthWarning

from app.cli import _split_dotted_flags
from app.config import default_config_dict, load_config
from app.hosting.gunicorn import gunicorn_options
from app.hosting.startup import MEMORY_WORKERS_ERROR

SECRET = "cli-test-secret-long-enough-for-hs256-0123456789"


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # A clean environment: no CENTRIFUGO_* leaking in from the developer's shell.
    base = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    base.pop("WEB_CONCURRENCY", None)
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def parse(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".toml":
        return tomllib.loads(text)
    return yaml.safe_load(text)


def test_version(tmp_path: Path) -> None:
    proc = run(tmp_path, "version")
    assert proc.returncode == 0
    assert re.fullmatch(
        r"Centrifugo v6\.\d+\.\d+ \(centrifugo-py, Python 3\.\d+\.\d+\)\n", proc.stdout
    )


@pytest.mark.parametrize("name", ["config.json", "config.yaml", "config.yml", "config.toml"])
def test_genconfig_each_format_then_checkconfig(tmp_path: Path, name: str) -> None:
    proc = run(tmp_path, "genconfig", "-c", name)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = parse(path)
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    for value in (
        data["client"]["token"]["hmac_secret_key"],
        data["http_api"]["key"],
        data["admin"]["password"],
        data["admin"]["secret"],
    ):
        assert re.fullmatch(uuid_re, value)
    assert data["admin"]["enabled"] is False
    assert data["client"]["allowed_origins"] == []
    assert data["log"]["level"] == "info"

    check = run(tmp_path, "checkconfig", "-c", name)
    assert check.returncode == 0
    assert check.stdout == "" and check.stderr == ""

    again = run(tmp_path, "genconfig", "-c", name)
    assert_error(again, "already exists")


def test_genconfig_secrets_are_random(tmp_path: Path) -> None:
    assert run(tmp_path, "genconfig", "-c", "a.json").returncode == 0
    assert run(tmp_path, "genconfig", "-c", "b.json").returncode == 0
    a, b = parse(tmp_path / "a.json"), parse(tmp_path / "b.json")
    assert a["client"]["token"]["hmac_secret_key"] != b["client"]["token"]["hmac_secret_key"]


def test_genconfig_bad_extension(tmp_path: Path) -> None:
    assert_error(run(tmp_path, "genconfig", "-c", "config.ini"), "supported extensions")
    assert not (tmp_path / "config.ini").exists()


def test_checkconfig_invalid(tmp_path: Path) -> None:
    write_config(tmp_path, {"channel": {"namespaces": [{"name": "chat", "history_size": 3}]}})
    assert_error(run(tmp_path, "checkconfig", "-c", "config.json"), "history_ttl")
    write_config(tmp_path, {"client": {"ping_interval": "often"}})
    assert_error(run(tmp_path, "checkconfig"), "client.ping_interval")


def test_checkconfig_missing_file(tmp_path: Path) -> None:
    assert_error(run(tmp_path, "checkconfig", "-c", "nope.json"), "not found")


@pytest.mark.parametrize("name", ["out.json", "out.yaml", "out.toml"])
def test_defaultconfig_dry_run(tmp_path: Path, name: str) -> None:
    proc = run(tmp_path, "defaultconfig", "-c", name, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "printed" / name
    path.parent.mkdir()
    path.write_text(proc.stdout)
    assert parse(path) == default_config_dict()
    assert not (tmp_path / name).exists()


def test_defaultconfig_writes_once(tmp_path: Path) -> None:
    assert run(tmp_path, "defaultconfig", "-c", "full.yaml").returncode == 0
    data = parse(tmp_path / "full.yaml")
    assert data["client"]["ping_interval"] == "25s"
    assert load_config(str(tmp_path / "full.yaml"), env={}).http_server.port == 8000
    assert_error(run(tmp_path, "defaultconfig", "-c", "full.yaml"), "already exists")


def test_defaultconfig_with_base(tmp_path: Path) -> None:
    write_config(tmp_path, {"http_server": {"port": 9123}}, "base.json")
    proc = run(tmp_path, "defaultconfig", "-c", "x.json", "-d", "--base", "base.json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["http_server"]["port"] == 9123
    assert data["websocket"]["message_size_limit"] == 65536


def test_defaultenv(tmp_path: Path) -> None:
    proc = run(tmp_path, "defaultenv")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert "CENTRIFUGO_CLIENT_PING_INTERVAL=25s" in lines
    assert "CENTRIFUGO_HTTP_SERVER_PORT=8000" in lines
    assert 'CENTRIFUGO_ENGINE_TYPE="memory"' in lines
    assert all(line.startswith("CENTRIFUGO_") for line in lines)
    assert lines == sorted(lines)


def test_defaultenv_base_non_zero_only(tmp_path: Path) -> None:
    write_config(tmp_path, {"http_server": {"port": 9123}, "client": {"insecure": True}})
    proc = run(tmp_path, "defaultenv", "--base", "config.json", "--base-non-zero-only")
    assert proc.returncode == 0
    assert sorted(proc.stdout.splitlines()) == [
        "CENTRIFUGO_CLIENT_INSECURE=true",
        "CENTRIFUGO_HTTP_SERVER_PORT=9123",
    ]


# ---------------------------------------------------------------------------------- tokens


def token_config(tmp_path: Path, **client: Any) -> Path:
    data = {"client": {"token": {"hmac_secret_key": SECRET}, **client}}
    return write_config(tmp_path, data)


def test_gentoken_output(tmp_path: Path) -> None:
    token_config(tmp_path)
    before = int(time.time())
    proc = run(tmp_path, "gentoken", "-u", "42")
    assert proc.returncode == 0, proc.stderr
    header, token = proc.stdout.rstrip("\n").split("\n")
    assert header == 'HMAC SHA-256 JWT for user "42" with expiration TTL 168h0m0s:'
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 604800


def test_gentoken_quiet_ttl_and_explicit_config(tmp_path: Path) -> None:
    token_config(tmp_path)
    proc = run(tmp_path, "gentoken", "-c", "config.json", "-u", "bob", "-t", "60", "-q")
    assert proc.returncode == 0
    claims = jwt.decode(proc.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["exp"] - claims["iat"] == 60


def test_gentoken_without_expiration_anonymous(tmp_path: Path) -> None:
    token_config(tmp_path)
    proc = run(tmp_path, "gentoken", "-t", "-1")
    assert proc.returncode == 0
    header, token = proc.stdout.rstrip("\n").split("\n")
    assert header == "HMAC SHA-256 JWT for anonymous user without expiration:"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "" and "exp" not in claims


def test_gentoken_custom_user_claim(tmp_path: Path) -> None:
    write_config(
        tmp_path, {"client": {"token": {"hmac_secret_key": SECRET, "user_id_claim": "user_id"}}}
    )
    proc = run(tmp_path, "gentoken", "-u", "7", "-q")
    assert jwt.decode(proc.stdout, SECRET, algorithms=["HS256"])["user_id"] == "7"


def test_gentoken_key_from_env_without_config_file(tmp_path: Path) -> None:
    proc = run(
        tmp_path,
        "gentoken",
        "-u",
        "1",
        "-q",
        env={"CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY": "k"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # a short key is accepted without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        assert jwt.decode(proc.stdout, "k", algorithms=["HS256"])["sub"] == "1"


def test_gentoken_no_secret(tmp_path: Path) -> None:
    assert_error(run(tmp_path, "gentoken", "-u", "1"), "error: no HMAC secret key set")


def test_gensubtoken(tmp_path: Path) -> None:
    token_config(tmp_path)
    proc = run(tmp_path, "gensubtoken", "-u", "42", "-s", "chat:index")
    assert proc.returncode == 0, proc.stderr
    header, token = proc.stdout.rstrip("\n").split("\n")
    assert header == (
        'HMAC SHA-256 JWT for user "42" and channel "chat:index" with expiration TTL 168h0m0s:'
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42" and claims["channel"] == "chat:index"
    assert claims["exp"] - claims["iat"] == 604800


def test_gensubtoken_uses_subscription_token_key(tmp_path: Path) -> None:
    token_config(
        tmp_path,
        subscription_token={
            "enabled": True,
            "hmac_secret_key": "sub-secret-long-enough-for-hs256-0123456789",
        },
    )
    proc = run(tmp_path, "gensubtoken", "-u", "1", "-s", "news", "-q", "-t", "-1")
    assert proc.returncode == 0
    claims = jwt.decode(
        proc.stdout, "sub-secret-long-enough-for-hs256-0123456789", algorithms=["HS256"]
    )
    assert claims["channel"] == "news" and "exp" not in claims


def test_gensubtoken_requires_channel(tmp_path: Path) -> None:
    token_config(tmp_path)
    assert_error(run(tmp_path, "gensubtoken", "-u", "1"), "channel is required")


def test_checktoken_valid_and_invalid(tmp_path: Path) -> None:
    token_config(tmp_path)
    token = run(tmp_path, "gentoken", "-u", "42", "-q").stdout
    proc = run(tmp_path, "checktoken", token)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.rstrip("\n").split("\n")
    assert first.startswith('valid token for user "42" with expiration at ')
    assert json.loads(second.removeprefix("payload: "))["sub"] == "42"

    forged = jwt.encode(
        {"sub": "42"}, "other-secret-long-enough-for-hs256-0123456", algorithm="HS256"
    )
    assert_error(run(tmp_path, "checktoken", forged), "token error:")
    expired = jwt.encode({"sub": "42", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    assert_error(run(tmp_path, "checktoken", expired), "token error: token expired")
    assert_error(run(tmp_path, "checktoken"), "provide token to check")


def test_checksubtoken(tmp_path: Path) -> None:
    token_config(tmp_path)
    token = run(tmp_path, "gensubtoken", "-u", "42", "-s", "chat", "-q", "-t", "-1").stdout
    proc = run(tmp_path, "checksubtoken", token)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        'valid subscription token for user "42" and channel "chat" without expiration\n'
    )
    connect_token = run(tmp_path, "gentoken", "-u", "42", "-q").stdout
    assert_error(run(tmp_path, "checksubtoken", connect_token), "token error:")


def test_checktoken_bad_key_config(tmp_path: Path) -> None:
    write_config(tmp_path, {"client": {"token": {"rsa_public_key": "not a pem"}}})
    assert_error(run(tmp_path, "checktoken", "a.b.c"), "client.token.rsa_public_key")


# ---------------------------------------------------------------------------------- run errors


def test_run_explicit_missing_config(tmp_path: Path) -> None:
    assert_error(run(tmp_path, "-c", "missing.json"), "not found")


def test_run_memory_engine_with_workers(tmp_path: Path) -> None:
    proc = run(tmp_path, "--workers", "2")
    assert proc.returncode == 1
    assert proc.stderr == f"error: {MEMORY_WORKERS_ERROR}\n"
    proc = run(tmp_path, env={"WEB_CONCURRENCY": "3"})
    assert proc.stderr == f"error: {MEMORY_WORKERS_ERROR}\n"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--no-such-flag"], "unrecognized arguments"),
        (["--client.nope=1"], "unknown flag: --client.nope"),
        (["--log.level"], "flag needs an argument"),
        (["--http_server.port", "abc"], "http_server.port"),
        (["--engine.type=nats"], "engine.type"),
        (["--workers", "0"], "invalid number of workers"),
        (["version", "--client.insecure"], "unknown flag"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_run_usage_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_error(run(tmp_path, *args), fragment)


def test_help_exits_zero(tmp_path: Path) -> None:
    proc = run(tmp_path, "--help")
    assert proc.returncode == 0
    assert "genconfig" in proc.stdout and "--client.insecure" in proc.stdout


# ---------------------------------------------------------------------------------- in process


def test_split_dotted_flags() -> None:
    rest, flags = _split_dotted_flags(
        [
            "-c",
            "x.json",
            "--client.insecure",
            "--log.level",
            "debug",
            "--http_server.port=9000",
            "--health.enabled=false",
            "--workers",
            "2",
        ]
    )
    assert rest == ["-c", "x.json", "--workers", "2"]
    assert flags == {
        "client.insecure": True,
        "log.level": "debug",
        "http_server.port": "9000",
        "health.enabled": "false",
    }


def test_gunicorn_options() -> None:
    cfg = load_config(
        None,
        env={},
        flags={
            "http_server.port": 9000,
            "http_server.internal_port": 9001,
            "shutdown.timeout": "10s",
            "log.level": "warn",
            "engine.type": "redis",
        },
    )
    options = gunicorn_options(cfg, 4)
    assert options["bind"] == ["0.0.0.0:9000", "0.0.0.0:9001"]
    assert options["workers"] == 4
    assert options["worker_class"] == "aiohttp.GunicornWebWorker"
    assert options["graceful_timeout"] == 10
    assert options["accesslog"] is None
    assert options["errorlog"] == "-"
    assert options["loglevel"] == "warning"
    v6 = load_config(None, env={}, flags={"http_server.address": "::1", "http_server.port": 80})
    assert gunicorn_options(v6, 1)["bind"] == ["[::1]:80"]
