"""Channel name parsing and namespace resolution (research §4.1, §9 item 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.channels import ChannelResolver
from app.config import load_config
from app.errors import ClientError


def make_resolver(tmp_path: Path, conf: dict[str, Any], **kw: Any) -> ChannelResolver:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(conf))
    return ChannelResolver(load_config(str(path), env={}), **kw)


def error_code(resolver: ChannelResolver, channel: str, client_side: bool = True) -> int:
    with pytest.raises(ClientError) as exc:
        resolver.resolve(channel, client_side=client_side)
    return exc.value.code


BASIC = {
    "channel": {
        "without_namespace": {"presence": True},
        "namespaces": [
            {"name": "chat", "history_size": 10, "history_ttl": "60s"},
            {"name": "news", "join_leave": True},
        ],
    }
}


@pytest.fixture
def resolver(tmp_path: Path) -> ChannelResolver:
    return make_resolver(tmp_path, BASIC)


def test_without_namespace(resolver: ChannelResolver) -> None:
    info = resolver.resolve("general")
    assert info.channel == "general"
    assert info.namespace == ""
    assert info.private is False
    assert info.allowed_users is None
    assert info.options.presence is True
    assert info.options is resolver.config.channel.without_namespace


def test_namespace_is_before_first_boundary(resolver: ChannelResolver) -> None:
    info = resolver.resolve("chat:room:1")
    assert info.namespace == "chat"
    assert info.channel == "chat:room:1"  # the namespace stays part of the name
    assert info.options.history_size == 10
    assert info.options.name == "chat"
    assert resolver.resolve("news:chat:x").namespace == "news"
    assert resolver.resolve("news:chat:x").options.join_leave is True


def test_private_prefix_is_stripped_before_namespace(resolver: ChannelResolver) -> None:
    info = resolver.resolve("$chat:secret")
    assert info.private is True
    assert info.namespace == "chat"
    assert info.channel == "$chat:secret"
    plain = resolver.resolve("$secret")
    assert plain.private is True and plain.namespace == ""
    # "$" in the middle is not a prefix.
    assert resolver.resolve("a$b").private is False


def test_empty_namespace_name_uses_without_namespace(resolver: ChannelResolver) -> None:
    info = resolver.resolve(":chan")
    assert info.namespace == ""
    assert info.options.presence is True


def test_unknown_namespace_is_102(resolver: ChannelResolver) -> None:
    assert error_code(resolver, "nope:chan") == 102
    assert error_code(resolver, "nope:chan", client_side=False) == 102
    assert error_code(resolver, "$nope:chan") == 102
    # Namespace names are case sensitive.
    assert error_code(resolver, "Chat:room") == 102


def test_empty_channel_is_107(resolver: ChannelResolver) -> None:
    assert error_code(resolver, "") == 107
    assert error_code(resolver, "", client_side=False) == 107


def test_max_length_client_side_only(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, {"channel": {"max_length": 10}})
    assert r.resolve("a" * 10).channel == "a" * 10
    assert error_code(r, "a" * 11) == 107
    # Centrifugo checks the length only for client-side subscriptions and commands.
    assert r.resolve("a" * 11, client_side=False).channel == "a" * 11


def test_default_max_length_is_255(resolver: ChannelResolver) -> None:
    assert resolver.resolve("a" * 255).channel == "a" * 255
    assert error_code(resolver, "a" * 256) == 107


def test_non_ascii_rejected_client_side_without_regex(resolver: ChannelResolver) -> None:
    assert error_code(resolver, "канал") == 107
    assert error_code(resolver, "chat:é") == 107
    assert resolver.resolve("chat:é", client_side=False).namespace == "chat"


REGEX = {
    "channel": {
        "without_namespace": {"channel_regex": "^[a-z$]+$"},
        "namespaces": [
            {"name": "ids", "channel_regex": "^[0-9]+$"},
            {"name": "uni", "channel_regex": "^\\pL+$"},
            {"name": "word", "channel_regex": "^\\w+$"},
            {"name": "loose", "channel_regex": "[0-9]"},
            {"name": "free"},
        ],
    }
}


def test_channel_regex_applies_to_rest_after_namespace(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, REGEX)
    assert r.resolve("ids:123").namespace == "ids"
    assert r.resolve("$ids:42").private is True
    assert error_code(r, "ids:12a") == 107
    assert error_code(r, "ids:") == 107
    # The regex sees only the part after "ids:", so the namespace itself is not matched.
    assert error_code(r, "ids:ids") == 107
    # A trailing newline must not sneak past "$" (Go's "$" is end of text).
    assert error_code(r, "ids:123\n") == 107
    # Without a namespace the whole channel (private prefix included) is matched.
    assert r.resolve("abc").namespace == ""
    assert r.resolve("$abc").private is True
    assert error_code(r, "abc1") == 107


def test_channel_regex_is_a_search_like_go(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, REGEX)
    assert r.resolve("loose:abc1def").namespace == "loose"
    assert error_code(r, "loose:abcdef") == 107


def test_channel_regex_allows_non_ascii(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, REGEX)
    assert r.resolve("uni:канал").namespace == "uni"
    # Go's \w is ASCII (Python's would take Cyrillic).
    assert error_code(r, "word:канал") == 107
    # A namespace without regex still requires ASCII.
    assert error_code(r, "free:канал") == 107
    assert r.resolve("free:abc").namespace == "free"


def test_channel_regex_only_client_side(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, REGEX)
    assert r.resolve("ids:abc", client_side=False).namespace == "ids"
    assert r.resolve("UPPER", client_side=False).namespace == ""


USER_LIMITED = {
    "channel": {
        "without_namespace": {"allow_user_limited_channels": True},
        "namespaces": [
            {"name": "dialog", "allow_user_limited_channels": True},
            {"name": "plain"},
        ],
    }
}


def test_user_limited_channels(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, USER_LIMITED)
    info = r.resolve("dialog:chat#42,43")
    assert info.namespace == "dialog"
    assert info.allowed_users == ("42", "43")
    assert info.user_limited
    assert info.user_allowed("42") and info.user_allowed("43")
    assert not info.user_allowed("4") and not info.user_allowed("")
    # Users come after the LAST boundary.
    assert r.resolve("a#b#1,2").allowed_users == ("1", "2")
    assert r.resolve("#7").allowed_users == ("7",)
    # Empty names never grant access (no anonymous entry through "chan#").
    assert r.resolve("chan#").allowed_users == ()
    assert r.resolve("chan#1,,2,").allowed_users == ("1", "2")
    # No boundary: not user-limited.
    assert r.resolve("dialog:chat").allowed_users is None
    assert not r.resolve("dialog:chat").user_allowed("42")


def test_user_limited_needs_namespace_option(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, USER_LIMITED)
    info = r.resolve("plain:chat#42")
    assert info.allowed_users is None
    assert info.channel == "plain:chat#42"


def test_user_limited_off_by_default(resolver: ChannelResolver) -> None:
    assert resolver.resolve("chat:x#1").allowed_users is None


CUSTOM_SYMBOLS = {
    "channel": {
        "private_prefix": "~",
        "namespace_boundary": "/",
        "user_boundary": "@",
        "user_separator": ";",
        "namespaces": [{"name": "team", "allow_user_limited_channels": True}],
    },
    "client": {"subscribe_to_user_personal_channel": {"personal_channel_namespace": "team"}},
}


def test_custom_boundaries(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, CUSTOM_SYMBOLS)
    info = r.resolve("~team/room@a;b")
    assert info.private is True
    assert info.namespace == "team"
    assert info.allowed_users == ("a", "b")
    # The default symbols carry no meaning here.
    dollar = r.resolve("$x:y#z")
    assert dollar.private is False and dollar.namespace == ""
    assert dollar.allowed_users is None
    assert error_code(r, "other/x") == 102


def test_personal_channel(resolver: ChannelResolver, tmp_path: Path) -> None:
    assert resolver.personal_channel("42") == "#42"
    with_ns = make_resolver(
        tmp_path,
        {
            "channel": {"namespaces": [{"name": "personal"}]},
            "client": {
                "subscribe_to_user_personal_channel": {
                    "enabled": True,
                    "personal_channel_namespace": "personal",
                }
            },
        },
    )
    assert with_ns.personal_channel("42") == "personal:#42"
    assert with_ns.resolve(with_ns.personal_channel("42")).namespace == "personal"
    custom = make_resolver(tmp_path, CUSTOM_SYMBOLS)
    assert custom.personal_channel("u1") == "team/@u1"
    assert custom.resolve("team/@u1").allowed_users == ("u1",)


def test_results_are_cached_per_side(resolver: ChannelResolver) -> None:
    a = resolver.resolve("chat:x")
    assert resolver.resolve("chat:x") is a
    b = resolver.resolve("chat:x", client_side=False)
    assert b == a and b is not a
    # Cached errors are raised afresh every time.
    assert error_code(resolver, "nope:x") == 102
    assert error_code(resolver, "nope:x") == 102


def test_cache_is_bounded(tmp_path: Path) -> None:
    r = make_resolver(tmp_path, BASIC, cache_size=5)
    first = r.resolve("c0")
    for i in range(1, 20):
        r.resolve(f"c{i}")
        assert len(r._cache) <= 5
    again = r.resolve("c0")
    assert again == first and again is not first
