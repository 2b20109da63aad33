"""docs/architecture.md is the map of app/: it must name every module, and only real ones.

A module is named by its path in backticks (`app/engines/redis/resp.py`); generated
protobuf code (`*/gen/`) is named by its folder. The test fails when a change adds, moves or
removes a module without updating the map, which is how the map stays true.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
DOC = ROOT / "docs" / "architecture.md"

# `app/name.py` or `app/dir/name.py` in backticks: a module path of the repository.
_MODULE = re.compile(r"`app/((?:[a-z_0-9]+/)*[a-z_0-9]+\.py)`")


def _modules() -> set[str]:
    return {
        p.relative_to(APP).as_posix()
        for p in APP.rglob("*.py")
        if "gen" not in p.relative_to(APP).parts
    }


def test_every_module_of_app_is_on_the_map() -> None:
    named = set(_MODULE.findall(DOC.read_text()))
    missing = sorted(_modules() - named)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_the_map_names_only_modules_that_exist() -> None:
    text = DOC.read_text()
    named = set(_MODULE.findall(text))
    stale = sorted(n for n in named if not (APP / n).is_file())
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
