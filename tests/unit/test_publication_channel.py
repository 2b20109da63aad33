"""Node.publication_channel: the one publication-format rule of every publish (server API and
client alike), as Centrifugo's ChannelOptions (namespace format, else the global
channel.publication_data_format) followed by ValidatePublicationData."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.errors import ClientError
from app.node import Node
from tests.support.node import memory_node

CONFIG: dict[str, Any] = {
    "channel": {
        # The global default: namespaces without their own format take it, client side too.
        "publication_data_format": "json_object",
        "namespaces": [
            {"name": "js", "publication_data_format": "json"},
            {"name": "bin", "publication_data_format": "binary"},
            {"name": "obj", "publication_data_format": "json_object"},
            {"name": "plain"},
        ],
    },
}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with memory_node(tmp_path, CONFIG) as n:
        yield n


def refused(node: Node, channel: str, data: bytes, **kw: Any) -> int:
    with pytest.raises(ClientError) as e:
        node.publication_channel(channel, data, **kw)
    return e.value.code


@pytest.mark.parametrize("client_side", [False, True])
async def test_each_format_accepts_and_refuses_as_centrifugo(node: Node, client_side: bool) -> None:
    ok = [
        ("js:a", b'"text"'),
        ("js:a", b" [1, 2] "),
        ("bin:a", b""),
        ("bin:a", b"\x00\xff"),
        ("obj:a", b'{"a":1}'),
        ("obj:a", b' \n{"a":1}\t'),  # Go's IsValidJSONObject skips blanks at both ends
        ("plain:a", b'{"a":1}'),  # the global json_object default
        ("top", b"{}"),
    ]
    for channel, data in ok:
        chinfo = node.publication_channel(channel, data, client_side=client_side)
        assert chinfo.channel == channel
    bad = [
        ("js:a", b""),
        ("js:a", b"not json"),
        ("js:a", b"\xff"),
        ("obj:a", b"[1]"),
        ("obj:a", b"{broken"),
        ("plain:a", b'"text"'),  # the global default applies to the client path as well
        ("top", b"1"),
    ]
    for channel, data in bad:
        assert refused(node, channel, data, client_side=client_side) == 107, (channel, data)


async def test_unknown_namespace_is_102_before_the_data_is_looked_at(node: Node) -> None:
    assert refused(node, "nope:a", b"") == 102


async def test_known_json_skips_validation_but_not_the_object_rule(node: Node) -> None:
    # A span of a decoded JSON document is valid already; json_object still wants "{".
    assert node.publication_channel("js:a", b"[1]", known_json=True).channel == "js:a"
    assert refused(node, "obj:a", b"[1]", known_json=True) == 107


async def test_publish_without_a_resolved_channel_runs_the_rule(node: Node) -> None:
    with pytest.raises(ClientError) as e:
        await node.publish("obj:a", b"[1]")
    assert e.value.code == 107
    chinfo = node.publication_channel("obj:a", b"{}")
    result = await node.publish("obj:a", b"{}", chinfo=chinfo)
    assert result.position.offset == 0  # no history in this namespace
