"""centrifuge-js (the official JavaScript SDK, from npm) against a real server process.

Each test runs one scenario in node (tests/e2e/js/run.mjs) and asserts on the JSON it returns.
Scenarios coordinate with the server themselves (HTTP API calls, awaiting SDK events), so there
are no sleeps; channel names carry a per-test suffix so tests sharing the server do not collide.
"""

from __future__ import annotations

import json
import uuid

import pytest

from .helpers import ServerHandle, run_js

CONFIG = {
    "client": {
        # Short so an unrefreshed connection would be closed well within a test's time.
        "expired_close_delay": "2s",
        "expired_sub_close_delay": "2s",
    },
    "channel": {
        "namespaces": [
            {
                "name": "chat",
                "allow_subscribe_for_client": True,
                "allow_publish_for_subscriber": True,
                "allow_publish_for_client": True,
                "presence": True,
                "join_leave": True,
                "allow_presence_for_subscriber": True,
                "history_size": 100,
                "history_ttl": "300s",
                "allow_history_for_subscriber": True,
                "force_recovery": True,
            },
            {
                # Permissions on, features off: history/presence must answer 108.
                "name": "plain",
                "allow_subscribe_for_client": True,
                "allow_history_for_client": True,
                "allow_presence_for_client": True,
            },
            {"name": "locked"},
        ]
    },
}

pytestmark = pytest.mark.usefixtures("node_js")


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def js(srv: ServerHandle, script: str, timeout: float = 20.0, **env: str) -> dict:
    return run_js(script, srv.js_env(**env), timeout=timeout)


def test_connect_with_jwt(srv: ServerHandle) -> None:
    user = "alice-" + uid()
    out = js(
        srv,
        """
        const c = newClient({ token: token(env.USER, { ttl: 3600 }) });
        c.connect();
        const ctx = await waitEvent(c, 'connected');
        const info = await api('info', {});
        return { client: ctx.client, transport: ctx.transport, state: c.state, info };
        """,
        USER=user,
    )
    assert out["transport"] == "websocket"
    assert out["state"] == "connected"
    uuid.UUID(out["client"])  # Centrifugo client ids are UUIDs
    nodes = out["info"]["result"]["nodes"]
    assert sum(n["num_clients"] for n in nodes) >= 1


def test_invalid_token_disconnects_3500(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: 'not.a.jwt' });
        c.connect();
        const ctx = await waitEvent(c, 'disconnected');
        return { code: ctx.code, reason: ctx.reason, state: c.state };
        """,
    )
    assert out["code"] == 3500
    assert out["reason"] == "invalid token"
    assert out["state"] == "disconnected"


def test_subscribe_and_receive_api_publication(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('bob') });
        const sub = c.newSubscription(env.CH);
        const pubs = collect(sub, 'publication');
        sub.subscribe();
        c.connect();
        const subscribed = await waitEvent(sub, 'subscribed');
        const res = await api('publish', { channel: env.CH, data: { text: 'hello', n: 1 } });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'publication');
        return { subscribed, res, pub: pubs[0] };
        """,
        CH=f"chat:news-{uid()}",
    )
    assert out["subscribed"]["recoverable"] is True  # force_recovery in namespace chat
    assert out["subscribed"]["positioned"] is True
    assert out["res"]["result"]["offset"] == 1
    epoch = out["res"]["result"]["epoch"]
    assert isinstance(epoch, str) and epoch
    pub = out["pub"]
    assert pub["data"] == {"text": "hello", "n": 1}
    assert pub["offset"] == 1
    assert "info" not in pub  # server API publications carry no ClientInfo
    assert out["subscribed"]["streamPosition"]["epoch"] == epoch


def test_client_publish_delivers_with_client_info(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('carol', { info: { name: 'Carol' } }) });
        const sub = c.newSubscription(env.CH);
        const pubs = collect(sub, 'publication');
        sub.subscribe();
        c.connect();
        const connected = await waitEvent(c, 'connected');
        await sub.ready();
        const res = await sub.publish({ msg: 'from client' });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'publication');
        const denied = await expectError(c.publish(env.LOCKED, { msg: 'nope' }));
        return { client: connected.client, res, pub: pubs[0], denied };
        """,
        CH=f"chat:pub-{uid()}",
        LOCKED=f"locked:pub-{uid()}",
    )
    pub = out["pub"]
    assert pub["data"] == {"msg": "from client"}
    assert pub["info"]["user"] == "carol"
    assert pub["info"]["client"] == out["client"]
    assert pub["info"]["connInfo"] == {"name": "Carol"}
    assert out["res"] == {}
    assert out["denied"]["code"] == 103


def test_presence_and_join_leave(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const a = newClient({ token: token('ann') });
        const b = newClient({ token: token('ben', { info: { role: 'x' } }) });
        const subA = a.newSubscription(env.CH, { joinLeave: true });
        const joins = collect(subA, 'join');
        const leaves = collect(subA, 'leave');
        subA.subscribe();
        a.connect();
        const ca = await waitEvent(a, 'connected');
        await subA.ready();
        const subB = b.newSubscription(env.CH);
        subB.subscribe();
        b.connect();
        const cb = await waitEvent(b, 'connected');
        await subB.ready();
        await waitUntil(subA, 'join', () => joins.some((j) => j.info.client === cb.client), 5000, 'join');
        const presence = await subA.presence();
        const stats = await subA.presenceStats();
        const apiPresence = await api('presence', { channel: env.CH });
        subB.unsubscribe();
        await waitUntil(subA, 'leave', () => leaves.some((l) => l.info.client === cb.client), 5000, 'leave');
        const statsAfter = await subA.presenceStats();
        return { a: ca.client, b: cb.client, presence, stats, apiPresence, statsAfter,
                 join: joins.find((j) => j.info.client === cb.client) };
        """,
        CH=f"chat:room-{uid()}",
    )
    clients = out["presence"]["clients"]
    assert set(clients) == {out["a"], out["b"]}
    assert clients[out["a"]]["user"] == "ann"
    assert clients[out["b"]]["user"] == "ben"
    assert clients[out["b"]]["connInfo"] == {"role": "x"}
    assert out["stats"] == {"numClients": 2, "numUsers": 2}
    assert set(out["apiPresence"]["result"]["presence"]) == {out["a"], out["b"]}
    assert out["join"]["info"]["user"] == "ben"
    assert out["statsAfter"] == {"numClients": 1, "numUsers": 1}


def test_history(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const results = [];
        for (let i = 1; i <= 3; i++) results.push(await api('publish', { channel: env.CH, data: { i } }));
        const c = newClient({ token: token('dan') });
        const sub = c.newSubscription(env.CH);
        sub.subscribe();
        c.connect();
        await sub.ready();
        const all = await sub.history({ limit: 10 });
        const lastTwo = await sub.history({ limit: 2, reverse: true });
        const since = await sub.history({ limit: 10, since: { offset: 1, epoch: all.epoch } });
        const plain = c.newSubscription(env.PLAIN);
        plain.subscribe();
        await plain.ready();
        const noHistory = await expectError(plain.history({ limit: 10 }));
        const noPresence = await expectError(plain.presence());
        return { results, all, lastTwo, since, noHistory, noPresence };
        """,
        CH=f"chat:hist-{uid()}",
        PLAIN=f"plain:hist-{uid()}",
    )
    epoch = out["results"][0]["result"]["epoch"]
    assert [r["result"]["offset"] for r in out["results"]] == [1, 2, 3]
    assert out["all"]["epoch"] == epoch
    assert out["all"]["offset"] == 3
    assert [p["data"]["i"] for p in out["all"]["publications"]] == [1, 2, 3]
    assert [p["offset"] for p in out["all"]["publications"]] == [1, 2, 3]
    assert [p["data"]["i"] for p in out["lastTwo"]["publications"]] == [3, 2]
    assert [p["offset"] for p in out["since"]["publications"]] == [2, 3]
    assert out["noHistory"]["code"] == 108
    assert out["noPresence"]["code"] == 108


def test_recovery_after_reconnect(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('eve') });
        const sub = c.newSubscription(env.CH);
        const pubs = collect(sub, 'publication');
        const subscribedEvents = collect(sub, 'subscribed');
        sub.subscribe();
        c.connect();
        await waitEvent(sub, 'subscribed');
        await api('publish', { channel: env.CH, data: { n: 1 } });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'live publication');
        c.disconnect();
        for (let n = 2; n <= 4; n++) await api('publish', { channel: env.CH, data: { n } });
        c.connect();
        await waitUntil(sub, 'subscribed', () => subscribedEvents.length >= 2, 5000, 'resubscribe');
        await waitUntil(sub, 'publication', () => pubs.length >= 4, 5000, 'recovered publications');
        return { subscribed: subscribedEvents, pubs: pubs.map((p) => ({ data: p.data, offset: p.offset })) };
        """,
        CH=f"chat:recover-{uid()}",
    )
    first, second = out["subscribed"][0], out["subscribed"][1]
    assert first["wasRecovering"] is False
    assert second["wasRecovering"] is True
    assert second["recovered"] is True
    assert second["hasRecoveredPublications"] is True
    assert second["streamPosition"]["epoch"] == first["streamPosition"]["epoch"]
    assert [p["data"]["n"] for p in out["pubs"]] == [1, 2, 3, 4]
    assert [p["offset"] for p in out["pubs"]] == [1, 2, 3, 4]


def test_recovery_with_nothing_missed(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('fay') });
        const sub = c.newSubscription(env.CH);
        const subscribedEvents = collect(sub, 'subscribed');
        const pubs = collect(sub, 'publication');
        sub.subscribe();
        c.connect();
        await waitEvent(sub, 'subscribed');
        await api('publish', { channel: env.CH, data: { n: 1 } });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'publication');
        c.disconnect();
        c.connect();
        await waitUntil(sub, 'subscribed', () => subscribedEvents.length >= 2, 5000, 'resubscribe');
        return { second: subscribedEvents[1], pubs: pubs.length };
        """,
        CH=f"chat:recover0-{uid()}",
    )
    assert out["second"]["wasRecovering"] is True
    assert out["second"]["recovered"] is True
    assert out["second"]["hasRecoveredPublications"] is False
    assert out["second"]["streamPosition"]["offset"] == 1
    assert out["pubs"] == 1


def test_token_refresh_via_get_token(srv: ServerHandle) -> None:
    # Tokens live 3 s: the SDK calls getToken and sends `refresh` when the connection expires;
    # a connection that is not refreshed is closed 2 s after expiry (3005) and would reconnect.
    out = js(
        srv,
        """
        let calls = 0;
        const c = newClient({
          getToken: async () => { calls++; bus.emit('token'); return token('gus', { ttl: 3 }); },
        });
        const connected = collect(c, 'connected');
        const disconnects = collect(c, 'disconnected');
        const connecting = collect(c, 'connecting');
        c.connect();
        await waitEvent(c, 'connected');
        // getToken #1 for connect, then one per refresh. By the 4th call the first token has
        // been expired for longer than expired_close_delay, so the refreshes must have worked.
        await waitUntil(bus, 'token', () => calls >= 4, 20000, 'four getToken calls');
        return { calls, connected: connected.length, disconnects, connecting: connecting.length,
                 state: c.state };
        """,
        timeout=30,
    )
    assert out["calls"] >= 4
    assert out["connected"] == 1, out
    assert out["disconnects"] == []
    assert out["connecting"] == 1  # only the initial connect, no reconnect
    assert out["state"] == "connected"


def test_expired_connect_token_triggers_get_token(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        let calls = 0;
        const errors = [];
        const c = newClient({
          token: token('hal', { ttl: -10 }),
          getToken: async () => { calls++; return token('hal', { ttl: 3600 }); },
        });
        c.on('error', (ctx) => errors.push(ctx.error));
        c.connect();
        const ctx = await waitEvent(c, 'connected');
        return { calls, client: ctx.client };
        """,
    )
    assert out["calls"] == 1  # server answered 109 (token expired), SDK fetched a new one
    assert out["client"]


@pytest.mark.parametrize(
    ("disconnect", "code", "reason"),
    [
        (None, 3503, "force disconnect"),
        ({"code": 4501, "reason": "custom terminal"}, 4501, "custom terminal"),
    ],
)
def test_api_disconnect_code_surfaced(
    srv: ServerHandle, disconnect: dict | None, code: int, reason: str
) -> None:
    params: dict = {"user": "ivy-" + uid()}
    if disconnect:
        params["disconnect"] = disconnect
    out = js(
        srv,
        """
        const params = JSON.parse(env.PARAMS);
        const c = newClient({ token: token(params.user) });
        c.connect();
        await waitEvent(c, 'connected');
        // Listen first: the close frame may arrive before the API response does.
        const disconnected = waitEvent(c, 'disconnected');
        const res = await api('disconnect', params);
        const ctx = await disconnected;
        return { res, code: ctx.code, reason: ctx.reason, state: c.state };
        """,
        PARAMS=json.dumps(params),
    )
    assert out["res"] == {"result": {}}
    assert out["code"] == code
    assert out["reason"] == reason
    assert out["state"] == "disconnected"


def test_api_disconnect_reconnect_code(srv: ServerHandle) -> None:
    user = "jay-" + uid()
    out = js(
        srv,
        """
        const c = newClient({ token: token(env.USER), minReconnectDelay: 50, maxReconnectDelay: 100 });
        const connectedEvents = collect(c, 'connected');
        c.connect();
        await waitEvent(c, 'connected');
        const connecting = waitEvent(c, 'connecting');
        await api('disconnect', { user: env.USER, disconnect: { code: 4001, reason: 'come back' } });
        const ctx = await connecting;
        await waitUntil(c, 'connected', () => connectedEvents.length >= 2, 5000, 'reconnect');
        return { code: ctx.code, reason: ctx.reason, ids: connectedEvents.map((e) => e.client) };
        """,
        USER=user,
    )
    assert out["code"] == 4001
    assert out["reason"] == "come back"
    assert len(set(out["ids"])) == 2  # a new connection, new client id


def test_private_channel_with_subscription_token(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        let tokenCalls = 0;
        const c = newClient({ token: token('kim') });
        const sub = c.newSubscription(env.CH, {
          getToken: async (ctx) => { tokenCalls++; return subToken('kim', ctx.channel, { info: { vip: true } }); },
        });
        const pubs = collect(sub, 'publication');
        sub.subscribe();
        const noToken = c.newSubscription(env.CH2);
        const unsubscribed = waitEvent(noToken, 'unsubscribed');
        noToken.subscribe();
        c.connect();
        await sub.ready();
        await api('publish', { channel: env.CH, data: { secret: 1 } });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'publication');
        const denied = await unsubscribed;
        return { tokenCalls, pub: pubs[0], denied: { code: denied.code, reason: denied.reason } };
        """,
        CH=f"$vip-{uid()}",
        CH2=f"$vip-{uid()}",
    )
    assert out["tokenCalls"] == 1
    assert out["pub"]["data"] == {"secret": 1}
    assert out["denied"]["code"] == 103  # `$` channel without a token


def test_subscribe_denied_103_and_unknown_namespace_102(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('lee') });
        const locked = c.newSubscription(env.LOCKED);
        const unknown = c.newSubscription(env.UNKNOWN);
        const lockedErr = waitEvent(locked, 'unsubscribed');
        const unknownErr = waitEvent(unknown, 'unsubscribed');
        locked.subscribe();
        unknown.subscribe();
        c.connect();
        const a = await lockedErr;
        const b = await unknownErr;
        return { locked: { code: a.code, reason: a.reason, state: locked.state },
                 unknown: { code: b.code, reason: b.reason }, client: c.state };
        """,
        LOCKED=f"locked:x-{uid()}",
        UNKNOWN=f"nosuchns:x-{uid()}",
    )
    assert out["locked"] == {"code": 103, "reason": "permission denied", "state": "unsubscribed"}
    assert out["unknown"] == {"code": 102, "reason": "unknown channel"}
    assert out["client"] == "connected"  # subscribe errors do not close the connection


def test_subscription_token_refresh(srv: ServerHandle) -> None:
    # Subscription tokens live 3 s: the SDK refreshes them with `sub_refresh` (getToken again);
    # an unrefreshed subscription would get unsubscribe 2501 two seconds after expiry.
    out = js(
        srv,
        """
        let calls = 0;
        const c = newClient({ token: token('max') });
        const sub = c.newSubscription(env.CH, {
          getToken: async (ctx) => {
            calls++;
            bus.emit('token');
            return subToken('max', ctx.channel, { ttl: 3 });
          },
        });
        const subscribed = collect(sub, 'subscribed');
        const unsubscribed = collect(sub, 'unsubscribed');
        const subscribing = collect(sub, 'subscribing');
        sub.subscribe();
        c.connect();
        await sub.ready();
        await waitUntil(bus, 'token', () => calls >= 4, 20000, 'four subscription getToken calls');
        const pubs = collect(sub, 'publication');
        await api('publish', { channel: env.CH, data: { still: 'here' } });
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'publication');
        return { calls, subscribed: subscribed.length, unsubscribed, subscribing: subscribing.length,
                 state: sub.state, pub: pubs[0].data };
        """,
        timeout=30,
        CH=f"$refresh-{uid()}",
    )
    assert out["calls"] >= 4
    assert out["subscribed"] == 1, out
    assert out["subscribing"] == 1, out
    assert out["unsubscribed"] == []
    assert out["state"] == "subscribed"
    assert out["pub"] == {"still": "here"}


def test_server_side_subscription_from_token_channels(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('ned', { channels: [env.CH] }) });
        const subscribed = waitEvent(c, 'subscribed');
        const pubs = collect(c, 'publication');
        c.connect();
        const ctx = await subscribed;
        await api('publish', { channel: env.CH, data: { server: 'side' } });
        await waitUntil(c, 'publication', () => pubs.length >= 1, 5000, 'publication');
        return { subscribed: ctx, pub: pubs[0] };
        """,
        CH=f"chat:server-side-{uid()}",
    )
    assert out["subscribed"]["channel"].startswith("chat:server-side-")
    assert out["subscribed"]["recoverable"] is True
    assert out["pub"]["channel"] == out["subscribed"]["channel"]
    assert out["pub"]["data"] == {"server": "side"}
    assert out["pub"]["offset"] == 1


def test_async_message_send_is_not_available_3508(srv: ServerHandle) -> None:
    # Centrifugo OSS has no handler for client `send`: the connection is closed with 3508.
    out = js(
        srv,
        """
        const c = newClient({ token: token('oli') });
        c.connect();
        await waitEvent(c, 'connected');
        const disconnected = waitEvent(c, 'disconnected');
        await c.send({ hello: 'server' });
        const ctx = await disconnected;
        return { code: ctx.code, reason: ctx.reason };
        """,
    )
    assert out == {"code": 3508, "reason": "not available"}


def test_api_unsubscribe_and_subscribe_surface_in_sdk(srv: ServerHandle) -> None:
    user = "pam-" + uid()
    out = js(
        srv,
        """
        const c = newClient({ token: token(env.USER) });
        const sub = c.newSubscription(env.CH);
        sub.subscribe();
        c.connect();
        await sub.ready();
        const unsubscribed = waitEvent(sub, 'unsubscribed');
        const unsubRes = await api('unsubscribe', { user: env.USER, channel: env.CH });
        const u = await unsubscribed;
        const serverSub = waitEvent(c, 'subscribed', 5000, (ctx) => ctx.channel === env.CH2);
        const subRes = await api('subscribe', { user: env.USER, channel: env.CH2 });
        const s = await serverSub;
        const pubs = collect(c, 'publication');
        await api('publish', { channel: env.CH2, data: { to: 'server sub' } });
        await waitUntil(c, 'publication', () => pubs.length >= 1, 5000, 'publication');
        return { unsubRes, u: { code: u.code, reason: u.reason }, state: sub.state,
                 subRes, s, pub: pubs[0] };
        """,
        USER=user,
        CH=f"chat:unsub-{uid()}",
        CH2=f"chat:runtime-{uid()}",
    )
    assert out["unsubRes"] == {"result": {}}
    assert out["u"] == {"code": 2000, "reason": "server unsubscribe"}
    assert out["state"] == "unsubscribed"  # 2000 is terminal: the SDK does not resubscribe
    assert out["subRes"] == {"result": {}}
    assert out["pub"]["data"] == {"to": "server sub"}
    assert out["pub"]["channel"] == out["s"]["channel"]
