"""What a config section is: the base class of every schema dataclass and the kinds of its keys.

The dataclass tree (app/config/schema.py) *is* the schema: attribute paths equal Centrifugo v6
key paths (``cfg.client.token.hmac_secret_key``). `key_specs` reads one class's type hints into
the kind of each key (bool, duration, list of sections, ...); the loader, the env/flag index and
`render` all walk the tree through it, so a key added to a dataclass is known everywhere.
"""

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from typing import Any, NewType

from app.config.durations import format_duration

__all__ = [
    "ConfigError",
    "Duration",
    "UnixTime",
    "Section",
    "KeySpec",
    "key_specs",
    "render",
    "subsection",
    "empty_map",
    "object_list",
    "item_name",
]

# Type markers the loader recognises; at runtime they are plain float / int.
Duration = NewType("Duration", float)  # seconds; Go duration string on disk
UnixTime = NewType("UnixTime", int)  # unix seconds; int or RFC 3339 string on disk


class ConfigError(Exception):
    """Invalid configuration; the message names the offending key."""


class Section:
    """Lets every config object also be read like a mapping (``cfg.engine.redis["address"]``)."""

    __slots__ = ()

    def keys(self) -> list[str]:
        cls: type = type(self)  # as `type`: mypy takes a dataclass's own class as unhashable
        return list(_public_names(cls))

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-dict form with Go duration strings (what a config file would hold)."""
        return render(self, item=True)


@cache
def _public_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if not f.metadata.get("internal"))


def subsection(cls: type) -> Any:
    return field(default_factory=cls)


def empty_map() -> Any:
    # Left out of __hash__ (dicts are unhashable) but still compared by ==.
    return field(default_factory=dict, hash=False)


def object_list() -> Any:
    return field(default=(), hash=False)


def item_name() -> Any:
    """The ``name`` of a list item class (a namespace): a key of each ``namespaces[]`` item
    only, not of the same class used as ``without_namespace``."""
    return field(default="", metadata={"item_only": True})


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key of a section class: its name and the kind of value it holds."""

    name: str
    # bool int float str duration unixtime strlist strmap map objlist section seclist
    kind: str
    cls: Any = None  # dataclass of a section / list item
    named: bool = False  # list items are identified by their "name" (per-item env overrides)


@cache
def key_specs(cls: type, item: bool) -> dict[str, KeySpec]:
    """The settable keys of section class ``cls``, read from its type hints; ``item`` when
    ``cls`` is read as a list item (then its ``item_name()`` key is one)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, KeySpec] = {}
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        if f.metadata.get("item_only") and not item:
            continue
        out[f.name] = _field_for(f.name, hints[f.name], bool(f.metadata.get("named")))
    return out


def _field_for(name: str, hint: Any, named: bool) -> KeySpec:
    simple = {bool: "bool", int: "int", float: "float", str: "str"}
    if hint is Duration:
        return KeySpec(name, "duration")
    if hint is UnixTime:
        return KeySpec(name, "unixtime")
    if hint in simple:
        return KeySpec(name, simple[hint])
    origin = typing.get_origin(hint)
    if origin is tuple:
        arg = typing.get_args(hint)[0]
        if arg is str:
            return KeySpec(name, "strlist")
        if is_dataclass(arg):
            return KeySpec(name, "seclist", arg, named="name" in {f.name for f in fields(arg)})
        return KeySpec(name, "objlist", named=named)
    if origin is dict:
        if typing.get_args(hint) == (str, str):
            return KeySpec(name, "strmap")
        return KeySpec(name, "map")
    if is_dataclass(hint):
        return KeySpec(name, "section", hint)
    raise TypeError(f"unsupported config field type for {name}: {hint!r}")


def render(obj: Any, item: bool) -> dict[str, Any]:
    """``obj`` (a section) as a plain nested dict, durations as Go strings: a config file's shape."""
    cls: type = type(obj)  # as `type`, for key_specs' cache (see Section.keys)
    out: dict[str, Any] = {}
    for name, f in key_specs(cls, item).items():
        value = getattr(obj, name)
        if f.kind == "section":
            out[name] = render(value, False)
        elif f.kind == "seclist":
            out[name] = [render(v, True) for v in value]
        elif f.kind == "duration":
            out[name] = format_duration(value)
        elif f.kind == "strlist":
            out[name] = list(value)
        elif f.kind == "objlist":
            out[name] = [dict(v) for v in value]
        elif f.kind in ("map", "strmap"):
            out[name] = dict(value)
        else:
            out[name] = value
    return out
