r"""Go regexps on RE2 (app/goregex.py): Go's meaning, Go's refusals, linear time.

Centrifugo compiles `channel_regex` and the token `audience_regex`/`issuer_regex` with Go's
`regexp`; the expectations below are what Go's `regexp.MatchString` / `FindStringSubmatch`
give for the same pattern and text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.auth import TokenVerifier
from app.channels import ChannelResolver
from app.config import ConfigError, load_config
from app.errors import ClientError
from app.goregex import GoRegexError, compile_go_regexp, compile_go_submatch_regexp


@pytest.mark.parametrize(
    "pattern, text, matched",
    [
        # MatchString is an unanchored search.
        (r"[0-9]", "ab1c", True),
        (r"[0-9]", "abc", False),
        # `$` without (?m) is the end of the text, never before a final newline.
        (r"^[a-z]+$", "abc", True),
        (r"^[a-z]+$", "abc\n", False),
        (r"^a\z", "a\n", False),
        (r"(?m)^b$", "a\nb\nc", True),
        # \w \d \s \b and POSIX classes are ASCII; \pL and scripts are Unicode.
        (r"^\w+$", "канал", False),
        (r"^\d+$", "٣", False),
        (r"^\s$", "\v", False),
        (r"^\pL+$", "канал", True),
        (r"^\p{Cyrillic}+$", "канал", True),
        (r"^\PL+$", "канал", False),
        (r"^[[:alpha:]]+$", "abcXYZ", True),
        (r"^[[:alpha:]]+$", "абв", False),
        (r"^[[:^digit:]]+$", "ab", True),
        (r"^[[:alnum:]_]+$", "a_Z9", True),
        (r"^[[:alnum:]_]+$", "a-b", False),
        # Flags i, s, m, U; case folding is Unicode (K folds to the Kelvin sign).
        (r"(?i)^abc$", "ABC", True),
        (r"(?i)^k$", "\u212a", True),
        (r"^.$", "\n", False),
        (r"(?s)^.$", "\n", True),
        # `.` is one character (UTF-8 aware), not one byte.
        (r"^.$", "é", True),
        (r"^..$", "é", False),
        # Negated classes match a newline (Go's ClassNL).
        (r"^[^a]$", "\n", True),
        # Quoting, escapes, a "]" first in a class.
        (r"^\Qa.b\E$", "a.b", True),
        (r"^\Qa.b\E$", "axb", False),
        (r"^\Q\C\E$", "\\C", True),
        (r"^[]a]+$", "]a]", True),
        (r"^a\$$", "a$", True),
        (r"^a\$$", "a", False),
        (r"^\141$", "a", True),
        (r"^\x{1F600}$", "\U0001f600", True),
        (r"^\_\-$", "_-", True),
        # Both named group spellings (Go 1.22 added `(?<name>`).
        (r"^(?<id>[0-9]+)\z", "12", True),
        (r"^(?P<id>[0-9]+)\z", "12", True),
    ],
)
def test_matches_as_go(pattern: str, text: str, matched: bool) -> None:
    assert compile_go_regexp(pattern).matches(text) is matched


@pytest.mark.parametrize(
    "pattern, text, groups",
    [
        (r"^https://auth/(?P<realm>[a-z]+)$", "https://auth/beta", {"realm": "beta"}),
        (r"^https://auth/(?<realm>[a-z]+)$", "https://auth/beta", {"realm": "beta"}),
        # Leftmost-first like Go (POSIX leftmost-longest would take "ab").
        (r"(?P<x>a|ab)", "ab", {"x": "a"}),
        # Greedy, lazy, and (?U) swapping the two.
        (r"(?P<x>a+)", "aaa", {"x": "aaa"}),
        (r"(?P<x>a+?)", "aaa", {"x": "a"}),
        (r"(?U)(?P<x>a+)", "aaa", {"x": "a"}),
        (r"(?U)(?P<x>a+?)", "aaa", {"x": "aaa"}),
        # A group that took no part is "" (Go's FindStringSubmatch), not None.
        (r"(?P<x>a)|(?P<y>b)", "b", {"x": "", "y": "b"}),
        (r"^(?P<word>\pL+)$", "слово", {"word": "слово"}),
        (r"^x$", "y", None),
    ],
)
def test_named_groups_as_go(pattern: str, text: str, groups: dict[str, str] | None) -> None:
    assert compile_go_submatch_regexp(pattern).named_groups(text) == groups


@pytest.mark.parametrize(
    "pattern, fragment",
    [
        # What RE2 has never had: backreferences and lookarounds.
        (r"(a)\1", r"\1"),
        (r"(?=x)", "(?="),
        (r"(?!x)", "(?!"),
        (r"(?<=x)y", "(?<="),
        (r"(?<!x)y", "(?<!"),
        (r"(?P<n>a)(?P=n)", "(?P"),
        # Go refuses what C++ RE2 takes: \C (one byte) and non-ASCII group names.
        (r"a\C", r"\C"),
        (r"[\C]", r"\C"),
        (r"(?P<é>x)", "named capture"),
        # Not Go syntax.
        (r"a\Z", r"\Z"),
        (r"(?x) a ", "(?x"),
        (r"a**", "**"),
        (r"a++", "++"),
        (r"a{1001}", "{1001}"),
        (r"(a{1000}){2}", "{2}"),
        (r"[unclosed", "missing ]"),
        (r"(a", "missing )"),
        ("\ud800", "invalid UTF-8"),
    ],
)
def test_refused_as_go(pattern: str, fragment: str) -> None:
    for compile_ in (compile_go_regexp, compile_go_submatch_regexp):
        with pytest.raises(GoRegexError) as exc:
            compile_(pattern)
        assert fragment in str(exc.value)
        # An re.error, so config validation reports it as it reports any bad pattern.
        assert isinstance(exc.value, re.error)


def test_large_unicode_program_gets_the_larger_budget() -> None:
    # RE2 compiles \pL to a UTF-8 byte automaton (1,200 instructions each): 500 of them need
    # more than RE2's default 8 MiB; Go accepts the pattern, so do we.
    rx = compile_go_regexp(r"^\pL{500}$")
    assert rx.matches("ж" * 500)
    assert not rx.matches("ж" * 499)


def test_lone_surrogate_in_text_does_not_raise() -> None:
    # Decoders refuse lone surrogates before a channel gets here; should one pass, it is one
    # character that is no letter (Go's encoding/json puts one U+FFFD in its place).
    assert compile_go_regexp(r"^.$").matches("\ud800")
    assert not compile_go_regexp(r"^\pL$").matches("\ud800")
    assert compile_go_regexp(r"a").matches("\ud800a")


def test_nested_quantifier_is_linear() -> None:
    # Python's `re` takes 0.5 s at 24 characters and x4 per 2 more: 10,000 would never
    # end (the 60 s per-test timeout fails it). Timings are in bench/regex.py, not here.
    rx = compile_go_regexp(r"^(a+)+$")
    assert rx.matches("a" * 10_000)
    assert not rx.matches("a" * 10_000 + "!")
    assert compile_go_regexp(r"(x+x+)+y").matches("x" * 10_000 + "y")
    assert not compile_go_regexp(r"(x+x+)+y").matches("x" * 10_000)
    # With groups read (the token regexes), too.
    rx_groups = compile_go_submatch_regexp(r"^(?P<a>a+)+$")
    assert rx_groups.named_groups("a" * 10_000) == {"a": "a" * 10_000}
    assert rx_groups.named_groups("a" * 10_000 + "!") is None


# ------------------------------------------------------------------ through config and resolver


def write_config(tmp_path: Path, conf: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(conf))
    return str(path)


def test_long_channel_against_nested_quantifier(tmp_path: Path) -> None:
    conf = {
        "channel": {
            "max_length": 20_000,
            "namespaces": [{"name": "ns", "channel_regex": "^(a+)+$"}],
        }
    }
    r = ChannelResolver(load_config(write_config(tmp_path, conf), env={}))
    assert r.resolve("ns:" + "a" * 10_000).namespace == "ns"
    with pytest.raises(ClientError) as exc:
        r.resolve("ns:" + "a" * 10_000 + "!")
    assert exc.value.code == 107


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=x)", r"a\C", r"a\Z", r"(?P<é>x)"])
@pytest.mark.parametrize(
    "where, conf",
    [
        (
            "channel.namespaces[chat].channel_regex",
            lambda p: {"channel": {"namespaces": [{"name": "chat", "channel_regex": p}]}},
        ),
        (
            "channel.without_namespace.channel_regex",
            lambda p: {"channel": {"without_namespace": {"channel_regex": p}}},
        ),
    ],
)
def test_invalid_channel_regex_fails_config_naming_it(
    tmp_path: Path, pattern: str, where: str, conf: Any
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path, conf(pattern)), env={})
    assert f"invalid value for {where}: {pattern!r}: " in str(exc.value)


@pytest.mark.parametrize("section", ["token", "subscription_token"])
@pytest.mark.parametrize("key", ["audience_regex", "issuer_regex"])
def test_invalid_token_regex_fails_naming_it(section: str, key: str) -> None:
    flags = {f"client.{section}.hmac_secret_key": "secret", f"client.{section}.{key}": r"(?=x)"}
    if section == "subscription_token":
        flags["client.subscription_token.enabled"] = True
    cfg = load_config(None, env={}, flags=flags)
    with pytest.raises(ValueError) as exc:
        TokenVerifier(cfg.client)
    assert f"invalid value for client.{section}.{key}: '(?=x)': " in str(exc.value)
