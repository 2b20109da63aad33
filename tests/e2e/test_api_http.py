"""Server HTTP API end to end: a real server process, raw HTTP, the `cent` SDK, raw WebSockets.

Covers research §2.1 (routing, auth, error modes, legacy `/api`) and the effects of the
user-targeted methods on live connections.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from cent import AsyncClient, CentApiResponseError
from cent.dto import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
)

from .helpers import RawWS, ServerHandle

HISTORY = {"history_size": 10, "history_ttl": "300s"}
CONFIG: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": False},
    "channel": {
        "without_namespace": {"presence": True, "allow_subscribe_for_client": True, **HISTORY},
        "namespaces": [
            {"name": "plain"},
            {"name": "bin", "publication_data_format": "binary", **HISTORY},
        ],
    },
}

JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    return server_factory(CONFIG)


def post(
    server: ServerHandle, path: str, body: bytes | str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST `{api prefix}{path}` with the API key unless `headers` are given."""
    if isinstance(body, str):
        body = body.encode()
    hdrs = {**JSON_HEADERS, "X-API-Key": server.api_key} if headers is None else headers
    req = urllib.request.Request(f"{server.api_url}{path}", data=body, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


PUBLISH = json.dumps({"channel": "auth", "data": {"x": 1}})


# --------------------------------------------------------------------------------------------
# routing and auth


def test_api_key_header_variants(server: ServerHandle) -> None:
    key = server.api_key
    ok = [
        {"X-API-Key": key},
        {"x-api-key": key},
        {"Authorization": f"apikey {key}"},
        {"Authorization": f"APIKey {key}"},
    ]
    for hdrs in ok:
        status, body = post(server, "/publish", PUBLISH, {**JSON_HEADERS, **hdrs})
        assert status == 200, hdrs
        assert "result" in json.loads(body)
    status, _ = post(server, f"/publish?api_key={key}", PUBLISH, JSON_HEADERS)
    assert status == 200
    # a wrong X-API-Key still falls back to the query parameter
    status, _ = post(server, f"/publish?api_key={key}", PUBLISH, {"X-API-Key": "wrong"})
    assert status == 200


def test_api_key_rejections(server: ServerHandle) -> None:
    key = server.api_key
    bad = [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": key + "x"},
        {"Authorization": f"Bearer {key}"},
        {"Authorization": f"apikey  {key} extra"},
        # X-API-Key present (wrong) means Authorization is not looked at
        {"X-API-Key": "wrong", "Authorization": f"apikey {key}"},
    ]
    for hdrs in bad:
        status, body = post(server, "/publish", PUBLISH, {**JSON_HEADERS, **hdrs})
        assert (status, body) == (401, b""), hdrs
    status, body = post(server, "/publish?api_key=nope", PUBLISH, JSON_HEADERS)
    assert (status, body) == (401, b"")


def test_method_not_allowed_and_not_found(server: ServerHandle) -> None:
    req = urllib.request.Request(
        f"{server.api_url}/publish", headers={"X-API-Key": server.api_key}, method="GET"
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 405
    for path in ("/nope", "/connections", "/publish/extra"):
        status, _ = post(server, path, "{}")
        assert status == 404, path


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'"str"', b'{"channel": 5, "data": 1}', b'{"channel":"a","tags":[1]}'],
)
def test_undecodable_body_is_plain_400(server: ServerHandle, body: bytes) -> None:
    status, text = post(server, "/publish", body)
    assert status == 400
    assert text.strip() == b"Bad Request"


def test_errors_in_body_by_default(server: ServerHandle) -> None:
    status, body = post(server, "/publish", '{"channel": "nope:x", "data": 1}')
    assert status == 200
    assert json.loads(body) == {"error": {"code": 102, "message": "unknown channel"}}
    status, body = post(server, "/publish", '{"channel": "a"}')
    assert json.loads(body) == {"error": {"code": 107, "message": "bad request"}}
    status, body = post(server, "/rpc", '{"method": "x"}')
    assert json.loads(body) == {"error": {"code": 104, "message": "not found"}}


def test_transport_error_mode_header(server: ServerHandle) -> None:
    hdrs = {**JSON_HEADERS, "X-API-Key": server.api_key, "X-Centrifugo-Error-Mode": "transport"}
    epoch = json.loads(post(server, "/publish", '{"channel":"tm","data":1}')[1])["result"]["epoch"]
    cases = [
        ("/publish", {"channel": "nope:x", "data": 1}, 404, 102),
        ("/rpc", {"method": "x"}, 404, 104),
        ("/publish", {"channel": "a"}, 400, 107),
        ("/history", {"channel": "plain:x"}, 400, 108),
        (
            "/history",
            {"channel": "tm", "limit": 1, "since": {"offset": 1, "epoch": "no"}},
            416,
            112,
        ),
    ]
    for path, params, status_code, code in cases:
        status, body = post(server, path, json.dumps(params), hdrs)
        assert status == status_code, (path, params, body)
        assert json.loads(body) == {
            "code": code,
            "message": {
                102: "unknown channel",
                104: "not found",
                107: "bad request",
                108: "not available",
                112: "unrecoverable position",
            }[code],
        }
    # success is unchanged
    status, body = post(server, "/history", json.dumps({"channel": "tm"}), hdrs)
    assert (status, json.loads(body)["result"]["epoch"]) == (200, epoch)
    # 100: a binary publication cannot be shown in a JSON history answer
    b64 = base64.b64encode(b"\xff\x00").decode()
    post(server, "/publish", json.dumps({"channel": "bin:x", "b64data": b64}))
    status, body = post(server, "/history", '{"channel":"bin:x","limit":-1}', hdrs)
    assert (status, json.loads(body)["code"]) == (500, 100)
    # batch keeps per-command errors and answers 200
    batch = {"commands": [{"publish": {"channel": "nope:x", "data": 1}}]}
    status, body = post(server, "/batch", json.dumps(batch), hdrs)
    assert status == 200
    assert json.loads(body) == {"replies": [{"error": {"code": 102, "message": "unknown channel"}}]}


def test_batch_is_not_wrapped_in_result(server: ServerHandle) -> None:
    batch = {"commands": [{"publish": {"channel": "bt", "data": 1}}, None, {}], "parallel": True}
    status, body = post(server, "/batch", json.dumps(batch))
    assert status == 200
    replies = json.loads(body)["replies"]
    assert replies[0]["publish"]["offset"] == 1
    assert replies[1] == {"error": {"code": 107, "message": "bad request"}}
    assert replies[2] == {"error": {"code": 104, "message": "not found"}}


def test_legacy_api_stream(server: ServerHandle) -> None:
    commands = [
        {"id": 1, "method": "publish", "params": {"channel": "leg", "data": {"n": 1}}},
        {"id": 2, "method": 0, "params": {"channel": "leg", "data": {"n": 2}}},
        {"id": 3, "method": "HISTORY", "params": {"channel": "leg", "limit": 10}},
        {"id": 4, "method": 99, "params": {}},
        {"id": 5, "method": "publish"},
        {"id": 6, "method": "publish", "params": {"channel": 1}},
        {"method": "info"},
    ]
    body = "\n".join(json.dumps(c) for c in commands)
    status, out = post(server, "", body)
    assert status == 200
    replies = [json.loads(line) for line in out.decode().split("\n")]
    assert len(replies) == len(commands)
    assert replies[0]["id"] == 1 and replies[0]["result"]["offset"] == 1
    assert replies[1]["id"] == 2 and replies[1]["result"]["offset"] == 2
    assert [p["data"]["n"] for p in replies[2]["result"]["publications"]] == [1, 2]
    assert replies[3] == {"id": 4, "error": {"code": 104, "message": "not found"}}
    assert replies[4] == {"id": 5, "error": {"code": 107, "message": "bad request"}}
    assert replies[5] == {"id": 6, "error": {"code": 107, "message": "bad request"}}
    assert "id" not in replies[6] and replies[6]["result"]["nodes"]
    # an unknown method name, a non-object command or an empty body fail the whole request
    for bad in (b'{"method":"nope"}', b"[1]", b"", b'{"method":"info"}\n{'):
        status, text = post(server, "", bad)
        assert status == 400, bad
    # auth applies to the legacy route too
    assert post(server, "", '{"method":"info"}', JSON_HEADERS)[0] == 401


# --------------------------------------------------------------------------------------------
# cent SDK


async def test_cent_client_round_trip(server: ServerHandle) -> None:
    client = AsyncClient(server.api_url, server.api_key)
    try:
        r1 = await client.publish(PublishRequest(channel="cent", data={"a": 1}, tags={"t": "x"}))
        assert r1.offset == 1 and r1.epoch
        b = await client.broadcast(BroadcastRequest(channels=["cent", "nope:x"], data=[2]))
        assert b.responses[0].result.offset == 2
        assert b.responses[1].error.code == 102
        h = await client.history(HistoryRequest(channel="cent", limit=10))
        assert [p.data for p in h.publications] == [{"a": 1}, [2]]
        assert h.publications[0].tags == {"t": "x"}
        h = await client.history(
            HistoryRequest(channel="cent", limit=10, since=StreamPosition(offset=1, epoch=r1.epoch))
        )
        assert [p.offset for p in h.publications] == [2]
        p = await client.presence(PresenceRequest(channel="cent"))
        assert p.presence == {}
        s = await client.presence_stats(PresenceStatsRequest(channel="cent"))
        assert (s.num_clients, s.num_users) == (0, 0)
        info = await client.info(InfoRequest())
        assert info.nodes[0].uid
        await client.channels(ChannelsRequest(pattern="*"))
        batch = await client.batch(
            BatchRequest(
                requests=[
                    PublishRequest(channel="cent", data=3),
                    HistoryRequest(channel="cent"),
                ]
            )
        )
        assert batch.replies[0].offset == 3 and batch.replies[1].offset == 3
        with pytest.raises(CentApiResponseError) as exc:
            await client.publish(PublishRequest(channel="nope:x", data=1))
        assert exc.value.code == 102
    finally:
        await client.close()


# --------------------------------------------------------------------------------------------
# effects on live connections


async def test_publish_reaches_subscriber_and_presence(server: ServerHandle) -> None:
    async with RawWS.connect(server.ws_url) as ws:
        reply = await ws.connect_cmd(server.token("alice", info={"name": "A"}))
        client_id = reply["connect"]["client"]
        assert "subscribe" in await ws.command({"subscribe": {"channel": "live"}})
        res = await server.api_async("publish", {"channel": "live", "data": {"hello": "ws"}})
        push = await ws.push()
        assert push["channel"] == "live"
        assert push["pub"]["data"] == {"hello": "ws"}
        assert push["pub"]["offset"] == res["result"]["offset"]
        presence = (await server.api_async("presence", {"channel": "live"}))["result"]
        assert presence["presence"][client_id]["user"] == "alice"
        assert presence["presence"][client_id]["conn_info"] == {"name": "A"}
        stats = (await server.api_async("presence_stats", {"channel": "live"}))["result"]
        assert stats == {"num_clients": 1, "num_users": 1}
        channels = (await server.api_async("channels", {"pattern": "li*"}))["result"]
        assert channels == {"channels": {"live": {"num_clients": 1}}}
        info = (await server.api_async("info", {}))["result"]["nodes"][0]
        assert info["num_clients"] >= 1 and info["num_channels"] >= 1


async def test_server_side_subscribe_and_unsubscribe(server: ServerHandle) -> None:
    async with RawWS.connect(server.ws_url) as ws:
        await ws.connect_cmd(server.token("bob"))
        await server.api_async("publish", {"channel": "srv", "data": 0})
        res = await server.api_async(
            "subscribe", {"user": "bob", "channel": "srv", "data": {"welcome": True}}
        )
        assert res == {"result": {}}
        push = await ws.push()
        assert push["channel"] == "srv" and "subscribe" in push
        await server.api_async("publish", {"channel": "srv", "data": {"n": 1}})
        push = await ws.push()
        assert push["pub"]["data"] == {"n": 1}
        assert await server.api_async("unsubscribe", {"user": "bob", "channel": "srv"}) == {
            "result": {}
        }
        push = await ws.push()
        assert push["channel"] == "srv" and push["unsubscribe"]["code"] == 2000


@pytest.mark.parametrize(
    "params,code",
    [({}, 3503), ({"disconnect": {"code": 4000, "reason": "custom"}}, 4000)],
)
async def test_disconnect_closes_with_code(
    server: ServerHandle, params: dict[str, Any], code: int
) -> None:
    async with RawWS.connect(server.ws_url) as ws:
        await ws.connect_cmd(server.token("carol"))
        res = await server.api_async("disconnect", {"user": "carol", **params})
        assert res == {"result": {}}
        got, reason = await ws.wait_closed()
        assert got == code
        if code == 4000:
            assert reason == "custom"


async def test_disconnect_whitelist_keeps_client(server: ServerHandle) -> None:
    async with RawWS.connect(server.ws_url) as ws1, RawWS.connect(server.ws_url) as ws2:
        keep = (await ws1.connect_cmd(server.token("dave")))["connect"]["client"]
        await ws2.connect_cmd(server.token("dave"))
        await server.api_async("disconnect", {"user": "dave", "whitelist": [keep]})
        assert (await ws2.wait_closed())[0] == 3503
        assert "subscribe" in await ws1.command({"subscribe": {"channel": "still-here"}})


# --------------------------------------------------------------------------------------------
# server configurations


def test_insecure_api_needs_no_key(fresh_server_factory: Any) -> None:
    srv = fresh_server_factory({**CONFIG, "http_api": {"insecure": True}})
    status, body = post(srv, "/publish", PUBLISH, JSON_HEADERS)
    assert status == 200 and "result" in json.loads(body)


def test_empty_key_rejects_everything(fresh_server_factory: Any) -> None:
    srv = fresh_server_factory({**CONFIG, "http_api": {"key": ""}})
    for hdrs in ({}, {"X-API-Key": ""}, {"Authorization": "apikey "}):
        status, body = post(srv, "/publish?api_key=", PUBLISH, {**JSON_HEADERS, **hdrs})
        assert (status, body) == (401, b"")


def test_transport_error_mode_config_and_prefix(fresh_server_factory: Any) -> None:
    srv = fresh_server_factory(
        {**CONFIG, "http_api": {"error_mode": "transport", "handler_prefix": "/custom/api"}}
    )
    assert srv.api_url.endswith("/custom/api")
    status, body = post(srv, "/publish", '{"channel":"nope:x","data":1}')
    assert status == 404
    assert json.loads(body) == {"code": 102, "message": "unknown channel"}
    status, _ = post(srv, "/publish", '{"channel":"ok","data":1}')
    assert status == 200
