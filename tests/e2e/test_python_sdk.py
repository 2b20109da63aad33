"""centrifuge-python (the official Python SDK) and cent (the official HTTP API client) against a
real server process.

The SDK runs in the test's event loop; every expectation is an awaited SDK event (recorded into
per-event asyncio queues), never a sleep. Publications are made through `cent.AsyncClient`.
Channel names carry a per-test suffix so tests sharing the module's server do not collide.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cent import (
    AsyncClient,
    Disconnect,
    DisconnectRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from centrifuge import (
    Client,
    ClientState,
    DeltaType,
    ReplyError,
    StreamPosition,
    Subscription,
    SubscriptionState,
    SubscriptionUnsubscribedError,
)

from app import VERSION_STRING
from tests.support.sdk import ClientEvents, SubEvents

from .helpers import ServerHandle

EXPIRED_CLOSE_DELAY = 0.5
PING_INTERVAL = 2
PONG_TIMEOUT = 1
RECOVERY_LIMIT = 5

CONFIG = {
    "client": {
        # Short, so that every SDK client here keeps answering pings during the tests.
        "ping_interval": f"{PING_INTERVAL}s",
        "pong_timeout": f"{PONG_TIMEOUT}s",
        # Short, so that a connection or subscription whose refresh did not work would be
        # closed by the server well within the refresh tests.
        "expired_close_delay": f"{int(EXPIRED_CLOSE_DELAY * 1000)}ms",
        "expired_sub_close_delay": f"{int(EXPIRED_CLOSE_DELAY * 1000)}ms",
        # Small, so that a reconnect missing more than this is provably not recovered.
        "recovery_max_publication_limit": RECOVERY_LIMIT,
    },
    "channel": {
        "namespaces": [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "allow_publish_for_client": True,
                "presence": True,
                "join_leave": True,
                "allow_presence_for_subscriber": True,
                "history_size": 100,
                "history_ttl": "300s",
                "allow_history_for_subscriber": True,
                "force_recovery": True,
            },
            # Nothing allowed: subscribe/publish must be denied with 103.
            {"name": "locked"},
            {
                "name": "delta",
                "allow_subscribe_for_client": True,
                "history_size": 10,
                "history_ttl": "300s",
                "force_recovery": True,
                "allow_history_for_subscriber": True,
                "allowed_delta_types": ["fossil"],
                "delta_publish": True,
            },
        ]
    },
    # Centrifugo's built-in RPC extension: method "ping" answers an empty result.
    "rpc": {"ping": {"enabled": True}},
}

EVENT_TIMEOUT = 5.0


class TokenSource:
    """A get_token / get_subscription_token callback that counts and queues its calls."""

    def __init__(self, make: Callable[..., str]) -> None:
        self._make = make
        self.calls: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.count = 0

    async def __call__(self, *args: Any) -> str:
        self.count += 1
        self.calls.put_nowait(args)
        return self._make(*args)

    async def next_call(self, timeout: float = EVENT_TIMEOUT) -> tuple[Any, ...]:
        try:
            return await asyncio.wait_for(self.calls.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"token callback not called within {timeout}s") from None


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


def uid() -> str:
    return uuid.uuid4().hex[:10]


SdkFactory = Callable[..., tuple[Client, ClientEvents]]


@pytest.fixture
async def sdk(srv: ServerHandle) -> AsyncIterator[SdkFactory]:
    """`make(token="", get_token=None, **client_kwargs) -> (Client, ClientEvents)`.

    Every client made is disconnected at the end of the test.
    """
    created: list[Client] = []

    def make(
        token: str = "", get_token: Callable[[], Awaitable[str]] | None = None, **kw: Any
    ) -> tuple[Client, ClientEvents]:
        events = ClientEvents()
        kw.setdefault("min_reconnect_delay", 0.05)
        kw.setdefault("max_reconnect_delay", 0.5)
        client = Client(
            srv.ws_url,
            events=events,
            token=token,
            get_token=get_token,
            proxy=None,  # never route 127.0.0.1 through a proxy from the environment
            **kw,
        )
        created.append(client)
        return client, events

    yield make
    for client in created:
        await client.disconnect()


@pytest.fixture
async def api(srv: ServerHandle) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(srv.api_url, srv.api_key)
    yield client
    await client.close()


async def connected(client: Client, events: ClientEvents) -> Any:
    """Connect and return the ConnectedContext."""
    # connect() returns once the first attempt is over: a terminal failure shows already.
    await client.connect()
    assert client.state != ClientState.DISCONNECTED, f"connect failed: {events.log}"
    return await events.next("connected")


async def subscribed(client: Client, channel: str, **kw: Any) -> tuple[Subscription, SubEvents]:
    """A new subscription of `client` to `channel`, after its `subscribed` event."""
    events = SubEvents()
    sub = client.new_subscription(channel, events=events, **kw)
    await sub.subscribe()
    await events.next("subscribed")
    return sub, events


def client_info_tuple(info: Any) -> tuple[str, str, Any, Any]:
    return (info.user, info.client, info.conn_info, info.chan_info)


# --------------------------------------------------------------------------------------------
# connect, publish, presence, history


async def test_connect_with_jwt(srv: ServerHandle, sdk: SdkFactory) -> None:
    client, ev = sdk(srv.token("alice-" + uid(), ttl=3600))
    ctx = await connected(client, ev)
    uuid.UUID(ctx.client)  # Centrifugo client ids are UUIDs
    assert ctx.version == VERSION_STRING
    assert ctx.data is None
    assert client.state == ClientState.CONNECTED
    assert client.client_id == ctx.client
    assert ev.names() == ["connecting", "connected"]


async def test_api_publication_reaches_subscriber(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    ch = f"chat:news-{uid()}"
    client, ev = sdk(srv.token("bob"))
    await connected(client, ev)
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev)
    await sub.subscribe()
    sctx = await sev.next("subscribed")
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert sctx.channel == ch
    assert sctx.recoverable is True  # force_recovery in namespace chat
    assert sctx.positioned is True
    assert sctx.was_recovering is False
    assert sctx.stream_position.offset == 0

    res = await api.publish(PublishRequest(channel=ch, data={"text": "hello", "n": 1}))
    assert res.offset == 1
    assert res.epoch == sctx.stream_position.epoch
    pub = (await sev.next("publication")).pub
    assert pub.data == {"text": "hello", "n": 1}
    assert pub.offset == 1
    assert pub.info is None  # server API publications carry no ClientInfo
    assert pub.tags == {}
    assert pub.delta is False

    res = await api.publish(PublishRequest(channel=ch, data=[1, "two"], tags={"k": "v"}))
    assert res.offset == 2
    pub = (await sev.next("publication")).pub
    assert (pub.data, pub.offset, pub.tags) == ([1, "two"], 2, {"k": "v"})


async def test_client_publish_reaches_other_client_with_info(
    srv: ServerHandle, sdk: SdkFactory
) -> None:
    ch = f"chat:room-{uid()}"
    reader, rev = sdk(srv.token("reader"))
    await connected(reader, rev)
    _, sev = await subscribed(reader, ch)

    writer, wev = sdk(srv.token("writer", info={"name": "Writer"}))
    wctx = await connected(writer, wev)
    # allow_publish_for_client: the writer need not be subscribed.
    await writer.publish(ch, {"msg": "from client"})
    pub = (await sev.next("publication")).pub
    assert pub.data == {"msg": "from client"}
    assert pub.offset == 1
    assert pub.info is not None
    assert client_info_tuple(pub.info) == ("writer", wctx.client, {"name": "Writer"}, None)

    with pytest.raises(ReplyError) as exc:
        await writer.publish(f"locked:room-{uid()}", {"msg": "nope"})
    assert exc.value.code == 103


async def test_presence_and_presence_stats(srv: ServerHandle, sdk: SdkFactory) -> None:
    ch = f"chat:presence-{uid()}"
    a, aev = sdk(srv.token("pa", info={"n": "A"}))
    actx = await connected(a, aev)
    asub, _ = await subscribed(a, ch)
    b, bev = sdk(srv.token("pb"))
    bctx = await connected(b, bev)
    await subscribed(b, ch)
    a2, a2ev = sdk(srv.token("pa"))
    a2ctx = await connected(a2, a2ev)
    await subscribed(a2, ch)

    presence = await asub.presence()
    assert set(presence.clients) == {actx.client, bctx.client, a2ctx.client}
    assert client_info_tuple(presence.clients[actx.client]) == ("pa", actx.client, {"n": "A"}, None)
    assert client_info_tuple(presence.clients[bctx.client]) == ("pb", bctx.client, None, None)
    assert presence.clients[a2ctx.client].user == "pa"

    stats = await asub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (3, 2)

    # Client-level calls give the same answer.
    stats = await b.presence_stats(ch)
    assert (stats.num_clients, stats.num_users) == (3, 2)


async def test_history(srv: ServerHandle, sdk: SdkFactory, api: AsyncClient) -> None:
    ch = f"chat:history-{uid()}"
    client, ev = sdk(srv.token("historian"))
    await connected(client, ev)
    sub, sev = await subscribed(client, ch)
    epoch = ""
    for i in range(1, 6):
        res = await api.publish(PublishRequest(channel=ch, data={"i": i}))
        assert res.offset == i
        epoch = res.epoch
    for i in range(1, 6):
        assert (await sev.next("publication")).pub.offset == i

    def offsets(result: Any) -> list[int]:
        return [p.offset for p in result.publications]

    res = await sub.history(limit=2)
    assert offsets(res) == [1, 2]
    assert [p.data for p in res.publications] == [{"i": 1}, {"i": 2}]
    assert (res.offset, res.epoch) == (5, epoch)

    res = await sub.history(limit=2, reverse=True)
    assert offsets(res) == [5, 4]

    res = await sub.history(limit=10, since=StreamPosition(offset=2, epoch=epoch))
    assert offsets(res) == [3, 4, 5]

    res = await sub.history(limit=10, since=StreamPosition(offset=4, epoch=epoch), reverse=True)
    assert offsets(res) == [3, 2, 1]

    res = await sub.history(limit=-1)
    assert offsets(res) == [1, 2, 3, 4, 5]

    res = await sub.history(limit=0)  # position only
    assert res.publications == []
    assert (res.offset, res.epoch) == (5, epoch)

    with pytest.raises(ReplyError) as exc:
        await sub.history(limit=10, since=StreamPosition(offset=1, epoch="not-" + epoch))
    assert exc.value.code == 112

    # allow_history_for_subscriber: not subscribed ⇒ 103; history off in the namespace ⇒ 108.
    with pytest.raises(ReplyError) as exc:
        await client.history(f"chat:history-{uid()}", limit=1)
    assert exc.value.code == 103
    with pytest.raises(ReplyError) as exc:
        await client.history(f"locked:history-{uid()}", limit=1)
    assert exc.value.code == 108
    with pytest.raises(ReplyError) as exc:
        await client.presence(f"chat:history-{uid()}")
    assert exc.value.code == 103


async def test_rpc_ping_extension(srv: ServerHandle, sdk: SdkFactory) -> None:
    client, ev = sdk(srv.token("rpc-" + uid()))
    await connected(client, ev)
    res = await client.rpc("ping", {})
    assert res.data is None  # empty RPCReply
    # With an RPC handler registered (the extension) but no proxy: unknown method ⇒ 104.
    with pytest.raises(ReplyError) as exc:
        await client.rpc("no-such-method", {})
    assert exc.value.code == 104
    assert client.state == ClientState.CONNECTED


async def test_fossil_delta_publications(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    ch = f"delta:doc-{uid()}"
    client, ev = sdk(srv.token("delta-" + uid()))
    await connected(client, ev)
    _, sev = await subscribed(client, ch, delta=DeltaType.FOSSIL)
    docs = [
        {"title": "report", "body": "x" * 200, "rev": 1},
        {"title": "report", "body": "x" * 200, "rev": 2},
        {"title": "report", "body": "x" * 199 + "y", "rev": 3},
    ]
    for doc in docs:
        await api.publish(PublishRequest(channel=ch, data=doc))
    pubs = [(await sev.next("publication")).pub for _ in docs]
    # The SDK applies the patches: the app sees every full document, in order.
    assert [p.data for p in pubs] == docs
    assert [p.offset for p in pubs] == [1, 2, 3]
    # On the wire the first one after subscribing is full, the following ones are patches.
    assert [p.delta for p in pubs] == [False, True, True]


async def test_delta_publish_without_negotiation_sends_full_publications(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    ch = f"delta:plain-{uid()}"
    client, ev = sdk(srv.token("nodelta-" + uid()))
    await connected(client, ev)
    sub, sev = await subscribed(client, ch)  # no delta requested
    for rev in (1, 2):
        await api.publish(PublishRequest(channel=ch, data={"rev": rev}))
    pubs = [(await sev.next("publication")).pub for _ in range(2)]
    assert [(p.data, p.offset) for p in pubs] == [({"rev": 1}, 1), ({"rev": 2}, 2)]
    # Not negotiated: `delta` on the wire would claim the full payload is a patch.
    assert [p.delta for p in pubs] == [False, False]
    # The history API never returns deltas either.
    hist = await sub.history(limit=10)
    assert [(p.offset, p.delta) for p in hist.publications] == [(1, False), (2, False)]


async def test_protobuf_protocol(srv: ServerHandle, sdk: SdkFactory, api: AsyncClient) -> None:
    ch = f"chat:proto-{uid()}"
    client, ev = sdk(srv.token("proto-" + uid(), info={"p": 1}), use_protobuf=True)
    ctx = await connected(client, ev)
    _, sev = await subscribed(client, ch)
    await api.publish(PublishRequest(channel=ch, data={"x": 1}))
    pub = (await sev.next("publication")).pub
    # Protobuf carries payloads as bytes: the published JSON, as bytes.
    assert json.loads(pub.data) == {"x": 1}
    assert pub.offset == 1

    # A JSON client sees what the Protobuf client publishes, and vice versa.
    jclient, jev = sdk(srv.token("json-" + uid()))
    await connected(jclient, jev)
    _, jsev = await subscribed(jclient, ch)
    await client.publish(ch, b'{"from":"protobuf"}')
    jpub = (await jsev.next("publication")).pub
    assert (jpub.data, jpub.offset) == ({"from": "protobuf"}, 2)
    assert (jpub.info.client, jpub.info.conn_info) == (ctx.client, {"p": 1})
    ppub = (await sev.next("publication")).pub
    assert (json.loads(ppub.data), ppub.offset) == ({"from": "protobuf"}, 2)
    assert json.loads(ppub.info.conn_info) == {"p": 1}


# --------------------------------------------------------------------------------------------
# tokens


async def test_connection_token_refresh_keeps_connection(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "refresher-" + uid()
    ttl = 2
    tokens = TokenSource(lambda: srv.token(user, ttl=ttl))
    first = srv.token(user, ttl=ttl)
    first_exp = int(time.time() + ttl)
    client, ev = sdk(first, get_token=tokens)
    ctx = await connected(client, ev)
    ch = f"chat:alive-{uid()}"
    _, sev = await subscribed(client, ch)

    # Keep taking refreshes until the first token's expiry plus the server's close delay has
    # passed: a refresh the server did not accept would have closed the connection by then.
    deadline = first_exp + EXPIRED_CLOSE_DELAY + 0.3
    while time.time() < deadline:
        await tokens.next_call(timeout=ttl + 2)
    assert tokens.count >= 1

    await api.publish(PublishRequest(channel=ch, data={"still": "here"}))
    assert (await sev.next("publication")).pub.data == {"still": "here"}
    assert client.state == ClientState.CONNECTED
    assert client.client_id == ctx.client  # same connection, never reconnected
    assert ev.names() == ["connecting", "connected"]
    assert sev.names() == ["subscribing", "subscribed", "publication"]


async def test_refresh_token_with_other_channels_reconnects_3010(
    srv: ServerHandle, sdk: SdkFactory
) -> None:
    """A refreshed token whose `channels` differ: the server closes with 3010 so that the new
    server-side subscriptions apply; the SDK reconnects with the new token."""
    user = "rechannel-" + uid()
    # `locked` admits no client-side subscribe: on reconnect the SDK asks again for old_ch
    # (connect `subs`), and Centrifugo grants that only where the client could subscribe itself.
    old_ch, new_ch = f"locked:old-{uid()}", f"locked:new-{uid()}"
    tokens = TokenSource(lambda: srv.token(user, ttl=3600, channels=[new_ch]))
    client, ev = sdk(srv.token(user, ttl=2, channels=[old_ch]), get_token=tokens)
    ctx1 = await connected(client, ev)
    assert (await ev.next("subscribed")).channel == old_ch
    cctx = await ev.next_matching("connecting", lambda c: c.code != 0)
    assert (cctx.code, cctx.reason) == (3010, "insufficient state")
    assert tokens.count == 1
    ctx2 = await ev.next("connected")
    assert ctx2.client != ctx1.client
    assert (await ev.next("subscribed")).channel == new_ch
    assert (await ev.next("unsubscribed")).channel == old_ch
    assert client.state == ClientState.CONNECTED


async def test_api_refresh_expired_closes_3005_and_sdk_reconnects(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "apirefresh-" + uid()
    client, ev = sdk(srv.token(user, ttl=3600))
    ctx1 = await connected(client, ev)
    await api.refresh(RefreshRequest(user=user, client=ctx1.client, expired=True))
    cctx = await ev.next_matching("connecting", lambda c: c.code != 0)
    assert (cctx.code, cctx.reason) == (3005, "connection expired")
    # The token itself is still valid: the reconnect succeeds with it.
    ctx2 = await ev.next("connected")
    assert ctx2.client != ctx1.client
    assert client.state == ClientState.CONNECTED


async def test_connection_expires_without_refresh(srv: ServerHandle, sdk: SdkFactory) -> None:
    """No get_token: the server closes with 3005 after expiry + close delay; the SDK reconnects,
    gets 109 for the stale token and, with nothing to get a new one with, gives up."""
    user = "expire-" + uid()
    # `exp` is whole seconds: with ttl=1 it may already be past when connecting.
    client, ev = sdk(srv.token(user, ttl=2))
    await connected(client, ev)
    cctx = await ev.next_matching("connecting", lambda c: c.code != 0, timeout=EVENT_TIMEOUT)
    assert (cctx.code, cctx.reason) == (3005, "connection expired")
    dctx = await ev.next("disconnected")
    assert (dctx.code, dctx.reason) == (1, "unauthorized")  # the SDK's own code
    assert client.state == ClientState.DISCONNECTED


async def test_expired_token_on_connect_calls_get_token(srv: ServerHandle, sdk: SdkFactory) -> None:
    user = "late-" + uid()
    tokens = TokenSource(lambda: srv.token(user, ttl=3600))
    client, ev = sdk(srv.token(user, exp=int(time.time()) - 60), get_token=tokens)
    await client.connect()
    err = await ev.next("error")
    assert isinstance(err.error, ReplyError)
    assert err.error.code == 109  # token expired: temporary for the SDK
    ctx = await ev.next("connected")
    assert tokens.count == 1
    uuid.UUID(ctx.client)
    assert client.state == ClientState.CONNECTED
    assert "disconnected" not in ev.names()


async def test_private_channel_with_subscription_token(srv: ServerHandle, sdk: SdkFactory) -> None:
    user = "priv-" + uid()
    ch = f"$chat:secret-{uid()}"
    client, ev = sdk(srv.token(user))
    cctx = await connected(client, ev)
    sub_tokens = TokenSource(
        lambda channel: srv.sub_token(user, channel, info={"role": "reader"}, data={"hi": 1})
    )
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev, get_token=sub_tokens)
    await sub.subscribe()
    sctx = await sev.next("subscribed")
    assert await sub_tokens.next_call() == (ch,)
    assert sctx.data == {"hi": 1}  # the token's `data` claim comes back in the result
    presence = await sub.presence()
    assert client_info_tuple(presence.clients[cctx.client]) == (
        user,
        cctx.client,
        None,
        {"role": "reader"},  # the token's `info` claim becomes chan_info
    )

    # The same kind of channel without a token is denied.
    nev = SubEvents()
    other = client.new_subscription(f"$chat:secret-{uid()}", events=nev)
    await other.subscribe()
    unsub = await nev.next("unsubscribed")
    assert (unsub.code, unsub.reason) == (103, "permission denied")
    assert client.state == ClientState.CONNECTED


async def test_expired_subscription_token_fetches_new_one(
    srv: ServerHandle, sdk: SdkFactory
) -> None:
    user = "subexp-" + uid()
    ch = f"$chat:exp-{uid()}"
    client, ev = sdk(srv.token(user))
    await connected(client, ev)
    sub_tokens = TokenSource(lambda channel: srv.sub_token(user, channel, ttl=3600))
    sev = SubEvents()
    expired = srv.sub_token(user, ch, exp=int(time.time()) - 60)
    sub = client.new_subscription(ch, events=sev, token=expired, get_token=sub_tokens)
    await sub.subscribe()
    err = await sev.next("error")
    assert isinstance(err.error, ReplyError) and err.error.code == 109
    await sev.next("subscribed")
    assert sub_tokens.count == 1
    assert sub.state == SubscriptionState.SUBSCRIBED


async def test_subscription_token_refresh(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "subref-" + uid()
    ch = f"$chat:refresh-{uid()}"
    ttl = 2
    client, ev = sdk(srv.token(user))
    cctx = await connected(client, ev)
    sub_tokens = TokenSource(lambda channel: srv.sub_token(user, channel, ttl=ttl))
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev, get_token=sub_tokens)
    await sub.subscribe()
    await sev.next("subscribed")
    assert await sub_tokens.next_call() == (ch,)
    first_exp = int(time.time() + ttl)

    # As for the connection: outlive the first token's expiry plus the close delay.
    deadline = first_exp + EXPIRED_CLOSE_DELAY + 0.3
    refreshes = 0
    while time.time() < deadline:
        assert await sub_tokens.next_call(timeout=ttl + 2) == (ch,)
        refreshes += 1
    assert refreshes >= 1

    await api.publish(PublishRequest(channel=ch, data={"after": "refresh"}))
    assert (await sev.next("publication")).pub.data == {"after": "refresh"}
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert sev.names() == ["subscribing", "subscribed", "publication"]
    assert client.client_id == cctx.client
    assert ev.names() == ["connecting", "connected"]


async def test_subscription_expires_without_refresh(srv: ServerHandle, sdk: SdkFactory) -> None:
    """A static subscription token that expires: unsubscribe push 2501 (the SDK resubscribes),
    then 109 for the stale token and, without get_token, unsubscribed as unauthorized."""
    user = "subexpire-" + uid()
    ch = f"$chat:subexpire-{uid()}"
    client, ev = sdk(srv.token(user))
    cctx = await connected(client, ev)
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev, token=srv.sub_token(user, ch, ttl=2))
    await sub.subscribe()
    await sev.next("subscribed")
    sctx = await sev.next_matching("subscribing", lambda c: c.code != 0)
    assert (sctx.code, sctx.reason) == (2501, "subscription expired")
    uctx = await sev.next("unsubscribed")
    assert (uctx.code, uctx.reason) == (1, "unauthorized")  # the SDK's own code
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    # Only the subscription ended: same connection.
    assert client.client_id == cctx.client
    assert client.state == ClientState.CONNECTED


async def test_api_unsubscribe_of_client_side_subscription(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "apiunsub-" + uid()
    ch = f"chat:apiunsub-{uid()}"
    client, ev = sdk(srv.token(user))
    await connected(client, ev)
    sub, sev = await subscribed(client, ch)
    await api.unsubscribe(UnsubscribeRequest(user=user, channel=ch))
    uctx = await sev.next("unsubscribed")
    assert (uctx.code, uctx.reason) == (2000, "server unsubscribe")  # terminal for the SDK
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    stats = await api.presence_stats(PresenceStatsRequest(channel=ch))
    assert (stats.num_clients, stats.num_users) == (0, 0)
    assert client.state == ClientState.CONNECTED


# --------------------------------------------------------------------------------------------
# recovery


@pytest.mark.parametrize(
    ("code", "reason"), [(4000, "come back"), (3011, "force reconnect")], ids=["4000", "3011"]
)
async def test_recovery_after_server_disconnect(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient, code: int, reason: str
) -> None:
    user = "recover-" + uid()
    ch = f"chat:recover-{uid()}"
    client, ev = sdk(srv.token(user))
    ctx1 = await connected(client, ev)
    sub, sev = await subscribed(client, ch)
    epoch = ""
    for i in (1, 2):
        epoch = (await api.publish(PublishRequest(channel=ch, data={"i": i}))).epoch
        assert (await sev.next("publication")).pub.offset == i

    async def publish_while_disconnected(cctx: Any) -> None:
        # Runs inside the SDK's on_connecting handler: the SDK schedules its reconnect only
        # after the handler returns, so these happen while the client is not connected.
        if cctx.code == code:
            for i in (3, 4, 5):
                res = await api.publish(PublishRequest(channel=ch, data={"i": i}))
                assert res.offset == i

    ev.hooks["connecting"] = publish_while_disconnected
    await api.disconnect(
        DisconnectRequest(
            user=user, client=ctx1.client, disconnect=Disconnect(code=code, reason=reason)
        )
    )
    cctx = await ev.next_matching("connecting", lambda c: c.code != 0)
    assert (cctx.code, cctx.reason) == (code, reason)
    ctx2 = await ev.next("connected")
    assert ctx2.client != ctx1.client

    sctx = await sev.next("subscribed")
    assert sctx.was_recovering is True
    assert sctx.recovered is True
    assert sctx.recoverable is True
    assert sctx.stream_position.epoch == epoch
    # Recovered: the result carries the client's own position; the publications advance it.
    assert sctx.stream_position.offset == 2
    pubs = [(await sev.next("publication")).pub for _ in range(3)]
    assert [(p.offset, p.data) for p in pubs] == [(3, {"i": 3}), (4, {"i": 4}), (5, {"i": 5})]

    # Nothing duplicated after the recovered ones: the next one is the next offset.
    await api.publish(PublishRequest(channel=ch, data={"i": 6}))
    pub = (await sev.next("publication")).pub
    assert (pub.offset, pub.data) == (6, {"i": 6})
    assert sev.pending("publication") == []
    assert client.state == ClientState.CONNECTED


async def test_recovery_with_nothing_missed(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "norec-" + uid()
    ch = f"chat:norec-{uid()}"
    client, ev = sdk(srv.token(user))
    ctx1 = await connected(client, ev)
    _, sev = await subscribed(client, ch)
    await api.publish(PublishRequest(channel=ch, data={"i": 1}))
    assert (await sev.next("publication")).pub.offset == 1
    await api.disconnect(
        DisconnectRequest(
            user=user, client=ctx1.client, disconnect=Disconnect(code=4001, reason="x")
        )
    )
    await ev.next("connected")
    sctx = await sev.next("subscribed")
    assert (sctx.was_recovering, sctx.recovered) == (True, True)
    assert sctx.stream_position.offset == 1
    await api.publish(PublishRequest(channel=ch, data={"i": 2}))
    pub = (await sev.next("publication")).pub
    assert (pub.offset, pub.data) == (2, {"i": 2})


async def test_recovery_limit_exceeded_is_not_recovered(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "toomany-" + uid()
    ch = f"chat:toomany-{uid()}"
    client, ev = sdk(srv.token(user))
    ctx1 = await connected(client, ev)
    _, sev = await subscribed(client, ch)
    await api.publish(PublishRequest(channel=ch, data={"i": 1}))
    assert (await sev.next("publication")).pub.offset == 1
    missed = RECOVERY_LIMIT + 1
    top = 1 + missed

    async def publish_while_disconnected(cctx: Any) -> None:
        if cctx.code == 4003:
            for i in range(2, top + 1):
                await api.publish(PublishRequest(channel=ch, data={"i": i}))

    ev.hooks["connecting"] = publish_while_disconnected
    await api.disconnect(
        DisconnectRequest(user=user, client=ctx1.client, disconnect=Disconnect(code=4003))
    )
    await ev.next("connected")
    sctx = await sev.next("subscribed")
    assert (sctx.was_recovering, sctx.recovered) == (True, False)
    assert sctx.stream_position.offset == top  # position moves to the top, nothing delivered
    await api.publish(PublishRequest(channel=ch, data={"i": top + 1}))
    pub = (await sev.next("publication")).pub
    assert (pub.offset, pub.data) == (top + 1, {"i": top + 1})


# --------------------------------------------------------------------------------------------
# server-side subscriptions


async def test_server_side_subscription_from_token_with_recovery(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "ss-" + uid()
    ch = f"chat:ss-{uid()}"
    client, ev = sdk(srv.token(user, channels=[ch]))
    ctx1 = await connected(client, ev)
    sctx = await ev.next("subscribed")
    assert sctx.channel == ch
    assert sctx.recoverable is True
    assert sctx.was_recovering is False
    epoch = sctx.stream_position.epoch

    for i in (1, 2):
        res = await api.publish(PublishRequest(channel=ch, data={"i": i}))
        assert res.epoch == epoch
        pctx = await ev.next("publication")
        assert (pctx.channel, pctx.pub.offset, pctx.pub.data) == (ch, i, {"i": i})

    async def publish_while_disconnected(cctx: Any) -> None:
        if cctx.code == 4002:
            for i in (3, 4):
                await api.publish(PublishRequest(channel=ch, data={"i": i}))

    ev.hooks["connecting"] = publish_while_disconnected
    await api.disconnect(
        DisconnectRequest(user=user, disconnect=Disconnect(code=4002, reason="reconnect"))
    )
    ctx2 = await ev.next("connected")
    assert ctx2.client != ctx1.client
    sctx = await ev.next("subscribed")
    assert sctx.channel == ch
    assert (sctx.was_recovering, sctx.recovered) == (True, True)
    got = [(await ev.next("publication")) for _ in range(2)]
    assert [(p.channel, p.pub.offset, p.pub.data) for p in got] == [
        (ch, 3, {"i": 3}),
        (ch, 4, {"i": 4}),
    ]
    assert "unsubscribed" not in ev.names()

    # join_leave in the namespace: server-side subscribers get join/leave pushes.
    other, oev = sdk(srv.token("joiner", info={"j": 1}))
    octx = await connected(other, oev)
    osub, _ = await subscribed(other, ch)
    join = await ev.next_matching("join", lambda c: c.info.client == octx.client)
    assert join.channel == ch
    assert client_info_tuple(join.info) == ("joiner", octx.client, {"j": 1}, None)
    await osub.unsubscribe()
    leave = await ev.next_matching("leave", lambda c: c.info.client == octx.client)
    assert leave.channel == ch
    assert client_info_tuple(leave.info) == ("joiner", octx.client, {"j": 1}, None)


async def test_client_subscribe_to_server_side_channel_is_105(
    srv: ServerHandle, sdk: SdkFactory
) -> None:
    user = "dup-" + uid()
    ch = f"chat:dup-{uid()}"
    client, ev = sdk(srv.token(user, channels=[ch]))
    await connected(client, ev)
    await ev.next("subscribed")
    sev = SubEvents()
    sub = client.new_subscription(ch, events=sev)
    await sub.subscribe()
    uctx = await sev.next("unsubscribed")
    assert (uctx.code, uctx.reason) == (105, "already subscribed")
    assert client.state == ClientState.CONNECTED


async def test_api_subscribe_and_unsubscribe_server_side(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    user = "apisub-" + uid()
    ch = f"chat:apisub-{uid()}"
    client, ev = sdk(srv.token(user))
    await connected(client, ev)

    await api.subscribe(SubscribeRequest(user=user, channel=ch, data={"welcome": True}))
    sctx = await ev.next("subscribed")
    assert sctx.channel == ch
    assert sctx.data == {"welcome": True}
    assert sctx.recoverable is True and sctx.positioned is True
    assert sctx.was_recovering is False and sctx.recovered is False

    await api.publish(PublishRequest(channel=ch, data={"via": "api"}))
    pctx = await ev.next("publication")
    assert (pctx.channel, pctx.pub.offset, pctx.pub.data) == (ch, 1, {"via": "api"})

    stats = await api.presence_stats(PresenceStatsRequest(channel=ch))
    assert (stats.num_clients, stats.num_users) == (1, 1)

    await api.unsubscribe(UnsubscribeRequest(user=user, channel=ch))
    uctx = await ev.next("unsubscribed")
    assert uctx.channel == ch
    stats = await api.presence_stats(PresenceStatsRequest(channel=ch))
    assert (stats.num_clients, stats.num_users) == (0, 0)
    assert client.state == ClientState.CONNECTED


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("channel", "code", "reason"),
    [("locked:x", 103, "permission denied"), ("nope:x", 102, "unknown channel")],
    ids=["103", "102"],
)
async def test_subscribe_errors(
    srv: ServerHandle, sdk: SdkFactory, channel: str, code: int, reason: str
) -> None:
    client, ev = sdk(srv.token("denied-" + uid()))
    await connected(client, ev)
    sev = SubEvents()
    sub = client.new_subscription(channel + uid(), events=sev)
    await sub.subscribe()
    uctx = await sev.next("unsubscribed")
    assert (uctx.code, uctx.reason) == (code, reason)
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    assert "subscribed" not in sev.names()
    with pytest.raises(SubscriptionUnsubscribedError):
        await sub.ready()
    # A subscribe error is not a connection error.
    assert client.state == ClientState.CONNECTED


@pytest.mark.parametrize(
    ("disconnect", "code", "reason"),
    [(None, 3503, "force disconnect"), (Disconnect(code=4500, reason="go away"), 4500, "go away")],
    ids=["3503-default", "4500"],
)
async def test_api_disconnect_terminal(
    srv: ServerHandle,
    sdk: SdkFactory,
    api: AsyncClient,
    disconnect: Disconnect | None,
    code: int,
    reason: str,
) -> None:
    user = "kick-" + uid()
    client, ev = sdk(srv.token(user))
    ctx = await connected(client, ev)
    _, sev = await subscribed(client, f"chat:kick-{uid()}")
    await api.disconnect(DisconnectRequest(user=user, client=ctx.client, disconnect=disconnect))
    dctx = await ev.next("disconnected")
    assert (dctx.code, dctx.reason) == (code, reason)
    # Terminal code: the SDK is disconnected for good, nothing scheduled to reconnect.
    assert client.state == ClientState.DISCONNECTED
    assert ev.names() == ["connecting", "connected", "disconnected"]
    assert sev.names() == ["subscribing", "subscribed", "subscribing"]


async def test_api_disconnect_whole_user(
    srv: ServerHandle, sdk: SdkFactory, api: AsyncClient
) -> None:
    """All connections of a user get the code; another user's connection is left alone."""
    user = "many-" + uid()
    clients = [sdk(srv.token(user)) for _ in range(2)]
    for c, e in clients:
        await connected(c, e)
    other, oev = sdk(srv.token("bystander-" + uid()))
    await connected(other, oev)
    osub, _ = await subscribed(other, f"chat:bystander-{uid()}")
    await api.disconnect(
        DisconnectRequest(user=user, disconnect=Disconnect(code=4501, reason="all of you"))
    )
    for c, e in clients:
        dctx = await e.next("disconnected")
        assert (dctx.code, dctx.reason) == (4501, "all of you")
        assert c.state == ClientState.DISCONNECTED
    stats = await osub.presence_stats()  # a round trip on the bystander still works
    assert (stats.num_clients, stats.num_users) == (1, 1)
    assert other.state == ClientState.CONNECTED


def _token_invalid(srv: ServerHandle, user: str) -> str:
    return "not.a.jwt"


def _token_unknown_namespace(srv: ServerHandle, user: str) -> str:
    return srv.token(user, channels=[f"nope:ss-{uid()}"])


def _no_token(srv: ServerHandle, user: str) -> str:
    return ""


@pytest.mark.parametrize(
    ("make_token", "code", "reason"),
    [
        (_token_invalid, 3500, "invalid token"),
        (_token_unknown_namespace, 102, "unknown channel"),
        (_no_token, 3501, "bad request"),  # no credentials and anonymous not allowed
    ],
    ids=["3500-invalid-token", "102-token-channel", "3501-no-token"],
)
async def test_connect_errors_are_terminal(
    srv: ServerHandle,
    sdk: SdkFactory,
    make_token: Callable[[ServerHandle, str], str],
    code: int,
    reason: str,
) -> None:
    client, ev = sdk(make_token(srv, "bad-" + uid()))
    await client.connect()
    dctx = await ev.next("disconnected")
    assert (dctx.code, dctx.reason) == (code, reason)
    assert client.state == ClientState.DISCONNECTED
    assert "connected" not in ev.names()


async def test_subscription_token_of_other_user_disconnects_3500(
    srv: ServerHandle, sdk: SdkFactory
) -> None:
    ch = f"$chat:mismatch-{uid()}"
    client, ev = sdk(srv.token("honest"))
    await connected(client, ev)
    sub = client.new_subscription(ch, token=srv.sub_token("someone-else", ch))
    await sub.subscribe()
    dctx = await ev.next("disconnected")
    assert (dctx.code, dctx.reason) == (3500, "invalid token")
    assert client.state == ClientState.DISCONNECTED


class PingCountingClient(Client):
    """Instrumentation only: the SDK has no ping event, so record each server ping it handles
    (after it has answered with a pong)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings: asyncio.Queue[str] = asyncio.Queue()

    async def _handle_ping(self) -> None:
        await super()._handle_ping()
        self.pings.put_nowait(self.client_id)


async def test_ping_pong_keeps_connection(srv: ServerHandle) -> None:
    ev = ClientEvents()
    client = PingCountingClient(srv.ws_url, events=ev, token=srv.token("pinger"), proxy=None)
    try:
        ctx = await connected(client, ev)
        # The connect result announced the interval and asked for pongs.
        assert (client._ping_interval, client._send_pong) == (PING_INTERVAL, True)
        # A missing pong would be a 3012 close PONG_TIMEOUT after the first ping, before the
        # second one.
        for _ in range(2):
            assert await asyncio.wait_for(client.pings.get(), 2 * PING_INTERVAL + 2) == ctx.client
        assert client.state == ClientState.CONNECTED
        assert ev.names() == ["connecting", "connected"]
    finally:
        await client.disconnect()


# --------------------------------------------------------------------------------------------
# join / leave


async def test_join_and_leave_events(srv: ServerHandle, sdk: SdkFactory, api: AsyncClient) -> None:
    ch = f"chat:jl-{uid()}"
    watcher, wev = sdk(srv.token("watcher"))
    wctx = await connected(watcher, wev)
    _, sev = await subscribed(watcher, ch, join_leave=True)
    # As in Centrifugo, the joining subscriber gets its own join.
    own = await sev.next("join")
    assert client_info_tuple(own.info) == ("watcher", wctx.client, None, None)

    guest, gev = sdk(srv.token("guest", info={"name": "Guest"}))
    gctx = await connected(guest, gev)
    gsub, gsev = await subscribed(guest, ch)  # no join_leave asked for

    join = await sev.next("join")
    assert client_info_tuple(join.info) == ("guest", gctx.client, {"name": "Guest"}, None)

    await gsub.unsubscribe()
    leave = await sev.next("leave")
    assert client_info_tuple(leave.info) == ("guest", gctx.client, {"name": "Guest"}, None)

    # Leave on disconnect, too.
    await gsub.subscribe()
    await gsev.next("subscribed")
    join = await sev.next("join")
    assert join.info.client == gctx.client
    # The guest did not ask for join/leave: a publication after the joins reaches it with no
    # join pushed before it (a connection's pushes arrive in order).
    await api.publish(PublishRequest(channel=ch, data={"after": "joins"}))
    assert (await gsev.next("publication")).pub.data == {"after": "joins"}
    assert gsev.pending("join") == [] and gsev.pending("leave") == []

    await guest.disconnect()
    leave = await sev.next("leave")
    assert client_info_tuple(leave.info) == ("guest", gctx.client, {"name": "Guest"}, None)
    assert sev.pending("join") == [] and sev.pending("leave") == []
