"""Every key as an environment variable and a flag: the ``CENTRIFUGO_*`` names, the dotted
flag paths, their value kinds, and the defaults written as shell assignments (`defaultenv`).

A key's variable is its path upper-cased and joined by "_" (``client.token.hmac_secret_key``
is ``CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY``); per-item overrides of named lists
(``CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_<OPTION>``) are resolved by the loader.
"""

import json
from functools import cache
from typing import Any

from app.config.durations import format_duration
from app.config.schema import Config
from app.config.section import KeySpec, key_specs, render

__all__ = [
    "leaves",
    "env_name",
    "env_index",
    "known_env_vars",
    "known_flag_keys",
    "flag_kind",
    "default_env",
]


@cache
def leaves(cls: type = Config, item: bool = False) -> dict[str, tuple[tuple[str, ...], KeySpec]]:
    """Every settable key of ``cls``: dotted path -> (path tuple, field)."""
    out: dict[str, tuple[tuple[str, ...], KeySpec]] = {}

    def walk(c: type, it: bool, prefix: tuple[str, ...]) -> None:
        for f in key_specs(c, it).values():
            path = prefix + (f.name,)
            if f.kind == "section":
                walk(f.cls, False, path)
            else:
                out[".".join(path)] = (path, f)

    walk(cls, item, ())
    return out


def env_name(path: tuple[str, ...] | str) -> str:
    parts = path.split(".") if isinstance(path, str) else path
    return "_".join(parts).upper()


@cache
def env_index(cls: type = Config, item: bool = False) -> dict[str, tuple[tuple[str, ...], KeySpec]]:
    # The key -> env mapping is not invertible by string splitting (keys contain "_"), so we
    # index every known leaf by its env name instead.
    return {env_name(path): (path, f) for path, f in leaves(cls, item).values()}


def known_env_vars() -> list[str]:
    """All top-level ``CENTRIFUGO_*`` variable names (per-item overrides not included)."""
    return sorted("CENTRIFUGO_" + name for name in env_index())


def known_flag_keys() -> list[str]:
    """All dotted key paths a flag may set."""
    return sorted(leaves())


def flag_kind(key: str) -> str | None:
    """Value kind of a dotted key ("bool", "int", "duration", ...), None when unknown."""
    entry = leaves().get(key)
    return entry[1].kind if entry else None


def default_env(cfg: Config | None = None) -> list[tuple[str, str]]:
    """(CENTRIFUGO_* name, shell-quoted value) for every top-level key, sorted by name.

    Values come from ``cfg`` when given, else from the defaults.
    """
    source = cfg if cfg is not None else Config()
    out = []
    for key_path, f in sorted(leaves().values(), key=lambda kv: env_name(kv[0])):
        value: Any = source
        for part in key_path:
            value = getattr(value, part)
        out.append(("CENTRIFUGO_" + env_name(key_path), _env_value(f, value)))
    return out


def _env_value(f: KeySpec, value: Any) -> str:
    # Shell-ready like Centrifugo's `defaultenv`: strings and JSON quoted, numbers bare.
    if f.kind == "bool":
        return "true" if value else "false"
    if f.kind in ("int", "float", "unixtime"):
        return str(value)
    if f.kind == "duration":
        return format_duration(value)
    if f.kind == "strlist":
        return json.dumps(" ".join(value))
    if f.kind == "seclist":
        return json.dumps(json.dumps([render(v, True) for v in value]))
    if f.kind in ("strmap", "map"):
        return json.dumps(json.dumps(dict(value)))
    if f.kind == "objlist":
        return json.dumps(json.dumps([dict(v) for v in value]))
    return json.dumps(value)
