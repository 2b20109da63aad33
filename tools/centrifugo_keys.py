"""List every key path of Centrifugo's configuration, read from its Go sources.

Usage: python tools/centrifugo_keys.py <centrifugo checkout or git dir> [rev]

Walks `internal/config/config.go` and `internal/configtypes/*.go` from the `Config` struct
down, following `mapstructure` tags (",squash" fields inline their struct). Prints one dotted
path per leaf; a list of structs gives `path[].key`. tests/data/centrifugo_v6_keys.txt holds the
output for the Centrifugo release this server follows; tests/test_config_honesty.py checks
that every one of those keys is in our schema with a support state.
"""

from __future__ import annotations

import re
import subprocess
import sys

_STRUCT = re.compile(r"^type (\w+) struct \{\n(.*?)^\}", re.M | re.S)
_ALIAS = re.compile(r"^type (\w+) (\[\]\w+|\w+)\s*$", re.M)
_FIELD = re.compile(r"^[ \t]*(?:(\w+)[ \t]+)?([^\s`]+)[ \t]*`([^`]*)`", re.M)
_TAG = re.compile(r'mapstructure:"([^"]*)"')


def _sources(root: str, rev: str) -> str:
    files = subprocess.run(
        ["git", "--git-dir", root, "ls-tree", "--name-only", rev, "internal/configtypes/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    files = [f for f in files if f.endswith(".go") and not f.endswith("_test.go")]
    files.append("internal/config/config.go")
    out = []
    for f in files:
        out.append(
            subprocess.run(
                ["git", "--git-dir", root, "show", f"{rev}:{f}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    return "\n".join(out)


def keys(source: str) -> list[str]:
    structs = {m.group(1): m.group(2) for m in _STRUCT.finditer(source)}
    aliases = {m.group(1): m.group(2) for m in _ALIAS.finditer(source)}
    out: list[str] = []

    def walk(name: str, prefix: str) -> None:
        for m in _FIELD.finditer(structs[name]):
            ftype, tag = m.group(2), m.group(3)
            t = _TAG.search(tag)
            if t is None:
                continue
            key = t.group(1)
            base = ftype.lstrip("*").removeprefix("configtypes.")
            base = aliases.get(base, base)
            is_list = base.startswith("[]")
            base = base.removeprefix("[]").lstrip("*").removeprefix("configtypes.")
            base = aliases.get(base, base).removeprefix("[]")
            if "squash" in key:
                walk(base, prefix)
                continue
            path = f"{prefix}{key}"
            if base in structs:
                walk(base, f"{path}[]." if is_list else f"{path}.")
            else:
                out.append(path)

    walk("Config", "")
    return out


if __name__ == "__main__":
    root = sys.argv[1]
    rev = sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    if not root.endswith(".git") and not root.endswith("/repo"):
        root = root + "/.git"
    for k in keys(_sources(root, rev)):
        print(k)
