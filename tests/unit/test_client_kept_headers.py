"""What a connection keeps of its request's headers (app/client/connection.py kept_headers):
only the names some proxy forwards or the connect reads, matched without case."""

from __future__ import annotations

from pathlib import Path

from multidict import CIMultiDict

from app.client.connection import kept_headers
from tests.support.node import memory_node


def test_only_the_named_headers_are_kept_without_case() -> None:
    request = CIMultiDict(
        [("Host", "h"), ("X-Token", "a"), ("x-token", "b"), ("Cookie", "c"), ("X-User", "u")]
    )
    kept = kept_headers(request, frozenset({"x-token", "x-user"}))
    assert list(kept.items()) == [("X-Token", "a"), ("x-token", "b"), ("X-User", "u")]
    assert kept.get("X-USER") == "u"  # read without case, as the connect reads it


def test_nothing_is_kept_when_nothing_reads_headers() -> None:
    request = CIMultiDict([("Host", "h"), ("Cookie", "c")])
    assert not kept_headers(request, frozenset())
    assert not kept_headers(request, frozenset({"x-token"}))  # named, but not sent
    assert not kept_headers(None, frozenset({"x-token"}))


async def test_a_node_keeps_what_its_proxies_forward_and_the_user_header(tmp_path: Path) -> None:
    proxy = {"endpoint": "http://127.0.0.1:9/connect", "http_headers": ["X-Token", "Authorization"]}
    config = {
        "client": {
            "user_id_http_header": "X-User",
            "proxy": {"connect": {"enabled": True, **proxy}},
        },
        "proxies": [
            {"name": "other", "endpoint": "http://127.0.0.1:9/rpc", "http_headers": ["X-Trace"]}
        ],
    }
    async with memory_node(tmp_path, config) as node:
        assert node.kept_headers == {"x-token", "authorization", "x-user", "x-trace"}
    async with memory_node(tmp_path, {}) as node:
        assert node.kept_headers == frozenset()
