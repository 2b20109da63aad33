"""Subscribe options of Centrifugo 6.8/6.9 streams over a real server, on both engines.

- `flag` bit 2 (reject unrecovered, centrifuge `subscriptionFlagRejectUnrecovered`): a failed
  stream recovery answers error 112 instead of `recovered: false`; centrifuge-python's
  get_state flow relies on it.
- the subscribe `type` against the namespace's `subscription_type` (Centrifugo's
  `isSubscriptionTypeAllowed`, centrifuge's shared-poll routing): 103, 107 or 108.
- namespace `auto_cache_recover` (6.8.3): cache recovery without the client asking, for client
  and connect-time server-side subscriptions, not for the server API's subscribe.

Raw JSON WebSocket frames for the codes; channel names are fresh per test.
"""

from __future__ import annotations

from typing import Any

import pytest
from centrifuge import (
    Client,
    StreamPosition,
)

from tests.support.sdk import SubEvents

from .helpers import ServerHandle
from .test_protocol import assert_close, err, open_session, uniq

SUB = {"allow_subscribe_for_client": True}
CACHE = {"history_size": 5, "history_ttl": "60s", "force_recovery": True}

CONFIG: dict[str, Any] = {
    "shared_poll": {"hmac_secret_key": "poll-secret"},
    "proxies": [{"name": "poll", "endpoint": "http://127.0.0.1:9/refresh"}],
    "channel": {
        "without_namespace": SUB,
        "namespaces": [
            # history_size 2: five publications push an old position out of reach
            {
                "name": "small",
                **SUB,
                "history_size": 2,
                "history_ttl": "60s",
                "force_recovery": True,
            },
            {"name": "stream", **SUB, "subscription_type": "stream"},
            {"name": "map", **SUB, "subscription_type": "map", "map": {"mode": "persistent"}},
            {
                "name": "mapcli",
                **SUB,
                "subscription_type": "map_clients",
                "map": {"mode": "ephemeral", "key_ttl": "60s"},
            },
            {
                "name": "poll",
                **SUB,
                "subscription_type": "shared_poll",
                # never polled here: no subscribe of this module tracks a key
                "shared_poll": {"proxy_name": "poll"},
            },
            {"name": "cache", **SUB, **CACHE, "force_recovery_mode": "cache"},
            {
                "name": "auto",
                **SUB,
                **CACHE,
                "force_recovery_mode": "cache",
                "auto_cache_recover": True,
            },
        ],
    },
}

REJECT_UNRECOVERED = 2


@pytest.fixture(scope="module")
def srv(server_factory: Any) -> ServerHandle:
    return server_factory(CONFIG)


# --------------------------------------------------------------------------------------------
# reject unrecovered (flag bit 2)


async def test_lost_position_with_reject_flag_is_112(srv: ServerHandle) -> None:
    ch = "small:" + uniq()
    res = await srv.publish_each(ch, 1, 2, 3, 4, 5)
    epoch = res[0]["epoch"]
    since = {"channel": ch, "recover": True, "offset": 1, "epoch": epoch}
    async with open_session(srv) as ws:
        assert await ws.error("subscribe", {**since, "flag": REJECT_UNRECOVERED}) == err(112)
        # Bits other than 2 change nothing (1 is the SDKs' channel compaction).
        assert await ws.error("subscribe", {**since, "flag": 1 | REJECT_UNRECOVERED}) == err(112)
        # The refused subscribe left no subscription behind: without the flag the same
        # request subscribes, not recovered, at the top.
        out = await ws.ok("subscribe", {**since, "flag": 1})
        assert out == {
            "recoverable": True,
            "positioned": True,
            "was_recovering": True,
            "epoch": epoch,
            "offset": 5,
        }


async def test_other_epoch_with_reject_flag_is_112(srv: ServerHandle) -> None:
    ch = "small:" + uniq()
    await srv.publish_each(ch, 1)
    req = {"channel": ch, "recover": True, "offset": 1, "epoch": "gone", "flag": 2}
    async with open_session(srv) as ws:
        assert await ws.error("subscribe", req) == err(112)


async def test_recoverable_position_with_reject_flag_recovers(srv: ServerHandle) -> None:
    ch = "small:" + uniq()
    res = await srv.publish_each(ch, 1, 2, 3)
    epoch = res[0]["epoch"]
    req = {"channel": ch, "recover": True, "offset": 2, "epoch": epoch, "flag": 3}
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", req)
        assert out["recovered"] is True
        assert out["publications"] == [{"data": 3, "offset": 3}]


async def test_reject_flag_does_not_apply_to_cache_recovery(srv: ServerHandle) -> None:
    # centrifuge checks the flag in stream recovery only.
    ch = "cache:" + uniq()
    req = {"channel": ch, "recover": True, "offset": 3, "epoch": "gone", "flag": 2}
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", req)
    assert out["was_recovering"] is True and "recovered" not in out


async def test_sdk_get_state_is_called_again_on_unrecoverable_position(
    srv: ServerHandle,
) -> None:
    """centrifuge-python subscribes with get_state and the reject flag: after its position
    fell out of history the server answers 112 and the SDK loads the state again."""
    ch = "small:" + uniq()
    await srv.publish_each(ch, {"n": 0})
    calls = 0

    async def get_state(channel: str) -> StreamPosition:
        nonlocal calls
        calls += 1
        top = await srv.api_async("history", {"channel": channel, "limit": 0})
        return StreamPosition(offset=top["result"].get("offset", 0), epoch=top["result"]["epoch"])

    client = Client(srv.ws_url, token=srv.token(uniq()))
    events = SubEvents()
    sub = client.new_subscription(
        ch,
        get_state=get_state,
        events=events,
        min_resubscribe_delay=0.05,
        max_resubscribe_delay=0.05,
    )
    try:
        await client.connect()
        await sub.subscribe()
        await events.next("subscribed", timeout=5)
        assert calls == 1
        await client.disconnect()
        await srv.publish_each(ch, *({"n": i} for i in range(1, 6)))
        await client.connect()
        ctx = await events.next("subscribed", timeout=5)
        assert calls == 2
        # Subscribed again from the reloaded position: the top after six publications.
        assert ctx.stream_position is not None and ctx.stream_position.offset == 6
        await srv.publish_each(ch, {"live": True})
        assert (await events.next("publication", timeout=5)).pub.data == {"live": True}
    finally:
        await client.disconnect()


# --------------------------------------------------------------------------------------------
# subscription types (isSubscriptionTypeAllowed)


@pytest.mark.parametrize(
    ("prefix", "sub_type", "code"),
    [
        # default namespace type: stream only
        ("", 1, 103),
        ("", 2, 103),
        ("", 3, 103),
        ("", 9, 103),
        ("", -1, 103),
        # centrifuge routes shared poll first: a namespace without it has none
        ("", 4, 108),
        ("stream:", 1, 103),
        ("map:", 0, 103),
        ("map:", 2, 103),
        ("mapcli:", 1, 103),
        # a shared poll namespace takes shared poll subscribes only
        ("poll:", 0, 107),
        ("poll:", 1, 107),
        ("stream:", 4, 108),
    ],
)
async def test_subscription_type_not_allowed(
    srv: ServerHandle, prefix: str, sub_type: int, code: int
) -> None:
    ch = prefix + uniq()
    async with open_session(srv) as ws:
        assert await ws.error("subscribe", {"channel": ch, "type": sub_type}) == err(code)
        if code != 107:
            # Nothing stays reserved: the stream subscribe goes through (in a stream
            # namespace), or gets the type's 103 again (in a map namespace).
            again = await ws.call("subscribe", {"channel": ch})
            if prefix in ("", "stream:"):
                assert again == {"id": again["id"], "subscribe": {}}
            else:
                assert again["error"] == err(103)


async def test_stream_subscribe_allowed_in_stream_namespaces(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        assert await ws.ok("subscribe", {"channel": uniq(), "type": 0}) == {}
        assert await ws.ok("subscribe", {"channel": "stream:" + uniq()}) == {}


async def test_allowed_map_subscribe_is_a_map_subscription(srv: ServerHandle) -> None:
    # The namespace allows it: a map subscription (phase 2 first; an empty map goes live at
    # once), never a stream subscription under a map type (test_map_subscriptions.py has
    # the protocol itself).
    async with open_session(srv) as ws:
        for ch, sub_type in (("map:" + uniq(), 1), ("mapcli:" + uniq(), 2)):
            res = await ws.ok("subscribe", {"channel": ch, "type": sub_type, "phase": 2})
            assert (res["type"], res["phase"]) == (1, 0)


async def test_subscription_type_out_of_int32_closes_3501(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        await ws.send({"id": 9, "subscribe": {"channel": uniq(), "type": 2**31}})
        assert_close(await ws.closed_by(), 3501)


# --------------------------------------------------------------------------------------------
# auto_cache_recover


async def test_auto_cache_recover_delivers_latest_without_recover(srv: ServerHandle) -> None:
    ch = "auto:" + uniq()
    res = await srv.publish_each(ch, "old", "latest")
    epoch = res[0]["epoch"]
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", {"channel": ch})
        assert out == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "recovered": True,
            "was_recovering": True,
            "publications": [{"data": "latest", "offset": 2}],
        }
        await srv.publish_each(ch, "live")
        assert await ws.push() == {"channel": ch, "pub": {"data": "live", "offset": 3}}


async def test_cache_mode_without_auto_does_not_recover_unasked(srv: ServerHandle) -> None:
    ch = "cache:" + uniq()
    res = await srv.publish_each(ch, "old", "latest")
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", {"channel": ch})
    assert out == {
        "recoverable": True,
        "positioned": True,
        "epoch": res[0]["epoch"],
        "offset": 2,
    }


async def test_auto_cache_recover_of_connect_server_side_subscription(srv: ServerHandle) -> None:
    ch = "auto:" + uniq()
    res = await srv.publish_each(ch, "old", "latest")
    async with open_session(srv, channels=[ch]) as ws:
        assert ws.result["subs"] == {
            ch: {
                "recoverable": True,
                "positioned": True,
                "epoch": res[0]["epoch"],
                "recovered": True,
                "was_recovering": True,
                "publications": [{"data": "latest", "offset": 2}],
            }
        }


async def test_auto_cache_recover_not_for_api_subscribe(srv: ServerHandle) -> None:
    # Centrifugo's API subscribe passes no AutoCacheRecover: the push comes without the
    # latest publication, the next live one follows it.
    user = uniq()
    ch = "auto:" + uniq()
    res = await srv.publish_each(ch, "old", "latest")
    async with open_session(srv, user) as ws:
        assert await srv.api_async("subscribe", {"user": user, "channel": ch}) == {"result": {}}
        assert await ws.push() == {
            "channel": ch,
            "subscribe": {
                "recoverable": True,
                "positioned": True,
                "epoch": res[0]["epoch"],
                "offset": 2,
            },
        }
        await srv.publish_each(ch, "live")
        assert await ws.push() == {"channel": ch, "pub": {"data": "live", "offset": 3}}
