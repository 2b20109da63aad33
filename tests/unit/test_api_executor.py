"""ApiExecutor against a real Node with the memory engine (research §2.2, §9 item 10).

Params go in as the HTTP API gives them: encoded to a JSON body and decoded by
app/api/request.py, so payloads reach the executor as the bytes of that body.
Every result shape is also decoded with the `cent` SDK's own response models, so a shape
that `cent` cannot parse fails here.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cent.dto as cent_dto
import msgspec
import orjson
import pytest

from app.api import decode as api_decode
from app.api import request
from app.api.batch import BATCH_CHUNK
from app.api.decode import batch_item
from app.api.errors import ApiDecodeError
from app.api.executor import ApiExecutor
from app.api.http import batch_command, batch_decoder
from app.errors import ClientError
from app.models import ClientInfo
from app.node import Node
from tests.support.node import memory_node
from tests.support.payloads import OPAQUE

HISTORY = {"history_size": 10, "history_ttl": "300s"}

CONFIG: dict[str, Any] = {
    "channel": {
        "without_namespace": {"presence": True, **HISTORY},
        "namespaces": [
            {"name": "plain"},
            {"name": "obj", "publication_data_format": "json_object", **HISTORY},
            {"name": "js", "publication_data_format": "json", **HISTORY},
            {"name": "bin", "publication_data_format": "binary", **HISTORY},
            {"name": "dl", "delta_publish": True, **HISTORY},
        ],
    },
    "http_api": {"key": "secret"},
}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with memory_node(tmp_path, CONFIG) as n:
        yield n


def json_body(params: Any) -> bytes:
    try:
        return orjson.dumps(params)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()


class JsonApi:
    """The executor driven as the HTTP API drives it: params sent as a JSON body (or as the
    exact bytes given), decoded against the method's request message, then run. A body that
    does not decode is an ApiDecodeError, as the HTTP layer answers both with 400."""

    def __init__(self, executor: ApiExecutor) -> None:
        self.executor = executor

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        if method not in request.REQUEST_MESSAGES:
            return await self.executor.call(method, None)
        body = params if isinstance(params, bytes) else json_body(params)
        try:
            if method == "batch":
                # Split into command spans, run chunk by chunk (as POST /api/batch does).
                spans, parallel = request.batch(body)
                chunks = self.executor.batch(spans, batch_command, parallel)
                return {"replies": [reply async for chunk in chunks for reply in chunk]}
            decoded = request.params(method, body)
        except request.BadBody as e:
            raise ApiDecodeError(str(e)) from None
        return await self.executor.call(method, decoded)


@pytest.fixture
def api(node: Node) -> JsonApi:
    return JsonApi(ApiExecutor(node))


def wire(result: dict[str, Any]) -> Any:
    """What goes on the wire: raw payload fragments spliced, then parsed back."""
    return orjson.loads(orjson.dumps(result))


def cent_parse(request: Any, result: dict[str, Any]) -> Any:
    """Decode our result with cent's response model for `request`."""
    if request.api_method == "batch":
        body = orjson.dumps(result)
    else:
        body = orjson.dumps({"result": result})
    return request.parse_response(body.decode()).result


async def code_of(api: JsonApi, method: str, params: Any) -> int:
    with pytest.raises(ClientError) as exc:
        await api.call(method, params)
    assert not isinstance(exc.value, ApiDecodeError), "expected an API error, got a decode error"
    return exc.value.code


async def assert_decode_error(api: JsonApi, method: str, params: Any) -> None:
    with pytest.raises(ApiDecodeError) as exc:
        await api.call(method, params)
    assert exc.value.code == 107


# --------------------------------------------------------------------------------------------
# publish


async def test_publish_with_history_returns_offset_and_epoch(api: JsonApi) -> None:
    r1 = await api.call("publish", {"channel": "news", "data": {"x": 1}})
    r2 = await api.call("publish", {"channel": "news", "data": {"x": 2}})
    assert r1["offset"] == 1 and r2["offset"] == 2
    assert len(r1["epoch"]) == 8 and r1["epoch"] == r2["epoch"]
    parsed = cent_parse(cent_dto.PublishRequest(channel="news", data={"x": 2}), r2)
    assert (parsed.offset, parsed.epoch) == (2, r2["epoch"])


async def test_publish_without_history_omits_zero_values(api: JsonApi) -> None:
    assert await api.call("publish", {"channel": "plain:a", "data": "hi"}) == {}
    # skip_history on a channel with history: nothing stored, so offset 0 / epoch "" omitted
    assert await api.call("publish", {"channel": "news", "data": 1, "skip_history": True}) == {}
    hist = await api.call("history", {"channel": "news", "limit": -1})
    assert hist["publications"] == [] and hist["offset"] == 0
    assert cent_parse(cent_dto.PublishRequest(channel="plain:a", data=1), {}).offset == 0


@pytest.mark.parametrize(
    "params",
    [
        {"channel": "news"},  # data absent
        {"channel": "news", "data": None},  # null counts as absent
        {"data": {"x": 1}},  # channel absent
        {"channel": "", "data": 1},
        {"channel": "news", "b64data": "not base64!"},
        {"channel": "news", "b64data": "YWJj="},  # bad padding
        {"channel": "news", "b64data": ""},  # empty b64data and no data
    ],
)
async def test_publish_bad_request(api: JsonApi, params: dict[str, Any]) -> None:
    assert await code_of(api, "publish", params) == 107


@pytest.mark.parametrize(
    "params",
    [
        [1, 2],
        "news",
        {"channel": 5, "data": 1},
        {"channel": ["news"], "data": 1},
        {"channel": "news", "data": 1, "tags": ["a"]},
        {"channel": "news", "data": 1, "tags": {"a": 1}},
        {"channel": "news", "data": 1, "skip_history": "yes"},
        {"channel": "news", "data": 1, "skip_history": 1},
        {"channel": "news", "data": 1, "idempotency_key": 7},
        {"channel": "news", "data": 1, "b64data": 7},
        {"channel": "news", "data": 1, "delta": "true"},
        {"channel": "news", "data": 1, "version": -1},
    ],
)
async def test_publish_wrong_types_are_decode_errors(api: JsonApi, params: dict[str, Any]) -> None:
    await assert_decode_error(api, "publish", params)


async def test_publish_unknown_namespace(api: JsonApi) -> None:
    assert await code_of(api, "publish", {"channel": "nope:x", "data": 1}) == 102
    # Centrifugo resolves the namespace before it checks the data.
    assert await code_of(api, "publish", {"channel": "nope:x"}) == 102


async def test_publish_error_messages_are_api_messages(api: JsonApi) -> None:
    with pytest.raises(ClientError) as exc:
        await api.call("nope", {})
    assert (exc.value.code, exc.value.message) == (104, "not found")
    with pytest.raises(ClientError) as exc:
        await api.call("publish", {"channel": "nope:x", "data": 1})
    assert (exc.value.code, exc.value.message) == (102, "unknown channel")


async def test_publish_data_is_stored_byte_exact(api: JsonApi, node: Node) -> None:
    data = {"b": 1, "a": [1, 2.5, "ü", None, True], "nested": {"k": "v"}}
    await api.call("publish", {"channel": "news", "data": data, "tags": {"t": "1"}})
    hist = await node.history("news", limit=-1)
    assert hist.publications[0].data == orjson.dumps(data)
    assert hist.publications[0].tags == {"t": "1"}


EXACT = list(OPAQUE.values())


@pytest.mark.parametrize("data", EXACT)
async def test_publish_data_is_kept_as_the_bytes_received(
    api: JsonApi, node: Node, data: bytes
) -> None:
    await api.call("publish", b'{"channel":"news","data":' + data + b"}")
    await api.call("broadcast", b'{"channels":["js:a"],"data":' + data + b"}")
    batch = b'{"commands":[{"publish":{"channel":"dl:b","data":' + data + b"}}]}"
    await api.call("batch", batch)
    for channel in ("news", "js:a", "dl:b"):
        assert (await node.history(channel, limit=-1)).publications[0].data == data
    # and the API's own history answer splices them unchanged
    body = orjson.dumps(await api.call("history", {"channel": "news", "limit": -1}))
    assert b'"data":' + data + b',"offset":1' in body


async def test_publish_big_integer_data(api: JsonApi, node: Node) -> None:
    await api.call("publish", {"channel": "news", "data": {"n": 2**70}})
    hist = await api.call("history", {"channel": "news", "limit": 1})
    assert b'"data":{"n":1180591620717411303424}' in orjson.dumps(hist)


async def test_subscribe_and_refresh_payloads_are_raw(api: JsonApi) -> None:
    # null payloads are absent; wrong-typed payload fields cannot occur from a JSON body
    for params in (
        b'{"user":"u","channel":"news","data":1E2,"info":{"a":1,"a":2}}',
        b'{"user":"u","channel":"news","data":null,"info":null}',
    ):
        assert await api.call("subscribe", params) == {}
    assert await api.call("refresh", b'{"user":"u","info":18446744073709551616}') == {}


async def test_nesting_bounds(api: JsonApi, node: Node) -> None:
    deep = b"[" * 900 + b"]" * 900
    await api.call("publish", b'{"channel":"news","data":' + deep + b"}")
    assert (await node.history("news", limit=-1)).publications[0].data == deep
    too_deep = b"[" * 2000 + b"]" * 2000
    await assert_decode_error(api, "publish", b'{"channel":"news","data":' + too_deep + b"}")


async def test_publish_b64data(api: JsonApi, node: Node) -> None:
    raw = b'{"from":"b64"}'
    res = await api.call(
        "publish", {"channel": "news", "b64data": base64.b64encode(raw).decode(), "data": {"x": 1}}
    )
    assert res["offset"] == 1
    hist = await node.history("news", limit=-1)
    assert hist.publications[0].data == raw  # b64data wins over data


async def test_publication_data_format(api: JsonApi) -> None:
    # json_object: only objects
    assert (await api.call("publish", {"channel": "obj:a", "data": {"k": 1}}))["offset"] == 1
    assert await code_of(api, "publish", {"channel": "obj:a", "data": [1]}) == 107
    assert await code_of(api, "publish", {"channel": "obj:a", "data": "s"}) == 107
    b64 = base64.b64encode
    assert (
        await code_of(api, "publish", {"channel": "obj:a", "b64data": b64(b"[1]").decode()}) == 107
    )
    ok = await api.call("publish", {"channel": "obj:a", "b64data": b64(b' {"a":1}').decode()})
    assert ok["offset"] == 2
    # json: any JSON, binary rejected
    assert (
        await code_of(api, "publish", {"channel": "js:a", "b64data": b64(b"\xff\x00").decode()})
        == 107
    )
    assert (await api.call("publish", {"channel": "js:a", "b64data": b64(b"[1]").decode()}))[
        "offset"
    ] == 1
    # binary: empty data allowed
    assert (await api.call("publish", {"channel": "bin:a"}))["offset"] == 1
    assert (await api.call("publish", {"channel": "bin:a", "b64data": b64(b"\xff").decode()}))[
        "offset"
    ] == 2
    # default: anything non-empty
    assert (await api.call("publish", {"channel": "news", "b64data": b64(b"\xff").decode()}))[
        "offset"
    ] == 1


async def test_publish_idempotency_key(api: JsonApi, node: Node) -> None:
    p = {"channel": "news", "data": {"x": 1}, "idempotency_key": "k1"}
    r1 = await api.call("publish", p)
    r2 = await api.call("publish", p)
    assert r1 == r2 == {"offset": 1, "epoch": r1["epoch"]}
    assert len((await node.history("news", limit=-1)).publications) == 1


async def test_publish_delta_flag(api: JsonApi, node: Node) -> None:
    await api.call("publish", {"channel": "news", "data": 1, "delta": True})
    await api.call("publish", {"channel": "news", "data": 2})
    await api.call("publish", {"channel": "dl:a", "data": 3})  # namespace delta_publish
    # The publisher's "may use delta" is kept with the stored publication for the hub's
    # fan-out; history readers never see it (a stored publication is not a patch).
    assert stored_delta_flags(node, "news") == [True, False]
    assert stored_delta_flags(node, "dl:a") == [True]
    assert [p.delta for p in (await node.history("news", limit=-1)).publications] == [False] * 2
    # A batch's publications take the namespace's delta_publish too.
    batch = {"commands": [{"publish": {"channel": "dl:b", "data": 4}}]}
    await api.call("batch", batch)
    assert stored_delta_flags(node, "dl:b") == [True]


def stored_delta_flags(node: Node, channel: str) -> list[bool]:
    """The delta flag of each publication as the memory engine stores it."""
    return [p.delta for p in node.broker._streams[channel].items]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# broadcast


async def test_broadcast_per_channel_responses(api: JsonApi) -> None:
    params = {"channels": ["news", "plain:b", "", "nope:c", "obj:d"], "data": [1]}
    res = await api.call("broadcast", params)
    responses = res["responses"]
    assert len(responses) == 5
    assert responses[0]["result"]["offset"] == 1
    assert responses[1] == {"result": {}}
    assert responses[2] == {"error": {"code": 107, "message": "bad request"}}
    assert responses[3] == {"error": {"code": 102, "message": "unknown channel"}}
    assert responses[4] == {"error": {"code": 107, "message": "bad request"}}  # not an object
    parsed = cent_parse(cent_dto.BroadcastRequest(channels=params["channels"], data=[1]), res)
    assert parsed.responses[0].result.offset == 1
    assert parsed.responses[3].error.code == 102


@pytest.mark.parametrize(
    "params,code",
    [
        ({"data": 1}, 107),
        ({"channels": [], "data": 1}, 107),
        ({"channels": ["news"], "b64data": "!!"}, 107),
    ],
)
async def test_broadcast_bad_request(api: JsonApi, params: dict[str, Any], code: int) -> None:
    assert await code_of(api, "broadcast", params) == code


@pytest.mark.parametrize(
    "params",
    [{"channels": "news", "data": 1}, {"channels": ["news", 1], "data": 1}],
)
async def test_broadcast_wrong_types(api: JsonApi, params: dict[str, Any]) -> None:
    await assert_decode_error(api, "broadcast", params)


async def test_broadcast_missing_data_errors_per_channel(api: JsonApi) -> None:
    res = await api.call("broadcast", {"channels": ["news", "bin:x"]})
    assert res["responses"][0]["error"]["code"] == 107
    assert res["responses"][1]["result"]["offset"] == 1


# --------------------------------------------------------------------------------------------
# history


async def publish_n(api: JsonApi, channel: str, n: int) -> str:
    epoch = ""
    for i in range(1, n + 1):
        epoch = (await api.call("publish", {"channel": channel, "data": {"i": i}}))["epoch"]
    return epoch


async def test_history_without_limit_returns_position_only(api: JsonApi) -> None:
    epoch = await publish_n(api, "news", 3)
    res = await api.call("history", {"channel": "news"})
    assert res == {"publications": [], "offset": 3, "epoch": epoch}
    parsed = cent_parse(cent_dto.HistoryRequest(channel="news"), res)
    assert parsed.publications == [] and parsed.offset == 3


async def test_history_empty_channel_keeps_all_keys(api: JsonApi) -> None:
    res = wire(await api.call("history", {"channel": "fresh", "limit": 10}))
    assert set(res) == {"publications", "offset", "epoch"}
    assert res["publications"] == [] and res["offset"] == 0 and len(res["epoch"]) == 8


async def test_history_limits_since_and_reverse(api: JsonApi) -> None:
    epoch = await publish_n(api, "news", 5)

    async def offsets(**params: Any) -> list[int]:
        res = wire(await api.call("history", {"channel": "news", **params}))
        return [p["offset"] for p in res["publications"]]

    assert await offsets(limit=-1) == [1, 2, 3, 4, 5]
    assert await offsets(limit=2) == [1, 2]
    assert await offsets(limit=2, reverse=True) == [5, 4]
    assert await offsets(limit=-1, since={"offset": 3, "epoch": epoch}) == [4, 5]
    assert await offsets(limit=-1, since={"offset": 3, "epoch": epoch}, reverse=True) == [2, 1]
    assert await offsets(limit=-7) == [1, 2, 3, 4, 5]  # any negative limit means all


async def test_history_publication_shape(api: JsonApi, node: Node) -> None:
    data = {"z": [1, 2], "a": "ü"}
    await api.call("publish", {"channel": "news", "data": data, "tags": {"k": "v"}})
    info = ClientInfo(user="u1", client="c1", conn_info=b'{"name":"x"}')
    await node.publish("news", b'"from client"', info=info)
    res = await api.call("history", {"channel": "news", "limit": -1})
    body = orjson.dumps(res)
    # raw payload bytes are spliced unchanged
    assert orjson.dumps(data) in body
    pubs = wire(res)["publications"]
    assert pubs[0] == {"data": data, "offset": 1, "tags": {"k": "v"}}
    assert pubs[1] == {
        "data": "from client",
        "offset": 2,
        "info": {"user": "u1", "client": "c1", "conn_info": {"name": "x"}},
    }
    parsed = cent_parse(cent_dto.HistoryRequest(channel="news", limit=-1), res)
    assert parsed.publications[1].info.user == "u1"
    assert parsed.publications[0].tags == {"k": "v"}


async def test_history_errors(api: JsonApi) -> None:
    await publish_n(api, "news", 2)
    assert await code_of(api, "history", {"channel": "plain:x", "limit": 1}) == 108
    assert await code_of(api, "history", {"channel": "nope:x"}) == 102
    assert await code_of(api, "history", {}) == 107
    since = {"offset": 1, "epoch": "wrong"}
    assert await code_of(api, "history", {"channel": "news", "limit": 1, "since": since}) == 112


@pytest.mark.parametrize(
    "params",
    [
        {"channel": "news", "limit": 1.5},
        {"channel": "news", "limit": "2"},
        {"channel": "news", "limit": True},
        {"channel": "news", "limit": 2**31},
        {"channel": "news", "since": 5},
        {"channel": "news", "since": {"offset": -1}},
        {"channel": "news", "since": {"offset": 1, "epoch": 5}},
        {"channel": "news", "reverse": "no"},
    ],
)
async def test_history_wrong_types(api: JsonApi, params: dict[str, Any]) -> None:
    await assert_decode_error(api, "history", params)


async def test_history_binary_payload_cannot_be_shown(api: JsonApi) -> None:
    await api.call("publish", {"channel": "bin:x", "b64data": base64.b64encode(b"\xff").decode()})
    assert await code_of(api, "history", {"channel": "bin:x", "limit": -1}) == 100
    # position only is still fine
    assert (await api.call("history", {"channel": "bin:x"}))["offset"] == 1


async def test_history_remove(api: JsonApi) -> None:
    epoch = await publish_n(api, "news", 2)
    assert await api.call("history_remove", {"channel": "news"}) == {}
    res = await api.call("history", {"channel": "news", "limit": -1})
    assert res == {"publications": [], "offset": 2, "epoch": epoch}  # stream meta kept
    assert await code_of(api, "history_remove", {"channel": "plain:x"}) == 108
    assert await code_of(api, "history_remove", {"channel": ""}) == 107
    assert await code_of(api, "history_remove", {"channel": "nope:x"}) == 102
    await assert_decode_error(api, "history_remove", {"channel": 1})
    cent_parse(cent_dto.HistoryRemoveRequest(channel="news"), {})


# --------------------------------------------------------------------------------------------
# presence


async def test_presence_and_stats(api: JsonApi, node: Node) -> None:
    pm = node.presence_manager
    await pm.add_presence("room", "c1", ClientInfo("u1", "c1", conn_info=b'{"a":1}'))
    await pm.add_presence("room", "c2", ClientInfo("u1", "c2", chan_info=b"[true]"))
    await pm.add_presence("room", "c3", ClientInfo("", "c3"))
    res = await api.call("presence", {"channel": "room"})
    assert wire(res) == {
        "presence": {
            "c1": {"user": "u1", "client": "c1", "conn_info": {"a": 1}},
            "c2": {"user": "u1", "client": "c2", "chan_info": [True]},
            "c3": {"user": "", "client": "c3"},
        }
    }
    parsed = cent_parse(cent_dto.PresenceRequest(channel="room"), res)
    assert parsed.presence["c1"].conn_info == {"a": 1}
    stats = await api.call("presence_stats", {"channel": "room"})
    assert stats == {"num_clients": 3, "num_users": 2}
    cent_parse(cent_dto.PresenceStatsRequest(channel="room"), stats)


async def test_presence_empty_shapes(api: JsonApi) -> None:
    assert await api.call("presence", {"channel": "empty"}) == {"presence": {}}
    assert await api.call("presence_stats", {"channel": "empty"}) == {
        "num_clients": 0,
        "num_users": 0,
    }
    cent_parse(cent_dto.PresenceRequest(channel="empty"), {"presence": {}})


@pytest.mark.parametrize("method", ["presence", "presence_stats"])
async def test_presence_errors(api: JsonApi, method: str) -> None:
    assert await code_of(api, method, {"channel": "plain:x"}) == 108
    assert await code_of(api, method, {"channel": "nope:x"}) == 102
    assert await code_of(api, method, {}) == 107
    assert await code_of(api, method, None) == 107
    await assert_decode_error(api, method, {"channel": {"x": 1}})


# --------------------------------------------------------------------------------------------
# user-targeted methods (no connections here: shapes and validation; delivery is e2e)


async def test_user_methods_succeed_with_empty_result(api: JsonApi) -> None:
    override = {"presence": {"value": True}, "join_leave": {}}
    assert (
        await api.call(
            "subscribe",
            {
                "user": "u",
                "channel": "news",
                "info": {"a": 1},
                "data": [1],
                "recover_since": {"offset": 1, "epoch": "abc"},
                "override": override,
                "expire_at": 1,
            },
        )
        == {}
    )
    assert await api.call("unsubscribe", {"user": "u", "channel": "news"}) == {}
    assert await api.call("disconnect", {"user": "u", "disconnect": {"code": 4000}}) == {}
    assert await api.call("disconnect", {"user": "u", "whitelist": ["c1"]}) == {}
    assert await api.call("refresh", {"user": "u", "expired": True, "info": {"x": 1}}) == {}
    cent_parse(cent_dto.SubscribeRequest(user="u", channel="news"), {})
    cent_parse(cent_dto.UnsubscribeRequest(user="u", channel="news"), {})
    cent_parse(cent_dto.DisconnectRequest(user="u"), {})
    cent_parse(cent_dto.RefreshRequest(user="u"), {})


async def test_subscribe_errors(api: JsonApi) -> None:
    assert await code_of(api, "subscribe", {"user": "u"}) == 107
    assert await code_of(api, "subscribe", {"user": "u", "channel": "nope:x"}) == 102
    p = {"user": "u", "channel": "news"}
    assert await code_of(api, "subscribe", {**p, "b64info": "%%"}) == 107
    assert await code_of(api, "subscribe", {**p, "b64data": "%%"}) == 107
    for bad in (
        {**p, "override": {"presence": True}},
        {**p, "override": {"presence": {"value": "yes"}}},
        {**p, "override": []},
        {**p, "recover_since": {"offset": "1"}},
        {**p, "expire_at": 1.5},
        {**p, "user": 1},
        {**p, "client": False},
    ):
        await assert_decode_error(api, "subscribe", bad)


async def test_unsubscribe_disconnect_refresh_errors(api: JsonApi) -> None:
    assert await code_of(api, "unsubscribe", {"user": "u", "channel": "nope:x"}) == 102
    await assert_decode_error(api, "unsubscribe", {"user": "u", "channel": 1})
    await assert_decode_error(api, "disconnect", {"user": "u", "whitelist": "c1"})
    await assert_decode_error(api, "disconnect", {"user": "u", "whitelist": [1]})
    await assert_decode_error(api, "disconnect", {"user": "u", "disconnect": {"code": -1}})
    await assert_decode_error(api, "disconnect", {"user": "u", "disconnect": {"reason": 1}})
    await assert_decode_error(api, "disconnect", {"user": "u", "disconnect": "x"})
    await assert_decode_error(api, "refresh", {"user": "u", "expired": "true"})
    await assert_decode_error(api, "refresh", {"user": "u", "expire_at": "1"})


# --------------------------------------------------------------------------------------------
# channels, info, rpc, unknown


async def test_channels_empty(api: JsonApi) -> None:
    res = await api.call("channels", {})
    assert res == {"channels": {}}
    cent_parse(cent_dto.ChannelsRequest(), res)
    assert await api.call("channels", {"pattern": "news*"}) == {"channels": {}}
    await assert_decode_error(api, "channels", {"pattern": 1})


async def test_info(api: JsonApi, node: Node) -> None:
    res = await api.call("info", {})
    (n,) = res["nodes"]
    assert n["uid"] == node.id and n["name"] == node.name and n["version"]
    for key in ("num_clients", "num_users", "num_channels", "num_subs"):
        assert n[key] == 0
    parsed = cent_parse(cent_dto.InfoRequest(), res)
    assert parsed.nodes[0].uid == node.id
    # null params are an empty request
    assert (await api.call("info", None))["nodes"][0]["uid"] == node.id
    await assert_decode_error(api, "info", [1])


async def test_rpc(api: JsonApi) -> None:
    assert await code_of(api, "rpc", {"method": "", "params": {}}) == 107
    assert await code_of(api, "rpc", {}) == 107
    with pytest.raises(ClientError) as exc:
        await api.call("rpc", {"method": "ping", "params": {"x": 1}})
    assert (exc.value.code, exc.value.message) == (104, "not found")
    await assert_decode_error(api, "rpc", {"method": 1})


@pytest.mark.parametrize("method", ["nope", "connections", "update_user_status", ""])
async def test_unknown_method(api: JsonApi, method: str) -> None:
    assert await code_of(api, method, {}) == 104


# --------------------------------------------------------------------------------------------
# batch


async def test_batch_sequential(api: JsonApi) -> None:
    commands = [
        {"publish": {"channel": "news", "data": 1}},
        {"publish": {"channel": "news", "data": 2}},
        {"history": {"channel": "news", "limit": -1}},
        {"presence_stats": {"channel": "news"}},
        {"publish": {"channel": "nope:x", "data": 1}},
        None,
        {},
        {"unknown_method": {}},
        {"publish": None},
        {"info": {}},
    ]
    res = wire(await api.call("batch", {"commands": commands}))
    replies = res["replies"]
    assert len(replies) == len(commands)
    assert replies[0]["publish"]["offset"] == 1
    assert replies[1]["publish"]["offset"] == 2
    assert [p["data"] for p in replies[2]["history"]["publications"]] == [1, 2]
    assert replies[3] == {"presence_stats": {"num_clients": 0, "num_users": 0}}
    assert replies[4] == {"error": {"code": 102, "message": "unknown channel"}}
    assert replies[5] == {"error": {"code": 107, "message": "bad request"}}
    assert replies[6] == {"error": {"code": 104, "message": "not found"}}
    assert replies[7] == {"error": {"code": 104, "message": "not found"}}
    assert replies[8] == {"error": {"code": 104, "message": "not found"}}
    assert replies[9]["info"]["nodes"][0]["uid"]


async def test_batch_parallel_keeps_order(api: JsonApi, node: Node) -> None:
    commands = [{"publish": {"channel": f"ch{i}", "data": i}} for i in range(50)]
    res = await api.call("batch", {"commands": commands, "parallel": True})
    assert [r["publish"]["offset"] for r in res["replies"]] == [1] * 50
    for i in (0, 49):
        assert (await node.history(f"ch{i}", limit=-1)).publications[0].data == str(i).encode()


async def test_batch_decodes_with_cent(api: JsonApi) -> None:
    request = cent_dto.BatchRequest(
        requests=[
            cent_dto.PublishRequest(channel="news", data={"a": 1}),
            cent_dto.HistoryRequest(channel="news", limit=10),
            cent_dto.PresenceRequest(channel="news"),
            cent_dto.InfoRequest(),
        ]
    )
    res = await api.call("batch", request.api_payload)
    parsed = cent_parse(request, res)
    assert parsed.replies[0].offset == 1
    assert parsed.replies[1].publications[0].data == {"a": 1}
    assert parsed.replies[2].presence == {}


async def test_batch_shapes_and_decode_errors(api: JsonApi) -> None:
    assert await api.call("batch", {}) == {"replies": []}
    assert await api.call("batch", {"commands": []}) == {"replies": []}
    await assert_decode_error(api, "batch", {"commands": {}})
    await assert_decode_error(api, "batch", {"commands": [1]})
    await assert_decode_error(api, "batch", {"commands": [], "parallel": "yes"})
    # a bad field anywhere makes the whole batch undecodable, before anything runs
    bad = {
        "commands": [
            {"publish": {"channel": "news", "data": 1}},
            {"publish": {"channel": 5, "data": 1}},
        ]
    }
    await assert_decode_error(api, "batch", bad)
    assert (await api.call("history", {"channel": "news"}))["offset"] == 0


async def test_batch_longer_than_a_chunk_runs_in_order(api: JsonApi, node: Node) -> None:
    n = BATCH_CHUNK * 2 + 500
    commands: list[Any] = [{"publish": {"channel": f"c{i % 7}", "data": i}} for i in range(n)]
    commands[BATCH_CHUNK] = {"history": {"channel": "c0", "limit": 0}}
    res = await api.call("batch", {"commands": commands})
    replies = res["replies"]
    assert len(replies) == n
    # offsets count per channel across the chunk boundaries; the history in chunk 2 saw
    # every publish of chunk 1 to its channel
    seen: dict[str, int] = {}
    for i, (cmd, reply) in enumerate(zip(commands, replies, strict=True)):
        if "history" in cmd:
            assert reply["history"]["offset"] == seen["c0"], i
            continue
        ch = cmd["publish"]["channel"]
        seen[ch] = seen.get(ch, 0) + 1
        # history_size 10 keeps offsets counting
        assert reply["publish"]["offset"] == seen[ch], i
    last = (await node.history("c6", limit=1, reverse=True)).publications[0]
    assert last.data == str(max(i for i in range(n) if i % 7 == 6)).encode()


async def test_long_batch_with_a_bad_command_runs_nothing(api: JsonApi) -> None:
    commands: list[Any] = [{"publish": {"channel": "news", "data": i}} for i in range(2500)]
    commands.append({"publish": {"channel": 5, "data": 1}})
    await assert_decode_error(api, "batch", {"commands": commands})
    commands[-1] = 7  # not an object
    await assert_decode_error(api, "batch", {"commands": commands})
    # broken JSON after the first chunk: the split fails before anything runs
    await assert_decode_error(api, "batch", b'{"commands":[' + b"{}," * 2500 + b'{"publish":]}')
    assert (await api.call("history", {"channel": "news"}))["offset"] == 0


async def test_long_batch_gives_the_loop_turns(api: JsonApi) -> None:
    # The memory engine publishes without suspending: only the batch's own yields between
    # chunks let another task run while it works.
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    commands = [{"publish": {"channel": "news", "data": i}} for i in range(BATCH_CHUNK * 4)]
    await api.call("batch", {"commands": commands})
    during = ticks - before
    stop.set()
    await task
    # a check pass and a run pass, each yielding between its 4 chunks
    assert during >= 6


@pytest.mark.parametrize(
    ("command", "lane"),
    [
        (b'{"publish":{"channel":"news","data":{"a":1}}}', True),
        (b'{"publish":{"data":[1,2],"channel":"plain:x"}}', True),
        (b'{"publish":{"channel":"news","data":null}}', True),
        (b'{"publish":{"channel":"","data":1}}', True),
        (b'{"publish":{"channel":"news","channel":"other","data":1}}', True),
        ('{"publish":{"channel":"caf\u00e9","data":"\u00e9"}}'.encode(), True),
        (b'{"publish":{"channel":null,"data":1}}', False),
        (b'{"publish":{"channel":"news"}}', False),
        (b'{"publish":{"channel":"news","data":1,"tags":{"k":"v"}}}', False),
        (b'{"publish":{"channel":"news","data":1,"unknown":1}}', False),
        (b'{"publish":{"channel":"news","data":1},"unknown":1}', False),
        (b'{"publish":{"channel":"news","data":1},"history":{"channel":"news"}}', False),
        (b'{"publish":null}', False),
        (b'{"publish":{"channel":5,"data":1}}', False),
        (b'{"publish":{"channel":"news","data":"\xff"}}', False),
        (b'{"publish":{"channel":"news","data":{"a":1}}', False),
    ],
)
def test_batch_publish_fast_lane_decodes_as_the_general_path(command: bytes, lane: bool) -> None:
    """app/api/request.py's PlainPublish lane takes exactly the plain shape and gives the
    same batch command (or the same error) as the general decoding of the command message."""

    def outcome(decode: Any) -> Any:
        try:
            item = batch_item(decode(), 0)
        except (request.BadBody, ApiDecodeError):
            return "decode error"
        if item is not None and type(item[1]) is request.PlainPublish:
            # The lane's command stays typed: it stands for the general request with every
            # field but channel and data at its zero value.
            fixed, fresh = api_decode._ZEROS[id(api_decode.SPECS["publish"])]
            req = {**dict(fixed), **{key: zero(None, key) for key, zero in fresh}}
            return "publish", {**req, "channel": item[1].channel, "data": item[1].data}
        return item

    general = outcome(lambda: request._decode(request._COMMAND, command))  # lane-less
    assert outcome(lambda: batch_command(msgspec.Raw(command))) == general
    # What POST /api/batch uses: an ASCII body's commands are decoded in place, unchecked.
    assert outcome(lambda: batch_decoder(command)(msgspec.Raw(command))) == general
    try:
        took_lane = isinstance(request.command(msgspec.Raw(command)), request.PlainPublish)
    except request.BadBody:
        took_lane = False
    assert took_lane == lane
