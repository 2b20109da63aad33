"""The map methods of the server API end to end: a real server (memory engine and memory map
broker, then Redis for both), over HTTP (`/api/<method>`, `/api/batch`, the legacy `/api`
stream, transport error mode) and gRPC (CentrifugoApi.Map*, a Batch carrying map commands),
with clients generated from proto/api.proto.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import grpc
import pytest

from app.api.gen import api_pb2 as pb

from .helpers import ServerHandle, free_port
from .test_api_http import post
from .test_grpc import api_client

CONFIG: dict[str, Any] = {
    "channel": {
        "namespaces": [
            {"name": "stream", "history_size": 10, "history_ttl": "60s"},
            {"name": "kv", "subscription_type": "map", "map": {"mode": "persistent"}},
            {
                "name": "bin",
                "subscription_type": "map",
                "publication_data_format": "binary",
                "map": {"mode": "recoverable", "key_ttl": "60s"},
            },
        ],
    },
}


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    grpc_api = {"enabled": True, "address": "127.0.0.1", "port": free_port()}
    return server_factory({**CONFIG, "grpc_api": {**grpc_api, "key": secrets.token_hex(8)}})


def channel(ns: str = "kv") -> str:
    return f"{ns}:{secrets.token_hex(4)}"


def test_http_map_methods(server: ServerHandle) -> None:
    ch = channel()
    pub = server.api("map_publish", {"channel": ch, "key": "a", "data": {"n": 1}})["result"]
    assert pub["offset"] == 1 and pub["epoch"] and "suppressed" not in pub
    server.api("map_publish", {"channel": ch, "key": "b", "data": {"n": 2}, "tags": {"t": "1"}})
    again = server.api(
        "map_publish", {"channel": ch, "key": "a", "data": {}, "key_mode": "if_new"}
    )["result"]
    assert (again["suppressed"], again["suppress_reason"]) == (True, "key_exists")

    state = server.api("map_read_state", {"channel": ch, "limit": -1})["result"]
    assert [(e["key"], e["data"]) for e in state["entries"]] == [("a", {"n": 1}), ("b", {"n": 2})]
    assert state["entries"][1]["tags"] == {"t": "1"}
    assert (state["offset"], state["epoch"]) == (2, pub["epoch"])
    assert server.api("map_stats", {"channel": ch}) == {"result": {"num_keys": 2}}

    removed = server.api("map_remove", {"channel": ch, "key": "a"})["result"]
    assert removed["offset"] == 3
    stream = server.api(
        "map_read_stream",
        {"channel": ch, "since_offset": 2, "since_epoch": pub["epoch"], "limit": 10},
    )["result"]
    assert [(e["key"], e.get("removed", False)) for e in stream["entries"]] == [("a", True)]

    assert server.api("map_clear", {"channel": ch}) == {"result": {}}
    assert server.api("map_stats", {"channel": ch}) == {"result": {}}


def test_http_errors_in_body_and_as_transport_status(server: ServerHandle) -> None:
    not_map = {"channel": channel("stream"), "key": "k", "data": {}}
    assert server.api("map_publish", not_map) == {"error": {"code": 107, "message": "bad request"}}
    unknown = {"channel": "nope:x"}
    assert server.api("map_stats", unknown) == {
        "error": {"code": 102, "message": "unknown channel"}
    }
    headers = {
        "Content-Type": "application/json",
        "X-API-Key": server.api_key,
        "X-Centrifugo-Error-Mode": "transport",
    }
    status, body = post(server, "/map_stats", json.dumps(unknown), headers)
    assert (status, json.loads(body)) == (404, {"code": 102, "message": "unknown channel"})
    stale = {"channel": channel(), "since_offset": 1, "since_epoch": "gone", "limit": 1}
    status, body = post(server, "/map_read_stream", json.dumps(stale), headers)
    assert (status, json.loads(body)["code"]) == (416, 112)
    # A body that does not fit MapPublishRequest is a plain 400, as for every method.
    status, _ = post(server, "/map_publish", json.dumps({"channel": 1}))
    assert status == 400


def test_http_batch_and_legacy_stream(server: ServerHandle) -> None:
    ch = channel()
    commands = [
        {"map_publish": {"channel": ch, "key": "k", "data": {"v": 1}}},
        {"map_read_state": {"channel": ch, "limit": 10}},
        {"map_stats": {"channel": channel("stream")}},
    ]
    replies = server.api("batch", {"commands": commands})["replies"]
    assert replies[0]["map_publish"]["offset"] == 1
    assert replies[1]["map_read_state"]["entries"][0]["data"] == {"v": 1}
    assert replies[2] == {"error": {"code": 107, "message": "bad request"}}

    # The legacy `POST /api` stream: MethodType 37 is map_stats, "map_publish" its name.
    lines = [
        json.dumps({"id": 1, "method": "map_publish", "params": {"channel": ch, "key": "j"}}),
        json.dumps({"id": 2, "method": 37, "params": {"channel": ch}}),
    ]
    status, body = post(server, "", "\n".join(lines))
    assert status == 200
    answers = [json.loads(line) for line in body.splitlines()]
    assert answers[0]["id"] == 1 and answers[0]["result"]["offset"] == 2
    assert answers[1] == {"id": 2, "result": {"num_keys": 2}}


async def test_grpc_map_methods(server: ServerHandle) -> None:
    ch = channel("bin")
    async with api_client(server) as api:
        pub = await api.MapPublish(pb.MapPublishRequest(channel=ch, key="k", data=b"\x00\x01"))
        assert not pub.HasField("error") and pub.result.offset == 1 and pub.result.epoch
        state = await api.MapReadState(pb.MapReadStateRequest(channel=ch, limit=-1))
        (entry,) = state.result.entries
        assert (entry.key, entry.data, entry.offset) == ("k", b"\x00\x01", 1)
        assert entry.time > 0
        stats = await api.MapStats(pb.MapStatsRequest(channel=ch))
        assert stats.result.num_keys == 1
        stream = await api.MapReadStream(pb.MapReadStreamRequest(channel=ch, limit=-1))
        assert [e.key for e in stream.result.entries] == ["k"]
        removed = await api.MapRemove(pb.MapRemoveRequest(channel=ch, key="missing"))
        assert (removed.result.suppressed, removed.result.suppress_reason) == (
            True,
            "key_not_found",
        )
        assert (await api.MapClear(pb.MapClearRequest(channel=ch))).HasField("result")

        bad = await api.MapPublish(pb.MapPublishRequest(channel=ch, data=b"x"))
        assert (bad.error.code, bad.error.message) == (107, "bad request")
        batch = await api.Batch(
            pb.BatchRequest(
                commands=[
                    pb.Command(map_publish=pb.MapPublishRequest(channel=ch, key="b", data=b"1")),
                    pb.Command(map_stats=pb.MapStatsRequest(channel="nope:x")),
                ]
            )
        )
        assert batch.replies[0].map_publish.offset > 0
        assert batch.replies[1].error.code == 102
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await api.MapStats(
                pb.MapStatsRequest(channel="nope:x"),
                metadata=(("x-centrifugo-error-mode", "transport"),),
            )
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
