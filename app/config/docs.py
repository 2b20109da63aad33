"""The configuration documentation, read from the schema itself: every key's dotted path, type,
default, ``CENTRIFUGO_*`` variable and description, as `centrifugo configdoc` shows them.

Descriptions are *attribute docstrings*: the string literal statement right after a field in a
schema class body (PEP 257's convention, read by Sphinx autodoc the same way)::

    class AdminConfig(Section):
        enabled: bool = False
        \"\"\"Serve the admin web UI and the admin API.\"\"\"

Python drops such strings at compile time, so `field_docs` reads them back from the class's
source with `ast` (one parse per module, cached). Keeping them beside the fields means a key
added without a description fails tests/unit/test_configdoc.py, and the doc cannot name a key
the loader does not know: `config_docs` walks the same `key_specs` the loader, `defaultenv` and
`render` walk, and names variables with env.py's `env_name`.

The tree is Centrifugo's (internal/cli/configdoc.go `documentStruct`): a section is an entry
of its own (``Type: `TLSConfig` object``) with its keys as children one level deeper; a list of
sections is ``channel.namespaces`` with item keys ``channel.namespaces[].presence``. Type labels
are Centrifugo's (configtypes.TypeLabel: ``bool``, ``int``, ``string``, ``Duration``,
``[]string``, ``map[string]string``, the struct name for a section).
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from typing import Any

from app.config.env import env_name
from app.config.schema import Config
from app.config.section import KeySpec, key_specs, render
from app.config.support import finding_for

__all__ = ["KeyDoc", "field_docs", "config_docs", "iter_docs"]

# Centrifugo's type label of each key kind (configtypes.TypeLabel on the Go field type);
# sections and lists of sections are labelled with their class name below.
_TYPE_LABELS = {
    "bool": "bool",
    "int": "int",
    "float": "float64",
    "str": "string",
    "duration": "Duration",
    "unixtime": "int64",
    "strlist": "[]string",
    "strmap": "map[string]string",
    "map": "map[string]any",
    "objlist": "[]map[string]any",
}


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One key of the documentation tree (Centrifugo's FieldDoc).

    ``field`` is the dotted path with list items as ``[]``; ``level`` is 1 for top-level keys;
    ``default`` is "" for sections (no value of their own); ``env`` is "" when no variable sets
    the key; ``unsupported`` is "" for a key this server honours, else why it does not (from
    app/config/support.py)."""

    field: str
    name: str
    level: int
    type: str
    is_complex: bool  # a section or a list of sections: set key by key, not as one value
    default: str
    env: str
    description: str
    unsupported: str
    children: tuple[KeyDoc, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "name": self.name,
            "level": self.level,
            "type": self.type,
            "is_complex_type": self.is_complex,
            "default": self.default,
            "env": self.env,
            "comment": self.description,
            "unsupported": self.unsupported,
            "children": [c.to_json() for c in self.children],
        }


# --------------------------------------------------------------------------------------------
# Attribute docstrings


@cache
def _module_docs(module_name: str) -> dict[str, dict[str, str]]:
    """class qualname -> {field name: docstring} for every class of a module's source."""
    source = inspect.getsource(sys.modules[module_name])
    out: dict[str, dict[str, str]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                qualname = prefix + node.name
                out[qualname] = _class_body_docs(node.body)
                visit(node.body, qualname + ".")

    visit(ast.parse(source).body, "")
    return out


def _class_body_docs(body: list[ast.stmt]) -> dict[str, str]:
    docs: dict[str, str] = {}
    for stmt, following in zip(body, body[1:], strict=False):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field of dataclass ``cls`` -> its attribute docstring ("" when it has none).

    A field documented in a base class keeps that text (``NamedProxyConfig`` inherits
    ``ProxyConfig``'s keys); a subclass may document it again to say something else."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ in sys.modules and is_dataclass(klass):
            docs.update(_module_docs(klass.__module__).get(klass.__qualname__, {}))
    return {f.name: docs.get(f.name, "") for f in fields(cls)}


# --------------------------------------------------------------------------------------------
# The documentation tree


def _type_label(spec: KeySpec) -> str:
    if spec.kind == "section":
        return str(spec.cls.__name__)
    if spec.kind == "seclist":
        return "[]" + str(spec.cls.__name__)
    return _TYPE_LABELS[spec.kind]


def _default_text(value: Any) -> str:
    """A rendered default as a config file shows it: strings (durations included, already Go
    strings from `render`) bare, except the empty one; anything else as JSON."""
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, ensure_ascii=False)


def _unsupported_text(path: str) -> str:
    finding = finding_for(path)
    if finding is None:
        return ""
    if finding.refused:
        return f"{finding.reason}. Setting it stops the server from starting"
    return f"{finding.reason}. Setting it logs a warning at start and changes nothing"


def _unwrap(text: str) -> str:
    """A docstring's paragraphs each on one line (as Centrifugo's doc tags are): the source's
    line wrapping is not part of the text."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


@dataclass(frozen=True, slots=True)
class _Env:
    """How keys under the current point are named as variables: ``prefix`` + the path below
    ``base`` (top level: ``CENTRIFUGO_`` and the whole path; inside a named list's item:
    ``CENTRIFUGO_CHANNEL_NAMESPACES_<NAME>_`` and the path within the item, the loader's
    per-item overrides). ``prefix`` "" means no variable reaches these keys."""

    prefix: str
    base: tuple[str, ...]

    def name(self, path: tuple[str, ...]) -> str:
        inner = path[len(self.base) :]
        if not self.prefix or (self.base and inner == ("name",)):
            return ""  # an item's name identifies it; it is not an override (as Centrifugo)
        return self.prefix + env_name(inner)


def _walk(
    cls: type,
    item: bool,
    values: dict[str, Any],
    path: tuple[str, ...],
    shown: str,
    level: int,
    env: _Env,
) -> tuple[KeyDoc, ...]:
    docs = field_docs(cls)
    out = []
    for name, spec in key_specs(cls, item).items():
        key_path = path + (name,)
        field = f"{shown}.{name}" if shown else name
        children: tuple[KeyDoc, ...] = ()
        default = ""
        variable = ""
        if spec.kind == "section":
            children = _walk(spec.cls, False, values[name], key_path, field, level + 1, env)
        else:
            default = _default_text(values[name])
            variable = env.name(key_path)
        if spec.kind == "seclist":
            item_env = _Env("", ())
            if spec.named and env.prefix == "CENTRIFUGO_":
                item_env = _Env(env.prefix + env_name(key_path) + "_<NAME>_", key_path)
            item_values = render(spec.cls(), True)
            children = _walk(
                spec.cls, True, item_values, key_path, field + "[]", level + 1, item_env
            )
        out.append(
            KeyDoc(
                field=field,
                name=name,
                level=level,
                type=_type_label(spec),
                is_complex=spec.kind in ("section", "seclist"),
                default=default,
                env=variable,
                description=_unwrap(docs.get(name, "")),
                unsupported=_unsupported_text(field),
                children=children,
            )
        )
    return tuple(out)


@cache
def config_docs() -> tuple[KeyDoc, ...]:
    """The documentation tree of the whole schema: the top-level keys of `Config`, in schema
    order, each with its keys below it."""
    return _walk(Config, False, render(Config(), False), (), "", 1, _Env("CENTRIFUGO_", ()))


def iter_docs(docs: tuple[KeyDoc, ...] | None = None) -> list[KeyDoc]:
    """Every entry of the tree (of `config_docs` by default), depth first in document order."""
    out: list[KeyDoc] = []

    def visit(entries: tuple[KeyDoc, ...]) -> None:
        for entry in entries:
            out.append(entry)
            visit(entry.children)

    visit(config_docs() if docs is None else docs)
    return out
