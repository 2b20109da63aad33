"""Every module of app/ imports alone, in an interpreter that has imported no other app module.

An import cycle hides while the modules in it are always imported in the same order (app.web
first, say); the day one of them becomes an entry point (a test, a tool, gunicorn importing the
worker class) it fails with "cannot import name ... (most likely due to a circular import)".
aiohttp's tests/test_circular_imports.py checks the same way: each module in a fresh process.

Speed: one `python -c` (a fresh interpreter, nothing of pytest's in it) imports the third-party
packages app/ imports (read from the sources with ast) and then forks one child per app module,
two at a time; each child starts with no app module loaded, as a fresh interpreter would, and
pays only for app's own code (~5 s for ~110 modules instead of ~30 s of interpreter start-ups).

Modules are found on disk at collection time, so moved and new modules are covered; generated
protobuf code (`gen/` packages) and `__main__` (running it starts the server) are left out.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = REPO_ROOT / "app"
PARALLEL = 2  # the CI machine's cores

# Runs in the fresh interpreter: argv[1] is JSON {"modules": [...], "preload": [...]}; prints
# JSON {module: traceback} for the modules that failed to import.
_CHILD = r"""
import importlib, json, os, sys, tempfile, traceback

job = json.loads(sys.argv[1])
for name in job["preload"]:
    try:
        importlib.import_module(name)
    except BaseException:
        pass  # only a speed-up; the child meets the same error and reports it
assert not [m for m in sys.modules if m == "app" or m.startswith("app.")], "app preloaded"

failed = {}
running = {}
tmp = tempfile.mkdtemp(prefix="cfpy-imports-")


def start(module):
    out = os.path.join(tmp, module)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            importlib.import_module(module)
        except BaseException:
            with open(out, "w") as f:
                f.write(traceback.format_exc())
            code = 1
        os._exit(code)
    running[pid] = (module, out)


def reap():
    pid, status = os.wait()
    module, out = running.pop(pid)
    if status != 0:
        try:
            with open(out) as f:
                failed[module] = f.read()
        except FileNotFoundError:
            failed[module] = f"the importing process ended with wait status {status}"


for module in job["modules"]:
    while len(running) >= job["parallel"]:
        reap()
    start(module)
while running:
    reap()
print(json.dumps(failed))
"""


def app_modules() -> list[str]:
    """Dotted names of every module and package under app/, found on disk."""
    out = []
    for path in sorted(APP.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if "gen" in parts or parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # A folder that is no package name (a copy being edited, "config.new") is no module.
        if all(p.isidentifier() for p in parts):
            out.append(".".join(parts))
    return out


def third_party_imports(modules: list[str]) -> list[str]:
    """Top-level names app/ imports that are not app itself (the child preloads them)."""
    names: set[str] = set()
    for module in modules:
        path = REPO_ROOT.joinpath(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return sorted(n for n in names if n != "app" and not n.startswith("app."))


def import_each_alone(modules: list[str]) -> dict[str, str]:
    """{module: traceback} of the modules that fail to import alone."""
    job = {"modules": modules, "preload": third_party_imports(modules), "parallel": PARALLEL}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(job)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"the import checker failed:\n{done.stderr[-4000:]}"
    # The last line: modules may print while they are imported.
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_app_modules_are_found() -> None:
    modules = app_modules()
    assert "app" in modules and "app.node" in modules, modules
    assert not [m for m in modules if ".gen" in m or m.endswith("__main__")], modules


def test_every_app_module_imports_alone() -> None:
    failed = import_each_alone(app_modules())
    # One line per module (its error), then the first tracebacks: a cycle fails every module
    # that enters it, and the first module's traceback shows the whole loop.
    summary = "\n".join(f"{m}: {tb.strip().splitlines()[-1]}" for m, tb in sorted(failed.items()))
    details = "\n\n".join(f"--- {m}\n{tb}" for m, tb in sorted(failed.items())[:3])
    assert not failed, f"{len(failed)} module(s) fail to import alone:\n{summary}\n\n{details}"
