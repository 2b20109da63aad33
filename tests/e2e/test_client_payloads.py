"""What a client sends is passed through or refused with Centrifugo's code, never mangled.

- Publication data published by a JSON client reaches subscribers and history byte-exact
  (Centrifugo keeps it as json.RawMessage): big integers, exponents, duplicate keys, deep
  nesting are not re-serialised.
- A binary publication (b64data) cannot be written into a JSON text frame: a JSON client that
  asks for it through history or recovery is disconnected with 3506 (inappropriate protocol,
  terminal), as Centrifugo does, instead of receiving a broken frame and reconnecting forever.
- Malformed integers (offset "--5", "²", 5,000 digits) are bad requests (3501), not internal
  errors with a traceback.
- `client.channel_limit` bounds the subscriptions a connect makes (3505).

Real server processes (memory and Redis engines), raw WebSocket frames where the exact bytes
matter, centrifuge-python where a reconnecting SDK is the point.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from centrifuge import Client, ClientState, SubscriptionState

from tests.support.payloads import OPAQUE
from tests.support.sdk import ClientEvents, SubEvents

from .helpers import RawWS, ServerHandle

CHANNEL_LIMIT = 8

CONFIG = {
    "client": {"channel_limit": CHANNEL_LIMIT},
    "channel": {
        "without_namespace": {
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
            "allow_history_for_client": True,
            "history_size": 20,
            "history_ttl": "300s",
            "force_recovery": True,
        }
    },
}

EXACT = list(OPAQUE.values())


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


def chan() -> str:
    return "p" + uuid.uuid4().hex[:10]


async def connected(srv: ServerHandle, user: str = "u") -> RawWS:
    ws = await RawWS.connect(srv.ws_url).__aenter__()
    rep = await ws.connect_cmd(srv.token(user))
    assert "connect" in rep, rep
    return ws


def pub_data_span(frame: bytes) -> bytes:
    """The bytes of `data` in a client publication's push frame: what stands between
    `"data":` and the `"info"` that follows it (the test payloads contain neither)."""
    start = frame.index(b'"data":') + len(b'"data":')
    return frame[start : frame.index(b',"info":', start)]


async def test_client_publish_data_reaches_subscriber_and_history_byte_exact(
    srv: ServerHandle,
) -> None:
    ch = chan()
    sub = await connected(srv, "reader")
    pub = await connected(srv, "writer")
    try:
        assert "subscribe" in await sub.command({"subscribe": {"channel": ch}})
        for i, data in enumerate(EXACT, start=1):
            frame = b'{"id":%d,"publish":{"channel":"%s","data":%s}}' % (
                100 + i,
                ch.encode(),
                data,
            )
            await pub.ws.send_str(frame.decode())
            rep = await pub.reply(100 + i)
            assert rep == {"id": 100 + i, "publish": {}}, rep
            got = (await sub.recv_frame()).encode()
            assert pub_data_span(got) == data, got[:200]
        # History replies splice the same bytes.
        await sub.send({"id": 9, "history": {"channel": ch, "limit": -1}})
        frame = (await sub.recv_frame()).encode()
        for data in EXACT:
            assert b'"data":' + data + b',"info":' in frame, frame[:300]
    finally:
        await sub.close()
        await pub.close()


async def test_deep_command_is_a_bad_request_without_traceback(srv: ServerHandle) -> None:
    ws = await connected(srv)
    try:
        deep = b"[" * 5000 + b"]" * 5000
        await ws.ws.send_str('{"id":2,"publish":{"channel":"x","data":' + deep.decode() + "}}")
        code, _ = await ws.wait_closed()
        assert code == 3501
    finally:
        await ws.close()
    assert "Traceback" not in srv.log_text()


@pytest.mark.parametrize("offset", ["--5", "²", "9" * 5000, "18446744073709551616", -1, 1.5])
async def test_malformed_offset_is_a_bad_request(srv: ServerHandle, offset: Any) -> None:
    before = srv.log_text()
    ws = await connected(srv)
    try:
        await ws.send(
            {"id": 2, "subscribe": {"channel": chan(), "recover": True, "offset": offset}}
        )
        code, _ = await ws.wait_closed()
        assert code == 3501
    finally:
        await ws.close()
    new = srv.log_text()[len(before) :]
    assert "Traceback" not in new and '"level": "error"' not in new.lower(), new[-2000:]


async def test_history_with_binary_publication_disconnects_json_client_with_3506(
    srv: ServerHandle,
) -> None:
    ch = chan()
    srv.api("publish", {"channel": ch, "data": {"text": "json"}})
    srv.api("publish", {"channel": ch, "b64data": base64.b64encode(b"\x00\xffbin").decode()})
    ws = await connected(srv)
    try:
        await ws.send({"id": 2, "history": {"channel": ch, "limit": -1}})
        code, _ = await ws.wait_closed()
        assert code == 3506
    finally:
        await ws.close()
    assert "Traceback" not in srv.log_text()


async def test_sdk_recovering_into_binary_publication_stops_with_3506(srv: ServerHandle) -> None:
    """The reconnect loop of issue 14 point 2: the SDK gets a terminal 3506, once."""
    ch = chan()
    events = ClientEvents()
    client = Client(
        srv.ws_url,
        events=events,
        token=srv.token("sdk"),
        min_reconnect_delay=0.05,
        max_reconnect_delay=0.2,
    )
    sub_events = SubEvents()
    sub = client.new_subscription(ch, events=sub_events)
    try:
        await client.connect()
        await sub.subscribe()
        await sub_events.next("subscribed")
        srv.api("publish", {"channel": ch, "data": {"n": 1}})
        assert (await sub_events.next("publication")).pub.data == {"n": 1}
        await client.disconnect()
        await events.next("disconnected")
        srv.api("publish", {"channel": ch, "b64data": base64.b64encode(b"\x00\x01").decode()})
        await client.connect()
        ctx = await events.next_matching("disconnected", lambda c: c.code != 0)
        assert ctx.code == 3506, ctx
        # Terminal: the SDK goes DISCONNECTED (a reconnectable code leaves it CONNECTING).
        assert client.state == ClientState.DISCONNECTED
    finally:
        await client.disconnect()
    assert sub.state in (SubscriptionState.SUBSCRIBING, SubscriptionState.UNSUBSCRIBED)


async def test_connect_subs_beyond_channel_limit_is_refused_with_3505(srv: ServerHandle) -> None:
    subs = {chan(): {} for _ in range(CHANNEL_LIMIT + 1)}
    async with RawWS.connect(srv.ws_url) as ws:
        await ws.send({"id": 1, "connect": {"token": srv.token("many"), "subs": subs}})
        code, _ = await ws.wait_closed()
        assert code == 3505
    # At the limit, every one of them is subscribed.
    subs = {chan(): {} for _ in range(CHANNEL_LIMIT)}
    async with RawWS.connect(srv.ws_url) as ws:
        rep = await ws.connect_cmd(srv.token("many"), subs=subs)
        assert set(rep["connect"]["subs"]) == set(subs)


async def test_history_of_json_publications_still_works(srv: ServerHandle) -> None:
    ch = chan()
    srv.api("publish", {"channel": ch, "data": {"ok": True}})
    ws = await connected(srv)
    try:
        res = await ws.command({"history": {"channel": ch, "limit": -1}})
        assert [p["data"] for p in res["history"]["publications"]] == [{"ok": True}]
    finally:
        await ws.close()
