"""Channel features over raw JSON WebSocket frames (research §1.4–1.6, §3.2–3.5, §4.1–4.3, §5).

Subscribe validation, the per-namespace permission matrix, history and presence commands,
join/leave pushes, private channels with subscription tokens, sub_refresh and subscription
expiry, server-side subscriptions from connection tokens, and stream/cache recovery.
One server (config CHAN) serves the whole module; every test uses fresh channel names.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import jwt
import pytest

from .helpers import ServerHandle
from .test_protocol import (
    WS,
    assert_close,
    err,
    is_epoch,
    open_session,
    open_ws,
    uniq,
)

HISTORY = {"history_size": 20, "history_ttl": "60s"}
SUB = {"allow_subscribe_for_client": True}


def ns(name: str, **opts: Any) -> dict[str, Any]:
    return {"name": name, **opts}


CHAN: dict[str, Any] = {
    "client": {
        "expired_sub_close_delay": "200ms",
        "history_max_publication_limit": 6,
        "recovery_max_publication_limit": 5,
    },
    "channel": {
        "without_namespace": SUB,
        "namespaces": [
            ns("open", **SUB),
            ns("anon", **SUB, allow_subscribe_for_anonymous=True),
            ns("none", presence=True, **HISTORY),
            ns("rx", **SUB, channel_regex="^[a-zé]+$"),
            # publish
            ns("pubc", allow_publish_for_client=True),
            ns("puba", allow_publish_for_client=True, allow_publish_for_anonymous=True),
            ns("pubs", **SUB, allow_publish_for_subscriber=True),
            ns("json", allow_publish_for_client=True, publication_data_format="json_object"),
            # history
            ns("hist", **HISTORY, allow_history_for_client=True, allow_publish_for_client=True),
            ns("hista", **HISTORY, allow_history_for_client=True, allow_history_for_anonymous=True),
            ns(
                "hists",
                **HISTORY,
                **SUB,
                allow_subscribe_for_anonymous=True,
                allow_history_for_subscriber=True,
            ),
            ns("histoff", allow_history_for_client=True),
            # presence
            ns("pres", presence=True, **SUB, allow_presence_for_client=True),
            ns(
                "presa",
                presence=True,
                allow_presence_for_client=True,
                allow_presence_for_anonymous=True,
            ),
            ns(
                "press",
                presence=True,
                **SUB,
                allow_subscribe_for_anonymous=True,
                allow_presence_for_subscriber=True,
            ),
            ns("presoff", allow_presence_for_client=True),
            # join / leave
            ns("jl", presence=True, join_leave=True, **SUB, allow_presence_for_client=True),
            ns("jlnp", presence=True, join_leave=True, **SUB),
            ns("fjl", presence=True, join_leave=True, force_push_join_leave=True, **SUB),
            # positioning / recovery
            ns("pos", **HISTORY, **SUB, allow_positioning=True),
            ns("posno", **HISTORY, **SUB),
            ns("hrec", **HISTORY, **SUB, allow_history_for_client=True),
            ns("rec", **HISTORY, **SUB, force_recovery=True),
            # stream meta lives 1 s: an idle stream comes back with a new epoch
            ns(
                "short",
                history_size=5,
                history_ttl="1s",
                history_meta_ttl="1s",
                **SUB,
                force_positioning=True,
            ),
            ns(
                "cache",
                history_size=1,
                history_ttl="60s",
                **SUB,
                force_recovery=True,
                force_recovery_mode="cache",
            ),
            # private, user-limited, server-side
            ns("priv", presence=True),
            ns("ul", allow_user_limited_channels=True),
            ns("ulc", allow_user_limited_channels=True, **SUB),
            ns("srv", presence=True, **HISTORY),
            ns("srvrec", **HISTORY, force_recovery=True),
        ],
    },
}


@pytest.fixture(scope="module")
def srv(server_factory: Any) -> ServerHandle:
    return server_factory(CHAN)


def anon_token(server: ServerHandle) -> str:
    return server.token("")


# --------------------------------------------------------------------------------------------
# subscribe validation (§1.4, §4.1)


async def test_subscribe_unknown_namespace_102(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        assert await ws.error("subscribe", {"channel": "nope:x"}) == err(102)
        for method in ("presence", "presence_stats", "history"):
            assert await ws.error(method, {"channel": "nope:x"}) == err(102)
        assert await ws.error("publish", {"channel": "nope:x", "data": 1}) == err(102)


async def test_channel_name_validation_107(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        ok_255 = "open:" + "a" * 250
        assert len(ok_255) == 255
        assert await ws.ok("subscribe", {"channel": ok_255}) == {}
        assert await ws.error("subscribe", {"channel": ok_255 + "b"}) == err(107)
        assert await ws.error("subscribe", {"channel": "open:привет"}) == err(107)
        assert await ws.error("subscribe", {"channel": "plainé"}) == err(107)
        # With channel_regex the regex decides (non-ASCII allowed when it matches).
        assert await ws.ok("subscribe", {"channel": "rx:abcé"}) == {}
        assert await ws.error("subscribe", {"channel": "rx:ABC"}) == err(107)
        assert await ws.error("subscribe", {"channel": "rx:a1"}) == err(107)


async def test_already_subscribed_105(srv: ServerHandle) -> None:
    ch = "open:" + uniq()
    async with open_session(srv) as ws:
        assert await ws.ok("subscribe", {"channel": ch}) == {}
        assert await ws.error("subscribe", {"channel": ch}) == err(105)
        assert await ws.ok("unsubscribe", {"channel": ch}) == {}
        assert await ws.ok("subscribe", {"channel": ch}) == {}
        # Unsubscribing from a channel one is not subscribed to is fine.
        assert await ws.ok("unsubscribe", {"channel": "open:" + uniq()}) == {}


# --------------------------------------------------------------------------------------------
# permissions (§4.2, §4.3)


async def test_subscribe_permissions(srv: ServerHandle) -> None:
    async with open_session(srv) as user, open_session(srv, token=anon_token(srv)) as anon:
        assert await user.ok("subscribe", {"channel": "open:" + uniq()}) == {}
        assert await user.ok("subscribe", {"channel": uniq()}) == {}  # without_namespace
        assert await anon.error("subscribe", {"channel": "open:" + uniq()}) == err(103)
        assert await anon.ok("subscribe", {"channel": "anon:" + uniq()}) == {}
        for ws in (user, anon):
            assert await ws.error("subscribe", {"channel": "none:" + uniq()}) == err(103)
            assert await ws.error("subscribe", {"channel": "pubc:" + uniq()}) == err(103)


async def test_publish_permissions(srv: ServerHandle) -> None:
    async with open_session(srv) as user, open_session(srv, token=anon_token(srv)) as anon:
        assert await user.ok("publish", {"channel": "pubc:" + uniq(), "data": 1}) == {}
        assert await anon.error("publish", {"channel": "pubc:" + uniq(), "data": 1}) == err(103)
        assert await anon.ok("publish", {"channel": "puba:" + uniq(), "data": 1}) == {}
        # for_subscriber: only once subscribed.
        ch = "pubs:" + uniq()
        assert await user.error("publish", {"channel": ch, "data": 1}) == err(103)
        assert await user.ok("subscribe", {"channel": ch}) == {}
        assert await user.ok("publish", {"channel": ch, "data": {"m": 1}}) == {}
        push = await user.push()
        assert push["pub"]["data"] == {"m": 1}
        for ws in (user, anon):
            assert await ws.error("publish", {"channel": "none:" + uniq(), "data": 1}) == err(103)
            assert await ws.error("publish", {"channel": "open:" + uniq(), "data": 1}) == err(103)


async def test_publish_data_format(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        assert await ws.ok("publish", {"channel": "json:" + uniq(), "data": {"o": 1}}) == {}
        assert await ws.error("publish", {"channel": "json:" + uniq(), "data": [1]}) == err(107)
        # No data at all is a malformed publish.
        await ws.send({"id": 50, "publish": {"channel": "pubc:x"}})
        assert_close(await ws.closed_by(), 3501)


async def test_history_permissions(srv: ServerHandle) -> None:
    async with open_session(srv) as user, open_session(srv, token=anon_token(srv)) as anon:
        assert set(await user.ok("history", {"channel": "hist:" + uniq()})) == {
            "publications",
            "epoch",
            "offset",
        }
        assert await anon.error("history", {"channel": "hist:" + uniq()}) == err(103)
        assert "epoch" in await anon.ok("history", {"channel": "hista:" + uniq()})
        for ws in (user, anon):
            ch = "hists:" + uniq()
            assert await ws.error("history", {"channel": ch}) == err(103)
            assert await ws.ok("subscribe", {"channel": ch}) == {}
            if ws is user:
                assert "epoch" in await ws.ok("history", {"channel": ch})
            else:
                # Subscribed, but anonymous needs allow_history_for_anonymous as well.
                assert await ws.error("history", {"channel": ch}) == err(103)
            assert await ws.error("history", {"channel": "none:" + uniq()}) == err(103)
            # Feature off beats permissions: 108.
            assert await ws.error("history", {"channel": "histoff:" + uniq()}) == err(108)


async def test_presence_permissions(srv: ServerHandle) -> None:
    async with open_session(srv) as user, open_session(srv, token=anon_token(srv)) as anon:
        assert await user.ok("presence", {"channel": "pres:" + uniq()}) == {"presence": {}}
        assert await anon.error("presence", {"channel": "pres:" + uniq()}) == err(103)
        assert await anon.error("presence_stats", {"channel": "pres:" + uniq()}) == err(103)
        assert await anon.ok("presence_stats", {"channel": "presa:" + uniq()}) == {
            "num_clients": 0,
            "num_users": 0,
        }
        for ws in (user, anon):
            ch = "press:" + uniq()
            assert await ws.error("presence", {"channel": ch}) == err(103)
            assert await ws.ok("subscribe", {"channel": ch}) == {}
            if ws is user:
                me = ws.result["client"]
                pres = await ws.ok("presence", {"channel": ch})
                assert list(pres["presence"]) == [me]
            else:
                # Subscribed, but anonymous needs allow_presence_for_anonymous as well.
                assert await ws.error("presence", {"channel": ch}) == err(103)
            assert await ws.error("presence", {"channel": "none:" + uniq()}) == err(103)
            assert await ws.error("presence", {"channel": "presoff:" + uniq()}) == err(108)
            assert await ws.error("presence_stats", {"channel": "presoff:" + uniq()}) == err(108)


async def test_presence_content(srv: ServerHandle) -> None:
    ch = "pres:" + uniq()
    user = uniq("pu")
    async with (
        open_session(srv, user, info={"name": "Ann"}) as a1,
        open_session(srv, user) as a2,
        open_session(srv) as observer,
    ):
        for ws in (a1, a2):
            assert await ws.ok("subscribe", {"channel": ch}) == {}
        c1, c2 = a1.result["client"], a2.result["client"]
        assert await observer.ok("presence", {"channel": ch}) == {
            "presence": {
                c1: {"user": user, "client": c1, "conn_info": {"name": "Ann"}},
                c2: {"user": user, "client": c2},
            }
        }
        assert await observer.ok("presence_stats", {"channel": ch}) == {
            "num_clients": 2,
            "num_users": 1,
        }
        assert await a1.ok("unsubscribe", {"channel": ch}) == {}
        assert await observer.ok("presence_stats", {"channel": ch}) == {
            "num_clients": 1,
            "num_users": 1,
        }
    # Closing the socket removes presence too.
    async with open_session(srv) as observer:
        assert await observer.ok("presence_stats", {"channel": ch}) == {
            "num_clients": 0,
            "num_users": 0,
        }


async def test_user_limited_channel_not_listed_is_denied_even_with_subscribe_permission(
    srv: ServerHandle,
) -> None:
    async with open_session(srv, uniq("carol")) as carol:
        assert await carol.error("subscribe", {"channel": "ulc:dialog#alice,bob"}) == err(103)


async def test_user_limited_channels(srv: ServerHandle) -> None:
    alice, bob, carol = uniq("alice"), uniq("bob"), uniq("carol")
    ch = f"ul:dialog#{alice},{bob}"
    async with (
        open_session(srv, alice) as a,
        open_session(srv, bob) as b,
        open_session(srv, carol) as c,
    ):
        assert await a.ok("subscribe", {"channel": ch}) == {}
        assert await b.ok("subscribe", {"channel": ch}) == {}
        assert await c.error("subscribe", {"channel": ch}) == err(103)
        # Without allow_user_limited_channels `#` is an ordinary character.
        assert await c.ok("subscribe", {"channel": f"open:dialog#{alice}"}) == {}
        # A user-limited channel name that has no `#` part is a normal channel.
        assert await c.ok("subscribe", {"channel": "ulc:" + uniq()}) == {}
        assert await a.ok("subscribe", {"channel": f"ulc:d#{alice}"}) == {}


# --------------------------------------------------------------------------------------------
# history command (§5)


async def test_history_queries(srv: ServerHandle) -> None:
    ch = "hist:" + uniq()
    results = await srv.publish_each(ch, *({"n": i} for i in range(1, 9)))
    epoch = results[0]["epoch"]
    assert [r["offset"] for r in results] == list(range(1, 9))

    def offsets(h: dict[str, Any]) -> list[int]:
        assert h["epoch"] == epoch and h["offset"] == 8, h
        for p in h["publications"]:
            assert p == {"data": {"n": p["offset"]}, "offset": p["offset"]}
        return [p["offset"] for p in h["publications"]]

    async with open_session(srv) as ws:
        h = await ws.ok("history", {"channel": ch})
        assert h == {"publications": [], "epoch": epoch, "offset": 8}
        assert offsets(await ws.ok("history", {"channel": ch, "limit": 3})) == [1, 2, 3]
        # -1 and anything above history_max_publication_limit (6) are capped.
        assert offsets(await ws.ok("history", {"channel": ch, "limit": -1})) == [1, 2, 3, 4, 5, 6]
        assert offsets(await ws.ok("history", {"channel": ch, "limit": 100})) == [1, 2, 3, 4, 5, 6]
        rev = await ws.ok("history", {"channel": ch, "limit": 2, "reverse": True})
        assert offsets(rev) == [8, 7]
        since = {"offset": 5, "epoch": epoch}
        assert offsets(await ws.ok("history", {"channel": ch, "limit": 10, "since": since})) == [
            6,
            7,
            8,
        ]
        back = await ws.ok("history", {"channel": ch, "limit": 10, "since": since, "reverse": True})
        assert offsets(back) == [4, 3, 2, 1]
        top = {"offset": 8, "epoch": epoch}
        assert offsets(await ws.ok("history", {"channel": ch, "limit": 10, "since": top})) == []
        wrong = {"offset": 1, "epoch": "wrong-epoch"}
        assert await ws.error("history", {"channel": ch, "limit": 5, "since": wrong}) == err(112)
        zero_rev = {
            "channel": ch,
            "limit": 5,
            "reverse": True,
            "since": {"offset": 0, "epoch": epoch},
        }
        assert await ws.error("history", zero_rev) == err(107)


async def test_history_publication_shape(srv: ServerHandle) -> None:
    ch = "hist:" + uniq()
    user = uniq()
    await srv.api_async("publish", {"channel": ch, "data": "s", "tags": {"k": "v"}})
    async with open_session(srv, user, info={"i": 1}) as ws:
        assert await ws.ok("publish", {"channel": ch, "data": {"c": 1}}) == {}
        h = await ws.ok("history", {"channel": ch, "limit": 5})
    me = ws.result["client"]
    assert h["publications"] == [
        {"data": "s", "offset": 1, "tags": {"k": "v"}},
        {
            "data": {"c": 1},
            "offset": 2,
            "info": {"user": user, "client": me, "conn_info": {"i": 1}},
        },
    ]


# --------------------------------------------------------------------------------------------
# join / leave (§4.2, §4.3)


def join(ch: str, ws: WS, user: str) -> dict[str, Any]:
    return {"channel": ch, "join": {"info": {"user": user, "client": ws.result["client"]}}}


def leave(ch: str, ws: WS, user: str) -> dict[str, Any]:
    return {"channel": ch, "leave": {"info": {"user": user, "client": ws.result["client"]}}}


async def test_join_leave_opt_in(srv: ServerHandle) -> None:
    ch = "jl:" + uniq()
    ua, ub = uniq("a"), uniq("b")
    async with open_session(srv, ua) as a, open_session(srv, ub) as b:
        assert await a.ok("subscribe", {"channel": ch, "join_leave": True}) == {}
        assert await a.push() == join(ch, a, ua)  # its own join comes too
        assert await b.ok("subscribe", {"channel": ch}) == {}
        assert await a.push() == join(ch, b, ub)
        assert await b.ok("unsubscribe", {"channel": ch}) == {}
        assert await a.push() == leave(ch, b, ub)
        # b did not opt in: its next push is a publication, not a join/leave.
        assert await b.ok("subscribe", {"channel": ch}) == {}
        assert await a.push() == join(ch, b, ub)
        await srv.publish_each(ch, {"p": 1})
        assert await b.push() == {"channel": ch, "pub": {"data": {"p": 1}}}
    # A closed connection leaves.


async def test_join_leave_on_disconnect(srv: ServerHandle) -> None:
    ch = "jl:" + uniq()
    ua, ub = uniq("a"), uniq("b")
    async with open_session(srv, ua) as a:
        assert await a.ok("subscribe", {"channel": ch, "join_leave": True}) == {}
        assert await a.push() == join(ch, a, ua)
        async with open_session(srv, ub) as b:
            assert await b.ok("subscribe", {"channel": ch}) == {}
            assert await a.push() == join(ch, b, ub)
        assert await a.push() == leave(ch, b, ub)


async def test_join_leave_needs_presence_permission(srv: ServerHandle) -> None:
    ch = "jlnp:" + uniq()
    async with open_session(srv) as a, open_session(srv) as b:
        assert await a.ok("subscribe", {"channel": ch, "join_leave": True}) == {}
        assert await b.ok("subscribe", {"channel": ch}) == {}
        await srv.publish_each(ch, "after-join")
        assert await a.push() == {"channel": ch, "pub": {"data": "after-join"}}


async def test_force_push_join_leave(srv: ServerHandle) -> None:
    ch = "fjl:" + uniq()
    ua, ub = uniq("a"), uniq("b")
    async with open_session(srv, ua) as a, open_session(srv, ub) as b:
        assert await a.ok("subscribe", {"channel": ch}) == {}
        assert await a.push() == join(ch, a, ua)
        assert await b.ok("subscribe", {"channel": ch}) == {}
        assert await a.push() == join(ch, b, ub)
        assert await b.push() == join(ch, b, ub)
        assert await b.ok("unsubscribe", {"channel": ch}) == {}
        assert await a.push() == leave(ch, b, ub)


# --------------------------------------------------------------------------------------------
# private channels and subscription tokens (§3.2, §3.4, §4.2)


async def test_private_channel_needs_token(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        assert await ws.error("subscribe", {"channel": "$priv:" + uniq()}) == err(103)
        # `$` without a namespace: allow_subscribe_for_client does not open it.
        assert await ws.error("subscribe", {"channel": "$" + uniq()}) == err(103)


async def test_private_channel_with_valid_token(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    tok = srv.sub_token(user, ch, info={"role": "x"}, data={"welcome": 1})
    async with open_session(srv, user) as ws:
        res = await ws.ok("subscribe", {"channel": ch, "token": tok})
        assert res == {"data": {"welcome": 1}}
        me = ws.result["client"]
        pres = await srv.api_async("presence", {"channel": ch})
        assert pres["result"]["presence"] == {
            me: {"user": user, "client": me, "chan_info": {"role": "x"}}
        }
        await srv.publish_each(ch, {"secret": True})
        assert await ws.push() == {"channel": ch, "pub": {"data": {"secret": True}}}


async def test_sub_token_with_expiry_reports_ttl(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    async with open_session(srv, user) as ws:
        res = await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch, ttl=60)})
    assert res["expires"] is True and 58 <= res["ttl"] <= 60 and set(res) == {"expires", "ttl"}


async def test_sub_token_client_claim(srv: ServerHandle) -> None:
    user = uniq()
    async with open_session(srv, user) as ws:
        me = ws.result["client"]
        ch = "$priv:" + uniq()
        assert (
            await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch, client=me)})
            == {}
        )
        ch2 = "$priv:" + uniq()
        tok = srv.sub_token(user, ch2, client="someone-else")
        await ws.send({"id": 70, "subscribe": {"channel": ch2, "token": tok}})
        assert_close(await ws.closed_by(), 3500)


@pytest.mark.parametrize("mismatch", ["channel", "user"])
async def test_sub_token_mismatch_closes_3500(srv: ServerHandle, mismatch: str) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    tok = {
        "channel": srv.sub_token(user, "$priv:other"),
        "user": srv.sub_token(uniq(), ch),
    }[mismatch]
    async with open_session(srv, user) as ws:
        await ws.send({"id": 70, "subscribe": {"channel": ch, "token": tok}})
        assert_close(await ws.closed_by(), 3500)


async def test_sub_token_expired_109_and_invalid_103(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    async with open_session(srv, user) as ws:
        expired = srv.sub_token(user, ch, exp=int(time.time()) - 5)
        assert await ws.error("subscribe", {"channel": ch, "token": expired}) == err(109)
        forged = jwt.encode({"sub": user, "channel": ch}, "x" * 40, algorithm="HS256")
        assert await ws.error("subscribe", {"channel": ch, "token": forged}) == err(103)
        assert await ws.error("subscribe", {"channel": ch, "token": "garbage"}) == err(103)
        # Errors keep the connection and the slot free.
        assert await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch)}) == {}


async def test_sub_token_expire_at_in_past_is_110(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    now = int(time.time())
    tok = srv.sub_token(user, ch, exp=now + 60, expire_at=now - 10)
    async with open_session(srv, user) as ws:
        assert await ws.error("subscribe", {"channel": ch, "token": tok}) == err(110)


async def test_sub_token_for_public_channel_used(srv: ServerHandle) -> None:
    # A token grants subscribe even where namespace permissions do not.
    user = uniq()
    ch = "none:" + uniq()
    async with open_session(srv, user) as ws:
        assert await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch)}) == {}


async def test_anonymous_sub_token(srv: ServerHandle) -> None:
    ch = "$priv:" + uniq()
    async with open_session(srv, token=anon_token(srv)) as ws:
        assert await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token("", ch)}) == {}


# --------------------------------------------------------------------------------------------
# sub_refresh and subscription expiry (§3.4, §3.5)


async def test_sub_refresh_rules(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    async with open_session(srv, user) as ws:
        tok = srv.sub_token(user, ch, ttl=60)
        assert (await ws.ok("subscribe", {"channel": ch, "token": tok}))["expires"] is True
        res = await ws.ok("sub_refresh", {"channel": ch, "token": srv.sub_token(user, ch, ttl=120)})
        assert (
            res["expires"] is True and 118 <= res["ttl"] <= 120 and set(res) == {"expires", "ttl"}
        )
        # Not subscribed: permission denied.
        other = "$priv:" + uniq()
        tok2 = srv.sub_token(user, other, ttl=60)
        assert await ws.error("sub_refresh", {"channel": other, "token": tok2}) == err(103)
        # A token without exp makes the subscription non-expiring.
        assert await ws.ok("sub_refresh", {"channel": ch, "token": srv.sub_token(user, ch)}) == {}


async def test_sub_refresh_without_channel_closes_3501(srv: ServerHandle) -> None:
    user = uniq()
    async with open_session(srv, user) as ws:
        tok = srv.sub_token(user, "$priv:x", ttl=60)
        await ws.send({"id": 3, "sub_refresh": {"token": tok}})
        assert_close(await ws.closed_by(), 3501)


async def test_sub_refresh_without_token_is_107(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    async with open_session(srv, user) as ws:
        assert await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch)}) == {}
        assert await ws.error("sub_refresh", {"channel": ch}) == err(107)


@pytest.mark.parametrize("kind", ["garbage", "other-channel", "other-user"])
async def test_sub_refresh_invalid_token_closes_3500(srv: ServerHandle, kind: str) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    bad = {
        "garbage": "x.y.z",
        "other-channel": srv.sub_token(user, "$priv:other", ttl=60),
        "other-user": srv.sub_token(uniq(), ch, ttl=60),
    }[kind]
    async with open_session(srv, user) as ws:
        assert await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch)}) == {}
        await ws.send({"id": 9, "sub_refresh": {"channel": ch, "token": bad}})
        assert_close(await ws.closed_by(), 3500)


async def test_sub_refresh_expired_token_closes_3006(srv: ServerHandle) -> None:
    user = uniq()
    ch = "$priv:" + uniq()
    async with open_session(srv, user) as ws:
        assert await ws.ok("subscribe", {"channel": ch, "token": srv.sub_token(user, ch)}) == {}
        expired = srv.sub_token(user, ch, exp=int(time.time()) - 5)
        await ws.send({"id": 9, "sub_refresh": {"channel": ch, "token": expired}})
        assert_close(await ws.closed_by(), 3006)


async def test_subscription_expiry_and_refresh(srv: ServerHandle) -> None:
    user = uniq()
    # Whole seconds, truncated: 2-3 s left at creation, so a reply within a second of a
    # loaded machine still reports ttl >= 1.
    exp = int(time.time()) + 3
    lazy_ch, busy_ch = "$priv:" + uniq(), "$priv:" + uniq()
    async with open_session(srv, user) as ws:
        for ch in (lazy_ch, busy_ch):
            res = await ws.ok(
                "subscribe", {"channel": ch, "token": srv.sub_token(user, ch, exp=exp)}
            )
            assert res["expires"] is True and 1 <= res["ttl"] <= 3
        await ws.ok(
            "sub_refresh", {"channel": busy_ch, "token": srv.sub_token(user, busy_ch, ttl=60)}
        )
        push = await ws.push(timeout=exp - time.time() + 3)
        assert push == {
            "channel": lazy_ch,
            "unsubscribe": {"code": 2501, "reason": "subscription expired"},
        }
        assert time.time() >= exp - 0.05
        # Past the old expiry (+ expired_sub_close_delay) the refreshed one still delivers.
        await asyncio.sleep(max(exp + 0.5 - time.time(), 0))
        await srv.publish_each(busy_ch, "still-here")
        await srv.publish_each(lazy_ch, "gone")
        assert await ws.push() == {"channel": busy_ch, "pub": {"data": "still-here"}}
        # The expired one can be subscribed again with a fresh token.
        assert (
            await ws.ok("subscribe", {"channel": lazy_ch, "token": srv.sub_token(user, lazy_ch)})
            == {}
        )


# --------------------------------------------------------------------------------------------
# server-side subscriptions (§3.1, §1.5)


async def test_token_channels_are_server_side_subscriptions(srv: ServerHandle) -> None:
    user = uniq()
    a, b = "srv:" + uniq(), "srv:" + uniq()
    async with open_session(srv, user, channels=[a, b]) as ws:
        assert ws.result["subs"] == {a: {}, b: {}}
        await srv.publish_each(a, {"to": "a"})
        await srv.publish_each(b, {"to": "b"})
        assert await ws.push() == {"channel": a, "pub": {"data": {"to": "a"}, "offset": 1}}
        assert await ws.push() == {"channel": b, "pub": {"data": {"to": "b"}, "offset": 1}}
        pres = await srv.api_async("presence_stats", {"channel": a})
        assert pres["result"] == {"num_clients": 1, "num_users": 1}


async def test_token_subs_with_options(srv: ServerHandle) -> None:
    user = uniq()
    ch = "srv:" + uniq()
    subs = {
        ch: {
            "info": {"ci": 1},
            "data": {"hello": "there"},
            "override": {"presence": {"value": False}},
        }
    }
    b64 = "srv:" + uniq()
    subs[b64] = {"b64data": base64.b64encode(b'{"raw":1}').decode(), "info": {"ci": 2}}
    async with open_session(srv, user, subs=subs) as ws:
        assert ws.result["subs"] == {ch: {"data": {"hello": "there"}}, b64: {"data": {"raw": 1}}}
        # Presence was switched off for `ch` by the override; on for the other one.
        assert (await srv.api_async("presence_stats", {"channel": ch}))["result"] == {
            "num_clients": 0,
            "num_users": 0,
        }
        me = ws.result["client"]
        pres = await srv.api_async("presence", {"channel": b64})
        assert pres["result"]["presence"] == {
            me: {"user": user, "client": me, "chan_info": {"ci": 2}}
        }


async def test_token_channel_in_unknown_namespace_is_102(srv: ServerHandle) -> None:
    async with open_ws(srv) as ws:
        rep = await ws.call("connect", {"token": srv.token(uniq(), channels=["nope:x"])})
    assert rep == {"id": 1, "error": err(102)}


async def test_connect_subs_request_public_channels(srv: ServerHandle) -> None:
    # Centrifugo subscribes a connection server-side to channels named in ConnectRequest.subs
    # when it could subscribe to them itself (centrifugo OnClientConnecting, e.Channels).
    ch, denied = "open:" + uniq(), "none:" + uniq()
    async with open_session(srv, connect={"subs": {ch: {}, denied: {}}}) as ws:
        assert ws.result.get("subs") == {ch: {}}


async def test_server_side_subscription_recovery_via_connect_subs(srv: ServerHandle) -> None:
    user = uniq()
    ch = "srvrec:" + uniq()
    res = await srv.publish_each(ch, "one", "two", "three")
    epoch = res[0]["epoch"]
    connect = {"subs": {ch: {"recover": True, "offset": 1, "epoch": epoch}}}
    async with open_session(srv, user, connect=connect, channels=[ch]) as ws:
        assert ws.result["subs"] == {
            ch: {
                "recoverable": True,
                "positioned": True,
                "epoch": epoch,
                "offset": 1,
                "recovered": True,
                "was_recovering": True,
                "publications": [{"data": "two", "offset": 2}, {"data": "three", "offset": 3}],
            }
        }
        await srv.publish_each(ch, "four")
        assert await ws.push() == {"channel": ch, "pub": {"data": "four", "offset": 4}}


async def test_api_subscribe_push(srv: ServerHandle) -> None:
    user = uniq()
    ch = "srv:" + uniq()
    async with open_session(srv, user) as ws:
        rep = await srv.api_async("subscribe", {"user": user, "channel": ch, "data": {"d": 1}})
        assert rep == {"result": {}}
        assert await ws.push() == {"channel": ch, "subscribe": {"data": {"d": 1}}}
        await srv.publish_each(ch, "x")
        assert await ws.push() == {"channel": ch, "pub": {"data": "x", "offset": 1}}
        rep = await srv.api_async("unsubscribe", {"user": user, "channel": ch})
        assert await ws.push() == {
            "channel": ch,
            "unsubscribe": {"code": 2000, "reason": "server unsubscribe"},
        }


# --------------------------------------------------------------------------------------------
# positioning and recovery (§5)


async def test_positioning_flags(srv: ServerHandle) -> None:
    async with open_session(srv) as ws:
        ch = "pos:" + uniq()
        await srv.publish_each(ch, 1, 2)
        res = await ws.ok("subscribe", {"channel": ch, "positioned": True})
        assert set(res) == {"positioned", "epoch", "offset"} and res["positioned"] is True
        assert res["offset"] == 2 and is_epoch(res["epoch"])
        # Without allow_positioning or history permission the request is ignored.
        assert await ws.ok("subscribe", {"channel": "posno:" + uniq(), "positioned": True}) == {}
        assert await ws.ok("subscribe", {"channel": "posno:" + uniq(), "recoverable": True}) == {}
        # History permission grants both.
        res = await ws.ok("subscribe", {"channel": "hrec:" + uniq(), "recoverable": True})
        assert set(res) == {"recoverable", "positioned", "epoch"}, res


async def test_stream_recovery(srv: ServerHandle) -> None:
    ch = "rec:" + uniq()
    async with open_session(srv) as live:
        first = await live.ok("subscribe", {"channel": ch})
        assert set(first) == {"recoverable", "positioned", "epoch"}, first
        epoch = first["epoch"]
        await srv.publish_each(ch, *(f"m{i}" for i in range(1, 4)))
        for i in range(1, 4):
            assert await live.push() == {"channel": ch, "pub": {"data": f"m{i}", "offset": i}}

    async with open_session(srv) as ws:
        # Missed 2 and 3.
        res = await ws.ok(
            "subscribe", {"channel": ch, "recover": True, "offset": 1, "epoch": epoch}
        )
        assert res == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "offset": 1,
            "recovered": True,
            "was_recovering": True,
            "publications": [{"data": "m2", "offset": 2}, {"data": "m3", "offset": 3}],
        }
        # Nothing missed: recovered with no publications, offset echoes the client's.
        ch_state = {"channel": ch, "recover": True, "offset": 3, "epoch": epoch}
        await ws.ok("unsubscribe", {"channel": ch})
        assert await ws.ok("subscribe", ch_state) == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "offset": 3,
            "recovered": True,
            "was_recovering": True,
        }
        # Wrong epoch: not recovered, no error, current position returned.
        await ws.ok("unsubscribe", {"channel": ch})
        res = await ws.ok("subscribe", {**ch_state, "offset": 1, "epoch": "otherepo"})
        assert res == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "offset": 3,
            "was_recovering": True,
        }
        # Live publications continue after recovery.
        await srv.publish_each(ch, "m4")
        assert await ws.push() == {"channel": ch, "pub": {"data": "m4", "offset": 4}}


async def test_recovery_limit(srv: ServerHandle) -> None:
    ch = "rec:" + uniq()
    res = await srv.publish_each(ch, *range(1, 12))  # offsets 1..11
    epoch = res[0]["epoch"]
    async with open_session(srv) as ws:
        # Exactly recovery_max_publication_limit (5) missed: recovered.
        ok = await ws.ok("subscribe", {"channel": ch, "recover": True, "offset": 6, "epoch": epoch})
        assert ok["recovered"] is True and [p["offset"] for p in ok["publications"]] == [
            7,
            8,
            9,
            10,
            11,
        ]
        await ws.ok("unsubscribe", {"channel": ch})
        # Six missed: over the limit, not recovered, no publications, top offset.
        res2 = await ws.ok(
            "subscribe", {"channel": ch, "recover": True, "offset": 5, "epoch": epoch}
        )
        assert res2 == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "offset": 11,
            "was_recovering": True,
        }


async def test_recovery_from_empty_epoch(srv: ServerHandle) -> None:
    # A client that never saw the epoch (offset 0, epoch "") recovers from the start.
    ch = "rec:" + uniq()
    res = await srv.publish_each(ch, "a", "b")
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", {"channel": ch, "recover": True})
    assert out == {
        "recoverable": True,
        "positioned": True,
        "epoch": res[0]["epoch"],
        "recovered": True,
        "was_recovering": True,
        "publications": [{"data": "a", "offset": 1}, {"data": "b", "offset": 2}],
    }


async def test_cache_recovery(srv: ServerHandle) -> None:
    ch = "cache:" + uniq()
    res = await srv.publish_each(ch, "old", "latest")
    epoch = res[0]["epoch"]
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", {"channel": ch, "recover": True})
        assert out == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "recovered": True,
            "was_recovering": True,
            "publications": [{"data": "latest", "offset": 2}],
        }
        await ws.ok("unsubscribe", {"channel": ch})
        # Client already holds the top: recovered, nothing to send.
        same = await ws.ok(
            "subscribe", {"channel": ch, "recover": True, "offset": 2, "epoch": epoch}
        )
        assert same == {
            "recoverable": True,
            "positioned": True,
            "epoch": epoch,
            "offset": 2,
            "recovered": True,
            "was_recovering": True,
        }
        await ws.ok("unsubscribe", {"channel": ch})
        # Client is behind by more than one: only the latest publication comes.
        behind = await ws.ok(
            "subscribe", {"channel": ch, "recover": True, "offset": 0, "epoch": epoch}
        )
        assert behind["recovered"] is True and behind["publications"] == [
            {"data": "latest", "offset": 2}
        ]


async def test_cache_recovery_of_empty_channel_is_not_recovered(srv: ServerHandle) -> None:
    ch = "cache:" + uniq()
    async with open_session(srv) as ws:
        out = await ws.ok("subscribe", {"channel": ch, "recover": True})
    assert out.get("recovered") is None and out["was_recovering"] is True


async def test_epoch_change_is_insufficient_state(srv: ServerHandle) -> None:
    # A positioned subscriber that sees a publication from another epoch cannot trust its
    # state: client-side subscriptions get unsubscribe 2500, server-side ones close 3010.
    ch = "short:" + uniq()
    async with open_session(srv) as client_side, open_session(srv, channels=[ch]) as server_side:
        res = await client_side.ok("subscribe", {"channel": ch})
        assert set(res) == {"positioned", "epoch"}, res
        old_epoch = res["epoch"]
        assert server_side.result["subs"][ch]["epoch"] == old_epoch
        # Let the stream meta expire (history_meta_ttl 1 s), then publish into a new epoch.
        await asyncio.sleep(1.5)
        new = await srv.publish_each(ch, "new-epoch")
        assert new[0]["epoch"] != old_epoch and new[0]["offset"] == 1
        assert await client_side.push() == {
            "channel": ch,
            "unsubscribe": {"code": 2500, "reason": "insufficient state"},
        }
        assert_close(await server_side.closed_by(), 3010)
