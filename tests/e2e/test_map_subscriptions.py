"""Map subscriptions end to end through centrifuge-js (its npm build), on the memory and the
Redis map broker: paged state sync, live updates and removals, client publish and remove,
recovery from the stream, resync when the stream cannot cover the gap, per-key fossil deltas
(JSON and Protobuf), map clients presence, key TTL expiry. Raw frames pin the refusals.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .helpers import RawWS, ServerHandle, run_js
from .redis_e2e_helpers import worker_pids

MAP = {"allow_subscribe_for_client": True, "subscription_type": "map"}
WRITE = {"allow_publish_for_client": True, "allow_remove_for_client": True}
CONFIG: dict[str, Any] = {
    "channel": {
        "namespaces": [
            {"name": "eph", **MAP, "map": {"mode": "ephemeral", "key_ttl": "60s", **WRITE}},
            {"name": "pers", **MAP, "map": {"mode": "persistent", **WRITE}},
            {
                "name": "small",
                **MAP,
                "map": {"mode": "persistent", "stream_size": 2, "stream_ttl": "60s", **WRITE},
            },
            {
                "name": "mdelta",
                **MAP,
                "allowed_delta_types": ["fossil"],
                "delta_publish": True,
                "map": {"mode": "persistent", **WRITE},
            },
            {"name": "ttl", **MAP, "map": {"mode": "ephemeral", "key_ttl": "1s", **WRITE}},
            {
                "name": "pres",
                **MAP,
                "map_clients_presence_channel_prefix": "who:",
                "map": {"mode": "ephemeral", "key_ttl": "60s"},
            },
            {
                "name": "who",
                "allow_subscribe_for_client": True,
                "subscription_type": "map_clients",
                "map": {"mode": "ephemeral", "key_ttl": "60s"},
            },
            {
                "name": "big",
                **MAP,
                "map": {"mode": "persistent", "stream_size": 1000, "stream_ttl": "300s"},
            },
            # read-only for clients: writes only through the server API
            {"name": "ro", **MAP, "map": {"mode": "persistent"}},
            {"name": "stream", "allow_subscribe_for_client": True},
        ]
    },
}

pytestmark = pytest.mark.usefixtures("node_js")


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def js(srv: ServerHandle, script: str, protobuf: bool = False, **env: str) -> Any:
    return run_js(script, srv.js_env(**env, **({"CF_PROTOBUF": "1"} if protobuf else {})))


SYNC_THEN_LIVE = """
const d = (x) => (x instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(x)) : x);
for (let i = 0; i < Number(env.N); i++) {
  await api('map_publish', { channel: env.CH, key: `k${String(i).padStart(4, '0')}`, data: { i } });
}
const c = newClient({ token: token('u') });
const sub = c.newMapSubscription(env.CH, { pageSize: Number(env.PAGE) });
const synced = waitEvent(sub, 'sync', 10000);
const updates = collect(sub, 'update');
sub.subscribe(); c.connect();
const sync = await synced;
await sub.ready(5000);
await api('map_publish', { channel: env.CH, key: 'live', data: { live: true } });
await api('map_remove', { channel: env.CH, key: 'k0000' });
await waitUntil(sub, 'update', () => updates.length >= 2, 5000, 'updates');
return {
  keys: sync.entries.map((e) => e.key).sort(),
  first: d(sync.entries.find((e) => e.key === 'k0001').data),
  updates: updates.map((u) => [u.key, u.removed ? null : d(u.data)]),
};
"""


@pytest.mark.parametrize("ns", ["eph", "pers"])
def test_state_sync_across_pages_then_live(srv: ServerHandle, ns: str) -> None:
    # 250 keys at the smallest page Centrifugo allows (100): three state pages.
    out = js(srv, SYNC_THEN_LIVE, CH=f"{ns}:{uid()}", N="250", PAGE="100")
    assert out["keys"] == [f"k{i:04d}" for i in range(250)]
    assert out["first"] == {"i": 1}
    assert out["updates"] == [["live", {"live": True}], ["k0000", None]]


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_client_publish_and_remove(srv: ServerHandle, protobuf: bool) -> None:
    out = js(
        srv,
        """
        const d = (x) => (x instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(x)) : x);
        const c = newClient({ token: token('u') });
        const sub = c.newMapSubscription(env.CH);
        const updates = collect(sub, 'update');
        sub.subscribe(); c.connect();
        await sub.ready(5000);
        // The Protobuf build sends bytes as they are: encode the JSON ourselves.
        const enc = (x) => (env.CF_PROTOBUF === '1' ? new TextEncoder().encode(JSON.stringify(x)) : x);
        await sub.publish('mine', enc({ from: 'client' }));
        await sub.remove('mine');
        await waitUntil(sub, 'update', () => updates.length >= 2, 5000, 'updates');
        const state = await api('map_read_state', { channel: env.CH });
        return {
          updates: updates.map((u) => [u.key, !!u.removed, u.removed ? null : d(u.data)]),
          left: (state.result.publications || []).length,
        };
        """,
        protobuf,
        CH=f"pers:{uid()}",
    )
    assert out["updates"] == [["mine", False, {"from": "client"}], ["mine", True, None]]
    assert out["left"] == 0


def test_recovery_after_disconnect(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('u') });
        const sub = c.newMapSubscription(env.CH);
        const subscribed = collect(sub, 'subscribed');
        const syncs = collect(sub, 'sync');
        const updates = collect(sub, 'update');
        sub.subscribe(); c.connect();
        await sub.ready(5000);
        await api('map_publish', { channel: env.CH, key: 'a', data: { v: 1 } });
        await waitUntil(sub, 'update', () => updates.length >= 1, 5000, 'live update');
        c.disconnect();
        await api('map_publish', { channel: env.CH, key: 'b', data: { v: 2 } });
        await api('map_publish', { channel: env.CH, key: 'a', data: { v: 3 } });
        c.connect();
        await waitUntil(sub, 'update', () => updates.length >= 3, 5000, 'recovered updates');
        return {
          recovered: subscribed.map((s) => !!s.recovered),
          syncs: syncs.length,
          updates: updates.map((u) => [u.key, u.data]),
        };
        """,
        CH=f"pers:{uid()}",
    )
    assert out["recovered"] == [False, True]
    assert out["syncs"] == 1  # recovery from the stream, no second full sync
    assert out["updates"] == [["a", {"v": 1}], ["b", {"v": 2}], ["a", {"v": 3}]]


def test_gap_beyond_stream_resyncs_from_state(srv: ServerHandle) -> None:
    """stream_size 2: five changes while away cannot be replayed; the SDK gets 112 and
    syncs the whole state again."""
    out = js(
        srv,
        """
        const c = newClient({ token: token('u') });
        const sub = c.newMapSubscription(env.CH);
        const syncs = collect(sub, 'sync');
        sub.subscribe(); c.connect();
        await sub.ready(5000);
        c.disconnect();
        for (let i = 0; i < 5; i++) {
          await api('map_publish', { channel: env.CH, key: `k${i}`, data: { i } });
        }
        c.connect();
        await waitUntil(sub, 'sync', () => syncs.length >= 2, 8000, 'second sync');
        return { syncs: syncs.map((s) => s.entries.map((e) => e.key).sort()) };
        """,
        CH=f"small:{uid()}",
    )
    assert out["syncs"] == [[], ["k0", "k1", "k2", "k3", "k4"]]


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_per_key_delta(srv: ServerHandle, protobuf: bool) -> None:
    docs = [
        {f"field_{i:02d}": f"a fairly long value number {i}" for i in range(40)} | {"n": n}
        for n in range(4)
    ]
    out = js(
        srv,
        """
        const d = (x) => (x instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(x)) : x);
        const docs = JSON.parse(env.DOCS);
        await api('map_publish', { channel: env.CH, key: 'x', data: docs[0] });
        const c = newClient({ token: token('u') });
        const sub = c.newMapSubscription(env.CH, { delta: 'fossil' });
        const synced = waitEvent(sub, 'sync', 5000);
        const updates = collect(sub, 'update');
        sub.subscribe(); c.connect();
        const sync = await synced;
        for (const doc of docs.slice(1)) {
          await api('map_publish', { channel: env.CH, key: 'x', data: doc });
          await api('map_publish', { channel: env.CH, key: 'y', data: doc });
        }
        await waitUntil(sub, 'update', () => updates.length >= 6, 5000, 'updates');
        return {
          state: sync.entries.map((e) => [e.key, d(e.data)]),
          updates: updates.map((u) => [u.key, d(u.data)]),
          stats: sub.deltaStats ? sub.deltaStats() : null,
        };
        """,
        protobuf,
        CH=f"mdelta:{uid()}",
        DOCS=json.dumps(docs),
    )
    assert out["state"] == [["x", docs[0]]]
    expected = []
    for doc in docs[1:]:
        expected += [["x", doc], ["y", doc]]
    assert out["updates"] == expected  # every patch applied to its key's own base
    if out["stats"] is not None:
        # x's three updates patch the value the client holds; y's first is new: in full.
        assert out["stats"]["numDeltaPayloads"] >= 4


def test_clients_presence_channel(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const a = newClient({ token: token('ua') });
        const b = newClient({ token: token('ub') });
        a.connect(); b.connect();
        const ida = (await waitEvent(a, 'connected')).client;
        const idb = (await waitEvent(b, 'connected')).client;
        const who = a.newMapClientsSubscription('who:' + env.CH);
        const seen = collect(who, 'update');
        who.subscribe();
        await who.ready(5000);
        // The presence entry is written after the subscribe reply (as centrifuge's
        // setupMapPresenceAndJoin): await A's entry before B subscribes, to fix the order.
        const sa = a.newMapSubscription(env.CH); sa.subscribe(); await sa.ready(5000);
        await waitUntil(who, 'update', () => seen.length >= 1, 5000, 'join of a');
        const sb = b.newMapSubscription(env.CH); sb.subscribe(); await sb.ready(5000);
        await waitUntil(who, 'update', () => seen.length >= 2, 5000, 'join of b');
        sb.unsubscribe();
        await waitUntil(who, 'update', () => seen.length >= 3, 5000, 'leave');
        return { ida, idb, seen: seen.map((u) => [u.key, !!u.removed, u.info ? u.info.user : null]) };
        """,
        CH=f"pres:{uid()}",
    )
    assert out["seen"][:2] == [[out["ida"], False, "ua"], [out["idb"], False, "ub"]]
    assert out["seen"][2][:2] == [out["idb"], True]


def test_key_ttl_expiry_is_a_removal(srv: ServerHandle) -> None:
    out = js(
        srv,
        """
        const c = newClient({ token: token('u') });
        const sub = c.newMapSubscription(env.CH);
        const updates = collect(sub, 'update');
        sub.subscribe(); c.connect();
        await sub.ready(5000);
        await api('map_publish', { channel: env.CH, key: 'brief', data: { v: 1 } });
        await waitUntil(sub, 'update', () => updates.length >= 2, 8000, 'expiry');
        const state = await api('map_read_state', { channel: env.CH });
        return {
          updates: updates.map((u) => [u.key, !!u.removed]),
          left: (state.result.publications || []).length,
        };
        """,
        CH=f"ttl:{uid()}",
    )
    assert out == {"updates": [["brief", False], ["brief", True]], "left": 0}


async def test_refusals(srv: ServerHandle) -> None:
    ch = f"ro:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        await ws.connect_cmd(srv.token("u"))
        # A stream subscribe to a map namespace, and a map subscribe to a stream one: 103.
        assert (await ws.command({"subscribe": {"channel": ch}}))["error"]["code"] == 103
        rep = await ws.command({"subscribe": {"channel": f"stream:{uid()}", "type": 1, "phase": 2}})
        assert rep["error"]["code"] == 103
        # A cursor without a first page: 103; an unknown phase: 107.
        rep = await ws.command({"subscribe": {"channel": ch, "type": 1, "phase": 2, "cursor": "x"}})
        assert rep["error"]["code"] == 103
        rep = await ws.command({"subscribe": {"channel": ch, "type": 1, "phase": 7}})
        assert rep["error"]["code"] == 107
        # Client writes where the namespace allows none: 103; a live subscription still works.
        rep = await ws.command({"subscribe": {"channel": ch, "type": 1, "phase": 2}})
        assert rep["subscribe"]["phase"] == 0 and rep["subscribe"]["type"] == 1
        rep = await ws.command({"publish": {"channel": ch, "type": 1, "key": "k", "data": {}}})
        assert rep["error"]["code"] == 103
        # A second first page for a live map subscription: 105.
        rep = await ws.command({"subscribe": {"channel": ch, "type": 1, "phase": 2}})
        assert rep["error"]["code"] == 105


WORKER_KILL = """
const d = (x) => (x instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(x)) : x);
const subs = [];
for (let i = 0; i < 6; i++) {
  const c = newClient({ token: token(`u${i}`) });
  const sub = c.newMapSubscription(env.CH);
  const s = { sub, subscribed: collect(sub, 'subscribed'), updates: collect(sub, 'update') };
  sub.subscribe(); c.connect();
  subs.push(s);
}
for (const s of subs) await s.sub.ready(5000);
await api('map_publish', { channel: env.CH, key: 'a', data: { v: 1 } });
for (const s of subs) await waitUntil(s.sub, 'update', () => s.updates.length >= 1, 5000, 'first');
// Every worker dies at once; gunicorn starts new ones. Changes made meanwhile must reach
// every client through stream recovery once it is back.
for (const pid of env.PIDS.split(',')) process.kill(Number(pid), 'SIGKILL');
const retry = async (params) => {
  for (let i = 0; ; i++) {
    try { return await api('map_publish', params); } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
};
await retry({ channel: env.CH, key: 'b', data: { v: 2 } });
await retry({ channel: env.CH, key: 'a', data: { v: 3 } });
for (const s of subs) {
  await waitUntil(s.sub, 'update', () => s.updates.length >= 3, 15000, 'recovered updates');
}
return { clients: subs.map((s) => ({
  recovered: s.subscribed.map((x) => !!x.recovered),
  updates: s.updates.map((u) => [u.key, d(u.data)]),
})) };
"""


def test_catch_up_after_workers_sigkill(fresh_server_factory, redis_server) -> None:
    """Two workers on Redis (engine and map broker): both SIGKILLed under six subscribers;
    every client reconnects to a new worker and recovers the changes made meanwhile from
    the map's stream, without a full resync."""
    redis = {"address": f"redis://127.0.0.1:{redis_server.port}", "prefix": f"m{uid()}"}
    srv = fresh_server_factory(
        {
            **CONFIG,
            "engine": {"type": "redis", "redis": redis},
            "map_broker": {"type": "redis", "redis": redis},
        },
        workers=2,
    )
    pids = worker_pids(srv)
    assert len(pids) == 2
    out = js(srv, WORKER_KILL, CH=f"pers:{uid()}", PIDS=",".join(map(str, pids)))
    assert len(out["clients"]) == 6
    for client in out["clients"]:
        assert client["recovered"] == [False, True]
        assert client["updates"] == [["a", {"v": 1}], ["b", {"v": 2}], ["a", {"v": 3}]]


async def _map_batch(srv: ServerHandle, ch: str, items: list[tuple[str, int]]) -> None:
    commands = [{"map_publish": {"channel": ch, "key": k, "data": {"v": v}}} for k, v in items]
    rep = await srv.api_async("batch", {"commands": commands})
    assert all("error" not in r for r in rep["replies"]), rep


async def test_state_then_stream_pages_then_live(srv: ServerHandle) -> None:
    """The whole paged protocol on raw frames: writes during the state paging move the
    stream far ahead, so the client pages the stream from the first page's position before
    it goes live; every change arrives exactly once, in offset order, and state plus
    stream give every key's latest value."""
    ch = f"big:{uid()}"
    n = 600
    await _map_batch(srv, ch, [(f"k{i:03d}", 0) for i in range(n)])
    async with RawWS.connect(srv.ws_url) as ws:
        await ws.connect_cmd(srv.token("u"))
        sub = {"channel": ch, "type": 1}
        first = (await ws.command({"subscribe": {**sub, "phase": 2, "limit": 100}}))["subscribe"]
        assert first["phase"] == 2 and first["cursor"] and first["offset"] == n
        pos = {"epoch": first["epoch"], "offset": n}
        await _map_batch(srv, ch, [(f"k{i % n:03d}", i + 1) for i in range(250)])
        state, reply = list(first["state"]), first
        while reply.get("cursor"):
            cmd = {**sub, **pos, "phase": 2, "limit": 100, "cursor": reply["cursor"]}
            reply = (await ws.command({"subscribe": cmd}))["subscribe"]
            state += reply.get("state", [])
        # The stream is 250 ahead of the first page's position: no live yet.
        assert reply["phase"] == 2 and reply["offset"] == n
        # Entries changed after that position come from the stream, not from state.
        assert all(p["offset"] <= n for p in state)
        stream: list[dict] = []
        offset = n
        while reply["phase"] != 0:
            cmd = {**sub, "epoch": pos["epoch"], "offset": offset, "phase": 1}
            reply = (await ws.command({"subscribe": cmd}))["subscribe"]
            stream += reply.get("publications", [])
            offset = stream[-1]["offset"] if stream else offset
        assert reply["offset"] == n + 250
        assert [p["offset"] for p in stream] == list(range(n + 1, n + 251))
        latest = {p["key"]: p["data"] for p in state + stream}
        assert latest == {f"k{i:03d}": {"v": i + 1 if i < 250 else 0} for i in range(n)}
        await srv.api_async("map_publish", {"channel": ch, "key": "new", "data": {"v": -1}})
        push = await ws.push()
        assert push["pub"]["offset"] == n + 251 and push["pub"]["key"] == "new"
