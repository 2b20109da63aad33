"""The codec contract, checked on one frame (shared by the Hypothesis tests and atheris).

`decode_commands` returns well-formed Commands or raises `DecodeError`; every typed getter
on every decoded field returns a value of its type (integers within 64 bits) or raises
`DecodeError`; a JSON payload the getters hand out is JSON text. An AssertionError or any
other exception out of these functions is a bug in the codec.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from app.protocol import (
    METHODS,
    Command,
    DecodeError,
    get_bool,
    get_dict,
    get_int,
    get_raw,
    get_str,
)

UINT64 = 2**64


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def assert_json(raw: bytes) -> None:
    """raw is JSON text (RFC 8259 grammar). orjson answers first; what it refuses beyond
    the grammar (nesting past 1024 levels, numbers past a double: `1e9999`) is checked
    again by the stdlib parser, with room for its recursion and NaN/Infinity refused."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(limit + 4 * len(raw))
        try:
            json.loads(raw, parse_constant=_no_constants)
        finally:
            sys.setrecursionlimit(limit)


def check_commands(commands: list[Command]) -> None:
    assert commands, "a frame decodes to at least one command"
    for cmd in commands:
        assert type(cmd.id) is int and 0 <= cmd.id <= 0xFFFFFFFF, cmd
        assert cmd.method == "" or cmd.method in METHODS, cmd
        assert isinstance(cmd.params, dict), cmd


def decode(codec: Any, frame: bytes) -> list[Command] | None:
    try:
        commands = codec.decode_commands(frame)
    except DecodeError:
        return None
    check_commands(commands)
    return commands


def _objects(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """params and every object nested in it (subs entries, `since`, ...)."""
    yield params
    for v in params.values():
        if isinstance(v, dict):
            yield from _objects(v)
        elif isinstance(v, list):
            for item in v:
                if isinstance(item, dict):
                    yield from _objects(item)


def check_getters(params: dict[str, Any], *, raw_is_json: bool) -> None:
    """Every getter on every field of every nested object: its type, or DecodeError."""
    for obj in _objects(params):
        for key in list(obj):
            for signed in (False, True):
                try:
                    v = get_int(obj, key, signed=signed)
                except DecodeError:
                    pass
                else:
                    assert type(v) is int, (key, obj[key])
                    # No protocol integer is wider than 64 bits: Centrifugo's decoder
                    # refuses the rest as a bad request.
                    lo = -(2**63) if signed else 0
                    assert lo <= v < UINT64, (key, obj[key], v)
            for getter, t in ((get_str, str), (get_bool, bool), (get_dict, dict)):
                try:
                    assert isinstance(getter(obj, key), t), (getter.__name__, key, obj[key])
                except DecodeError:
                    pass
            try:
                raw = get_raw(obj, key)
            except DecodeError:
                continue
            assert type(raw) is bytes, (key, obj[key])
            if raw_is_json and raw:
                # JSON payloads are spliced into text frames as they are: they must parse.
                assert_json(raw)
