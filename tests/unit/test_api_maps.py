"""The server API's map methods (app/api/maps.py) against a real Node on the memory engine and
the memory map broker: request shapes from api.proto, results as Go's encoding/json writes
them (zero fields left out), errors as Centrifugo's internal/api handlers answer them.

Params go in as the HTTP API gives them (a JSON body decoded by app/api/request.py).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.api.executor import ApiExecutor
from app.api.grpc import GrpcExecutor
from app.errors import ClientError
from app.node import Node
from tests.support.node import memory_node
from tests.unit.test_api_executor import JsonApi, assert_decode_error, code_of, wire

CONFIG: dict[str, Any] = {
    "channel": {
        "namespaces": [
            {"name": "stream", "history_size": 10, "history_ttl": "60s"},
            {"name": "kv", "subscription_type": "map", "map": {"mode": "persistent"}},
            {
                "name": "small",
                "subscription_type": "map",
                "map": {"mode": "recoverable", "key_ttl": "60s", "stream_size": 2},
            },
            {
                "name": "eph",
                "subscription_type": "map",
                "map": {"mode": "ephemeral", "key_ttl": "60s"},
            },
            {
                "name": "who",
                "subscription_type": "map_clients",
                "map": {"mode": "ephemeral", "key_ttl": "60s"},
            },
        ],
    },
}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with memory_node(tmp_path, CONFIG) as n:
        yield n


@pytest.fixture
def api(node: Node) -> JsonApi:
    return JsonApi(ApiExecutor(node))


async def call(api: JsonApi, method: str, params: dict[str, Any]) -> Any:
    return wire(await api.call(method, params))


# --------------------------------------------------------------------------------------------
# writes and reads


async def test_publish_then_read_state_and_stream(api: JsonApi) -> None:
    r1 = await call(api, "map_publish", {"channel": "kv:a", "key": "k1", "data": {"v": 1}})
    assert r1["offset"] == 1 and len(r1["epoch"]) > 0 and set(r1) == {"offset", "epoch"}
    r2 = await call(
        api,
        "map_publish",
        {"channel": "kv:a", "key": "k2", "data": {"v": 2}, "tags": {"t": "x"}},
    )
    assert (r2["offset"], r2["epoch"]) == (2, r1["epoch"])

    # limit 0 (the default) reads the position only, as centrifuge's ReadState does.
    top = await call(api, "map_read_state", {"channel": "kv:a"})
    assert top == {"offset": 2, "epoch": r1["epoch"]}
    state = await call(api, "map_read_state", {"channel": "kv:a", "limit": -1})
    assert state["offset"] == 2 and state["epoch"] == r1["epoch"]
    assert "cursor" not in state  # the last page
    entries = state["entries"]
    assert [e["key"] for e in entries] == ["k1", "k2"]
    assert entries[0]["data"] == {"v": 1} and entries[0]["offset"] == 1
    assert entries[1]["tags"] == {"t": "x"} and "removed" not in entries[1]

    page = await call(api, "map_read_state", {"channel": "kv:a", "limit": 1})
    assert [e["key"] for e in page["entries"]] == ["k1"] and page["cursor"]
    rest = await call(
        api, "map_read_state", {"channel": "kv:a", "cursor": page["cursor"], "limit": -1}
    )
    assert [e["key"] for e in rest["entries"]] == ["k2"]
    one = await call(api, "map_read_state", {"channel": "kv:a", "key": "k2"})
    assert [e["key"] for e in one["entries"]] == ["k2"]

    stream = await call(api, "map_read_stream", {"channel": "kv:a", "limit": -1})
    assert [(e["key"], e["offset"]) for e in stream["entries"]] == [("k1", 1), ("k2", 2)]
    since = await call(
        api,
        "map_read_stream",
        {"channel": "kv:a", "since_offset": 1, "since_epoch": r1["epoch"], "limit": -1},
    )
    assert [e["key"] for e in since["entries"]] == ["k2"]
    back = await call(api, "map_read_stream", {"channel": "kv:a", "limit": 1, "reverse": True})
    assert [e["key"] for e in back["entries"]] == ["k2"]

    assert await call(api, "map_stats", {"channel": "kv:a"}) == {"num_keys": 2}


async def test_remove_appears_in_the_stream_and_clear_empties_the_channel(api: JsonApi) -> None:
    await call(api, "map_publish", {"channel": "kv:r", "key": "k", "data": {"v": 1}})
    removed = await call(api, "map_remove", {"channel": "kv:r", "key": "k"})
    assert removed["offset"] == 2 and "suppressed" not in removed
    stream = await call(api, "map_read_stream", {"channel": "kv:r", "limit": -1})
    last = stream["entries"][-1]
    assert (last["key"], last["removed"], last["offset"]) == ("k", True, 2)
    assert "data" not in last
    assert await call(api, "map_stats", {"channel": "kv:r"}) == {}  # num_keys 0 is omitted

    await call(api, "map_publish", {"channel": "kv:r", "key": "k", "data": {"v": 2}})
    assert await call(api, "map_clear", {"channel": "kv:r"}) == {}
    assert await call(api, "map_stats", {"channel": "kv:r"}) == {}
    state = await call(api, "map_read_state", {"channel": "kv:r", "limit": -1})
    assert "entries" not in state


async def test_ephemeral_channel_answers_without_offsets(api: JsonApi) -> None:
    r = await call(api, "map_publish", {"channel": "eph:a", "key": "k", "data": {"v": 1}})
    assert "offset" not in r
    state = await call(api, "map_read_state", {"channel": "eph:a", "limit": -1})
    assert [e["key"] for e in state["entries"]] == ["k"] and "offset" not in state["entries"][0]


async def test_map_presence_namespaces_are_maps_for_the_api(api: JsonApi) -> None:
    await call(api, "map_publish", {"channel": "who:room", "key": "c1", "data": {"u": "1"}})
    assert await call(api, "map_stats", {"channel": "who:room"}) == {"num_keys": 1}


async def test_b64data_is_stored_as_its_bytes(node: Node) -> None:
    # Over gRPC the stored bytes come back as they are (a JSON answer could not carry them).
    grpc_api = GrpcExecutor(node)
    raw = b"\x00\xffbin"
    params = {"channel": "kv:b", "key": "k", "b64data": base64.b64encode(raw).decode()}
    await grpc_api.call("map_publish", params)
    state = await grpc_api.call("map_read_state", {"channel": "kv:b", "limit": -1})
    (entry,) = state["entries"]
    assert (entry["key"], entry["data"], entry["offset"]) == ("k", raw, 1)
    assert entry["time"] > 0  # unix ms of the write


# --------------------------------------------------------------------------------------------
# suppressed writes: a result, not an error


async def test_key_mode_if_new_on_an_existing_key_is_suppressed(api: JsonApi) -> None:
    first = await call(
        api, "map_publish", {"channel": "kv:m", "key": "k", "data": {}, "key_mode": "if_new"}
    )
    again = await call(
        api, "map_publish", {"channel": "kv:m", "key": "k", "data": {}, "key_mode": "if_new"}
    )
    assert "suppressed" not in first
    assert again["suppressed"] is True and again["suppress_reason"] == "key_exists"
    missing = await call(
        api, "map_publish", {"channel": "kv:m", "key": "x", "data": {}, "key_mode": "if_exists"}
    )
    assert missing["suppress_reason"] == "key_not_found"


async def test_remove_of_a_missing_key_and_repeated_idempotency_key(api: JsonApi) -> None:
    gone = await call(api, "map_remove", {"channel": "kv:i", "key": "nope"})
    assert (gone["suppressed"], gone["suppress_reason"]) == (True, "key_not_found")
    params = {"channel": "kv:i", "key": "k", "data": {"v": 1}, "idempotency_key": "once"}
    first = await call(api, "map_publish", params)
    second = await call(api, "map_publish", {**params, "data": {"v": 2}})
    assert "suppressed" not in first
    assert second["suppress_reason"] == "idempotency"
    state = await call(api, "map_read_state", {"channel": "kv:i", "limit": -1})
    assert state["entries"][0]["data"] == {"v": 1}


async def test_older_version_is_suppressed(api: JsonApi) -> None:
    base = {"channel": "kv:v", "key": "k", "data": {}}
    await call(api, "map_publish", {**base, "version": 5})
    old = await call(api, "map_publish", {**base, "version": 4})
    assert old["suppress_reason"] == "version"


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("map_publish", {"key": "k", "data": {}}, 107),
        ("map_publish", {"channel": "kv:a", "data": {}}, 107),
        ("map_remove", {"channel": "kv:a"}, 107),
        ("map_read_state", {}, 107),
        ("map_read_stream", {}, 107),
        ("map_stats", {}, 107),
        ("map_clear", {}, 107),
        ("map_publish", {"channel": "nope:a", "key": "k", "data": {}}, 102),
        ("map_read_state", {"channel": "nope:a"}, 102),
        ("map_stats", {"channel": "nope:a"}, 102),
        # A stream namespace, and the default one: not map types.
        ("map_publish", {"channel": "stream:a", "key": "k", "data": {}}, 107),
        ("map_read_stream", {"channel": "plain"}, 107),
        ("map_clear", {"channel": "stream:a"}, 107),
        ("map_publish", {"channel": "kv:a", "key": "k", "data": {}, "key_mode": "upsert"}, 107),
        ("map_publish", {"channel": "kv:a", "key": "k", "b64data": "%%%"}, 107),
        ("map_read_state", {"channel": "kv:a", "revision_epoch": "other"}, 112),
        ("map_read_stream", {"channel": "kv:a", "since_offset": 1, "since_epoch": "other"}, 112),
    ],
)
async def test_errors_are_centrifugos(
    api: JsonApi, method: str, params: dict[str, Any], code: int
) -> None:
    await call(api, "map_publish", {"channel": "kv:a", "key": "seed", "data": {}})
    assert await code_of(api, method, params) == code


async def test_a_non_map_namespace_is_one_warning_line(api: JsonApi, caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="centrifugo.api"):
        assert await code_of(api, "map_stats", {"channel": "stream:a"}) == 107
    assert [r.getMessage() for r in caplog.records] == [
        "map_stats called on non-map namespace (channel 'stream:a', subscription_type '')"
    ]


async def test_catching_up_past_the_trimmed_stream_is_unrecoverable(api: JsonApi) -> None:
    epoch = ""
    for i in range(5):  # stream_size 2: offsets 1..3 are trimmed away
        r = await call(api, "map_publish", {"channel": "small:a", "key": f"k{i}", "data": {}})
        epoch = r["epoch"]
    since = {"channel": "small:a", "since_offset": 1, "since_epoch": epoch, "limit": -1}
    assert await code_of(api, "map_read_stream", since) == 112
    recent = await call(api, "map_read_stream", {**since, "since_offset": 3})
    assert [e["offset"] for e in recent["entries"]] == [4, 5]


async def test_wrong_types_are_decode_errors(api: JsonApi) -> None:
    await assert_decode_error(api, "map_publish", {"channel": "kv:a", "key": 1})
    await assert_decode_error(api, "map_read_state", {"channel": "kv:a", "limit": "10"})
    await assert_decode_error(api, "map_read_stream", {"channel": "kv:a", "since_offset": -1})
    await assert_decode_error(api, "map_publish", {"channel": "kv:a", "key": "k", "score": "1"})


async def test_without_a_map_broker_the_api_answers_internal_error(
    tmp_path: Path, caplog: Any
) -> None:
    async with memory_node(tmp_path, CONFIG) as node:
        node.map_broker = None  # as a Node built without one
        api = JsonApi(ApiExecutor(node))
        with caplog.at_level(logging.ERROR, logger="centrifugo.api"):
            assert await code_of(api, "map_stats", {"channel": "kv:a"}) == 100
        assert len(caplog.records) == 1


# --------------------------------------------------------------------------------------------
# batch


async def test_map_commands_in_a_batch(api: JsonApi) -> None:
    result = await api.call(
        "batch",
        {
            "commands": [
                {"map_publish": {"channel": "kv:bt", "key": "a", "data": {"x": 1}}},
                {"map_stats": {"channel": "kv:bt"}},
                {"map_read_state": {"channel": "stream:bt"}},
                {"map_read_state": {"channel": "kv:bt", "limit": 10}},
                {"map_clear": {"channel": "kv:bt"}},
            ]
        },
    )
    replies = wire(result)["replies"]
    assert replies[0]["map_publish"]["offset"] == 1
    assert replies[1] == {"map_stats": {"num_keys": 1}}
    assert replies[2] == {"error": {"code": 107, "message": "bad request"}}
    assert replies[3]["map_read_state"]["entries"][0]["data"] == {"x": 1}
    assert replies[4] == {"map_clear": {}}


async def test_a_failed_map_call_raises_client_error_not_a_traceback(api: JsonApi) -> None:
    with pytest.raises(ClientError) as e:
        await api.call("map_read_state", {"channel": "kv:a", "revision_epoch": "x"})
    assert (e.value.code, e.value.message) == (112, "unrecoverable position")
