"""Config values as written (file values, env and flag strings) into the Python value of each
key's kind (app/config/section.py): Go's boolean spellings, durations, unix times, lists,
string maps with ``${CENTRIFUGO_VAR_*}`` expansion, list items as nested sections.

`Coercer` is one load's converter: it turns a raw mapping into a *normalized* dict (only the
keys that were set, Python values) and collects the keys it did not know.
"""

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from app.config.durations import parse_duration
from app.config.section import ConfigError, KeySpec, key_specs

__all__ = ["Coercer", "load_json"]


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_VAR_RE = re.compile(r"\$\{(CENTRIFUGO_VAR_[^}]+)}")


class _Invalid(Exception):
    pass


def _parse_bool(text: str) -> bool:
    # Go strconv.ParseBool semantics.
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid(f"{text!r} is not a boolean")


def _expand_vars(mapping: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in mapping.items():
        for name in _VAR_RE.findall(value):
            if name not in env:
                raise _Invalid(f"environment variable {name!r} not found")
        out[key] = _VAR_RE.sub(lambda m: env[m.group(1)], value)
    return out


def load_json(text: str | bytes) -> Any:
    """JSON written in the configuration (a file, an environment value, a list item override),
    read in this one place. The standard library's parser: its integers are exact at any size
    (orjson reads 2**64 as a float), so a big number in an opaque object (a consumer, a map
    section) reaches the server as written. Raises ValueError when malformed."""
    return json.loads(text)


def _json(text: str) -> Any:
    try:
        return load_json(text)
    except ValueError as e:
        raise _Invalid(f"malformed JSON: {e}") from None


def _type_name(value: Any) -> str:
    return type(value).__name__


class Coercer:
    """One load: collects unknown keys and converts raw values into normalized dicts.

    A normalized dict holds only keys that were set, with Python values (durations as float
    seconds, lists as lists); sections nest as dicts, list items as dicts.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.unknown: list[str] = []

    # ---- scalar and composite values

    def coerce(self, f: KeySpec, value: Any, path: str, from_string: bool) -> Any:
        try:
            if from_string:
                return self._from_string(f, value, path)
            return self._from_value(f, value, path)
        except _Invalid as e:
            raise ConfigError(f"invalid value for {path}: {e}") from None

    def _from_string(self, f: KeySpec, text: str, path: str) -> Any:
        kind = f.kind
        if kind == "bool":
            return _parse_bool(text.strip())
        if kind in ("int", "unixtime", "float", "duration"):
            return self._from_value(f, text, path)
        if kind == "str":
            return text
        if kind == "strlist":
            return text.split()
        if kind == "seclist":
            text = text.strip()
            if text.startswith("["):
                return self._from_value(f, _json(text), path)
            # Centrifugo also accepts space-separated item names here.
            return [{"name": name} for name in text.split()]
        if kind in ("strmap", "map", "objlist"):
            return self._from_value(f, _json(text), path)
        raise _Invalid("cannot be set from a string")

    def _from_value(self, f: KeySpec, value: Any, path: str) -> Any:
        kind = f.kind
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value.strip())
            raise _Invalid(f"expected a boolean, got {value!r}")
        if kind == "int":
            return self._int(value)
        if kind == "unixtime":
            if isinstance(value, str) and value.strip() and not _is_number(value):
                try:
                    return int(datetime.fromisoformat(value.strip()).timestamp())
                except ValueError:
                    raise _Invalid(
                        f"expected unix seconds or RFC 3339 time, got {value!r}"
                    ) from None
            return self._int(value)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise _Invalid(f"expected a number, got {value!r}")
            try:
                return float(value)
            except ValueError:
                raise _Invalid(f"expected a number, got {value!r}") from None
        if kind == "duration":
            try:
                return parse_duration(value)
            except ValueError as e:
                raise _Invalid(str(e)) from None
        if kind == "str":
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise _Invalid(f"expected a string, got {_type_name(value)}")
        if kind == "strlist":
            if isinstance(value, str):
                return [value] if value else []
            if not isinstance(value, list | tuple):
                raise _Invalid(f"expected a list of strings, got {_type_name(value)}")
            out = []
            for v in value:
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    raise _Invalid(f"expected a list of strings, got item {v!r}")
                out.append(str(v))
            return out
        if kind == "strmap":
            if isinstance(value, str):
                value = _json(value)
            if not isinstance(value, Mapping):
                raise _Invalid(f"expected an object of strings, got {_type_name(value)}")
            mapping = {}
            for k, v in value.items():
                if not isinstance(v, str):
                    raise _Invalid(f"expected string value for key {k!r}, got {_type_name(v)}")
                mapping[str(k)] = v
            return _expand_vars(mapping, self.env)
        if kind == "map":
            if not isinstance(value, Mapping):
                raise _Invalid(f"expected an object, got {_type_name(value)}")
            return dict(value)
        if kind == "objlist":
            if isinstance(value, str):
                value = _json(value)
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, Mapping) for v in value
            ):
                raise _Invalid("expected a list of objects")
            return [dict(v) for v in value]
        if kind == "seclist":
            if isinstance(value, str):
                value = _json(value)
            if not isinstance(value, list | tuple):
                raise _Invalid(f"expected a list of objects, got {_type_name(value)}")
            return [
                self.section(f.cls, item, f"{path}[{i}]", item=True) for i, item in enumerate(value)
            ]
        if kind == "section":
            return self.section(f.cls, value, path, item=False)
        raise _Invalid(f"unsupported kind {kind}")  # pragma: no cover - schema bug

    @staticmethod
    def _int(value: Any) -> int:
        if isinstance(value, bool):
            raise _Invalid(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            if text == "":
                return 0
            try:
                return int(text)
            except ValueError:
                pass
        raise _Invalid(f"expected an integer, got {value!r}")

    # ---- sections

    def section(self, cls: type, data: Any, path: str, item: bool) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"invalid value for {path or 'configuration'}: expected an object, "
                f"got {_type_name(data)}"
            )
        schema = key_specs(cls, item)
        out: dict[str, Any] = {}
        for key, value in data.items():
            key = str(key)
            sub = f"{path}.{key}" if path else key
            f = schema.get(key)
            if f is None:
                self.unknown.append(sub)
                continue
            if value is None:  # e.g. an empty YAML key: treat as unset
                continue
            out[key] = self.coerce(f, value, sub, from_string=False)
        return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
