"""Publication tags filter (app/filter.py) against centrifuge's internal/filter semantics:
Match for every comparison, Validate's rules and messages, udecimal's number grammar."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.filter import (
    FilterError,
    FilterNode,
    compile_filter,
    from_params,
    parse_decimal,
    validate,
)
from app.protocol import DecodeError


def match(tf: dict[str, Any], tags: dict[str, str]) -> bool:
    node = from_params(tf)
    assert node is not None
    return compile_filter(node)(tags)


def leaf(key: str, cmp: str, val: str = "", vals: list[str] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"key": key, "cmp": cmp}
    if val:
        d["val"] = val
    if vals is not None:
        d["vals"] = vals
    return d


# ------------------------------------------------------------------ comparisons

STRING_CASES = [
    # (cmp, val or vals, tags, expected)
    ("eq", "eng", {"team": "eng"}, True),
    ("eq", "eng", {"team": "ops"}, False),
    ("eq", "eng", {}, False),
    ("neq", "eng", {"team": "ops"}, True),
    ("neq", "eng", {"team": "eng"}, False),
    ("neq", "eng", {}, True),  # a missing key is "not equal"
    ("in", ["eng", "ops"], {"team": "ops"}, True),
    ("in", ["eng", "ops"], {"team": "hr"}, False),
    ("in", ["eng"], {}, False),
    ("in", [""], {}, True),  # Go reads a missing key as "", and "" is in vals
    ("nin", ["eng", "ops"], {"team": "hr"}, True),
    ("nin", ["eng", "ops"], {"team": "eng"}, False),
    ("nin", ["eng"], {}, True),
    ("nin", [""], {}, False),
    ("sw", "en", {"team": "eng"}, True),
    ("sw", "ng", {"team": "eng"}, False),
    ("sw", "en", {}, False),
    ("ew", "ng", {"team": "eng"}, True),
    ("ew", "en", {"team": "eng"}, False),
    ("ew", "ng", {}, False),
    ("ct", "n", {"team": "eng"}, True),
    ("ct", "x", {"team": "eng"}, False),
    ("ct", "n", {}, False),
]


@pytest.mark.parametrize(("cmp", "arg", "tags", "expected"), STRING_CASES)
def test_string_comparisons(cmp: str, arg: Any, tags: dict[str, str], expected: bool) -> None:
    tf = leaf("team", cmp, vals=arg) if isinstance(arg, list) else leaf("team", cmp, arg)
    assert match(tf, tags) is expected


def test_exists_and_not_exists() -> None:
    assert match(leaf("team", "ex"), {"team": ""}) is True
    assert match(leaf("team", "ex"), {"other": "x"}) is False
    assert match(leaf("team", "nex"), {"other": "x"}) is True
    assert match(leaf("team", "nex"), {"team": "eng"}) is False
    # ex/nex need no key: the empty key is looked up as it is.
    assert match({"cmp": "ex"}, {"": "x"}) is True
    assert match({"cmp": "nex"}, {"a": "x"}) is True


NUMERIC_CASES = [
    ("gt", "9", "10", True),  # as numbers, not as strings ("10" < "9")
    ("gt", "10", "10", False),
    ("gte", "10", "10.0", True),
    ("lt", "10", "9.99", True),
    ("lt", "-1", "-1.5", True),
    ("lte", "0", "-0", True),  # -0 == 0
    ("gte", "0", "-0.000", True),
    # Exact decimals: a float would see these as equal.
    ("gt", "1", "1.0000000000000000001", True),
    ("lt", "0.3", "0.2999999999999999999", True),
    ("gt", "12345678901234567890123456789", "12345678901234567890123456790", True),
    ("gt", "1", "+2", True),
    # Values udecimal refuses: never a match, whatever the comparison.
    ("gt", "1", "1e3", False),
    ("lt", "1", "1e3", False),
    ("gt", "1", "5.", False),
    ("lt", "1", ".5", False),
    ("gt", "1", "0x10", False),
    ("gt", "1", " 5", False),
    ("gt", "1", "1_000", False),
    ("gt", "1", "2.00000000000000000000", False),  # 20 decimals: ErrPrecOutOfRange
    ("gt", "1", "٣", False),  # not an ASCII digit
    ("gt", "1", "", False),
]


@pytest.mark.parametrize(("cmp", "val", "tag", "expected"), NUMERIC_CASES)
def test_numeric_comparisons(cmp: str, val: str, tag: str, expected: bool) -> None:
    assert match(leaf("n", cmp, val), {"n": tag}) is expected


def test_numeric_missing_tag_or_bad_bound_never_matches() -> None:
    for cmp in ("gt", "gte", "lt", "lte"):
        assert match(leaf("n", cmp, "1"), {}) is False
        assert match(leaf("n", cmp, "abc"), {"n": "5"}) is False  # valid, but never true


def test_logical_operators() -> None:
    eng = leaf("team", "eq", "eng")
    hot = leaf("prio", "gte", "5")
    both = {"op": "and", "nodes": [eng, hot]}
    either = {"op": "or", "nodes": [eng, hot]}
    assert match(both, {"team": "eng", "prio": "7"}) is True
    assert match(both, {"team": "eng", "prio": "1"}) is False
    assert match(either, {"team": "ops", "prio": "7"}) is True
    assert match(either, {"team": "ops", "prio": "1"}) is False
    assert match({"op": "not", "nodes": [eng]}, {"team": "ops"}) is True
    assert match({"op": "not", "nodes": [eng]}, {"team": "eng"}) is False
    # One child and three children take other code paths than two.
    assert match({"op": "and", "nodes": [eng]}, {"team": "eng"}) is True
    three = [eng, hot, leaf("x", "ex")]
    assert match({"op": "and", "nodes": three}, {"team": "eng", "prio": "5", "x": ""}) is True
    assert match({"op": "and", "nodes": three}, {"team": "eng", "prio": "5"}) is False
    assert match({"op": "or", "nodes": three}, {"x": ""}) is True
    assert match({"op": "or", "nodes": three}, {}) is False
    nested = {"op": "or", "nodes": [{"op": "not", "nodes": [both]}, leaf("vip", "ex")]}
    assert match(nested, {"team": "eng", "prio": "9"}) is False
    assert match(nested, {"team": "eng", "prio": "9", "vip": "1"}) is True


def test_leaf_ignores_nodes_and_branch_ignores_leaf_fields() -> None:
    # Go reads only the fields of the node's kind.
    assert match({**leaf("team", "eq", "eng"), "nodes": [{"op": "bogus"}]}, {"team": "eng"})
    assert match({"op": "not", "key": "k", "cmp": "zz", "nodes": [leaf("a", "ex")]}, {})


# ------------------------------------------------------------------ validation

INVALID = [
    ({"key": "a"}, "leaf node must have cmp set"),
    ({"key": "a", "cmp": "eq"}, "eq comparison requires Val"),
    ({"key": "a", "cmp": "gt", "val": "1", "vals": ["1"]}, "gt comparison must not use Vals"),
    ({"key": "a", "cmp": "in"}, "in comparison requires non-empty Vals"),
    ({"key": "a", "cmp": "nin", "vals": []}, "nin comparison requires non-empty Vals"),
    ({"key": "a", "cmp": "in", "vals": ["x"], "val": "y"}, "in comparison must not use Val"),
    ({"key": "a", "cmp": "ex", "val": "y"}, "ex comparison must not use Val or Vals"),
    ({"key": "a", "cmp": "nex", "vals": ["y"]}, "nex comparison must not use Val or Vals"),
    ({"key": "a", "cmp": "like", "val": "y"}, "unknown comparison operator: like"),
    ({"cmp": "eq", "val": "y"}, "leaf node requires key"),
    ({"op": "and"}, "and node must have at least one child"),
    ({"op": "or", "nodes": []}, "or node must have at least one child"),
    ({"op": "not"}, "not node must have exactly one child"),
    (
        {"op": "not", "nodes": [{"cmp": "ex"}, {"cmp": "ex"}]},
        "not node must have exactly one child",
    ),
    ({"op": "xor", "nodes": [{"cmp": "ex"}]}, "invalid op: xor"),
    (
        {"op": "and", "nodes": [{"cmp": "ex"}, {"key": "a", "cmp": "sw"}]},
        "sw comparison requires Val",
    ),
    ({"op": "not", "nodes": [{"op": "or"}]}, "or node must have at least one child"),
    ({}, "leaf node must have cmp set"),
]


@pytest.mark.parametrize(("tf", "message"), INVALID)
def test_validation_errors(tf: dict[str, Any], message: str) -> None:
    node = from_params(tf)
    assert node is not None
    with pytest.raises(FilterError, match=f"^{message}$"):
        validate(node)
    with pytest.raises(FilterError):
        compile_filter(node)


def test_every_comparison_validates_with_its_argument() -> None:
    for cmp in ("eq", "neq", "sw", "ew", "ct", "gt", "gte", "lt", "lte"):
        validate(FilterNode(key="k", cmp=cmp, val="1"))
    for cmp in ("in", "nin"):
        validate(FilterNode(key="k", cmp=cmp, vals=("1",)))
    for cmp in ("ex", "nex"):
        validate(FilterNode(cmp=cmp))


def test_too_deep_to_compile_is_invalid_not_a_crash() -> None:
    node = FilterNode(cmp="ex", key="a")
    for _ in range(5000):
        node = FilterNode(op="not", nodes=(node,))
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_filter(node)


def test_a_few_hundred_levels_compile_and_match() -> None:
    node = FilterNode(cmp="ex", key="a")
    for _ in range(300):
        node = FilterNode(op="not", nodes=(node,))
    assert compile_filter(node)({"a": ""}) is True  # even number of nots


# ------------------------------------------------------------------ decoding


def test_protobuf_and_json_shapes_decode_alike() -> None:
    tf = {"op": "and", "nodes": [{"key": "a", "cmp": "in", "vals": ["x", "y"]}]}
    node = from_params(tf)
    assert node == FilterNode(op="and", nodes=(FilterNode(key="a", cmp="in", vals=("x", "y")),))
    assert from_params(None) is None
    # JSON nulls are Go's zero values.
    assert from_params({"op": None, "key": "a", "cmp": "ex", "vals": None, "nodes": None}) == (
        FilterNode(key="a", cmp="ex")
    )
    assert from_params({"key": "a", "cmp": "in", "vals": [None]}) == FilterNode(
        key="a", cmp="in", vals=("",)
    )
    # Unknown fields are ignored, as Go's decoder ignores them.
    assert from_params({"cmp": "ex", "extra": 1}) == FilterNode(cmp="ex")


@pytest.mark.parametrize(
    "tf",
    [
        "eq",
        ["a"],
        {"op": 1},
        {"key": True},
        {"cmp": ["eq"]},
        {"val": 5},
        {"vals": "a"},
        {"vals": [1]},
        {"nodes": {"cmp": "ex"}},
        {"op": "and", "nodes": ["x"]},
        {"op": "and", "nodes": [None]},
    ],
)
def test_wrong_types_are_decode_errors(tf: Any) -> None:
    with pytest.raises(DecodeError):
        from_params(tf)


# ------------------------------------------------------------------ decimals


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", Decimal(0)),
        ("-0", Decimal(0)),
        ("+5", Decimal(5)),
        ("007.50", Decimal("7.5")),
        ("-1.0000000000000000001", Decimal("-1.0000000000000000001")),
        ("9" * 40, Decimal("9" * 40)),  # past u128: udecimal's big.Int path
        ("1" * 180 + "." + "1" * 19, Decimal("1" * 180 + "." + "1" * 19)),  # 200 bytes
        # The big.Int path (more than 41 bytes) reads a second sign after "-", as
        # big.Int.SetString does: "-+…" is negative, "--0…" is zero.
        ("-+" + "1" * 40, -Decimal("1" * 40)),
        ("-+" + "1" * 40 + ".5", -Decimal("1" * 40 + ".5")),
        ("-+" + "0" * 40 + ".25", Decimal("-0.25")),
        ("--" + "0" * 41, Decimal(0)),
    ],
)
def test_parse_decimal_accepts(text: str, value: Decimal | None) -> None:
    assert parse_decimal(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-",
        "+",
        ".5",
        "-.5",
        "5.",
        "1.2.3",
        "1e3",
        "1E3",
        "inf",
        "NaN",
        " 1",
        "1 ",
        "1,5",
        "--1",
        "+-1",
        "-+1",  # short strings take the u128 path: one sign only
        "1." + "0" * 20,  # 20 decimals
        "1" * 201,  # over 200 bytes
        "--" + "1" * 41,  # big path, negative after the second sign
        "+-" + "1" * 41,
        "++" + "1" * 41,
        "١٢٣",  # Arabic-Indic digits
    ],
)
def test_parse_decimal_refuses(text: str) -> None:
    assert parse_decimal(text) is None
