"""Publication tags filter (subscribe `tf`, namespace `allow_tags_filter`) end to end, on both
engines: centrifuge-js's `tagsFilter` option for live delivery (JSON and Protobuf) and for
stream and cache recovery, raw frames for the refusals.

What a filtered subscriber must see: only matching publications, and no insufficient-state
unsubscribe after refused ones (its position moves past them, as centrifuge's); what a
subscriber without a filter in the same channel must see: everything, unchanged.
"""

from __future__ import annotations

import re
import urllib.request
import uuid

import pytest

from .helpers import RawWS, ServerHandle, WSClosed, run_js

HISTORY = {"history_size": 100, "history_ttl": "300s", "force_recovery": True}
CONFIG = {
    "prometheus": {"enabled": True},
    "channel": {
        "namespaces": [
            {
                "name": "tf",
                "allow_subscribe_for_client": True,
                "allow_tags_filter": True,
                **HISTORY,
            },
            {
                "name": "tfcache",
                "allow_subscribe_for_client": True,
                "allow_tags_filter": True,
                "force_recovery_mode": "cache",
                **HISTORY,
            },
            {"name": "notf", "allow_subscribe_for_client": True, **HISTORY},
        ]
    },
}

pytestmark = pytest.mark.usefixtures("node_js")


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def dropped(srv: ServerHandle, namespace: str) -> float:
    body = urllib.request.urlopen(f"{srv.url}/metrics", timeout=5).read().decode()
    m = re.search(
        r'^centrifugo_node_tags_filter_dropped_publications\{channel_namespace="'
        + namespace
        + r'"\} (\S+)$',
        body,
        re.M,
    )
    return float(m.group(1)) if m else 0.0


LIVE = """
// Protobuf delivers data as bytes.
const d = (x) => (x instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(x)) : x);
const a = newClient({ token: token('a') });
const b = newClient({ token: token('b') });
// eng, or a priority of at least 10 (as a number: "9" < "10")
const filter = { op: 'or', nodes: [
  { key: 'team', cmp: 'eq', val: 'eng' },
  { key: 'prio', cmp: 'gte', val: '10' },
] };
const sa = a.newSubscription(env.CH, { tagsFilter: filter });
const sb = b.newSubscription(env.CH);
const pa = collect(sa, 'publication');
const pb = collect(sb, 'publication');
const gone = collect(sa, 'unsubscribed');
sa.subscribe(); sb.subscribe(); a.connect(); b.connect();
await Promise.all([waitEvent(sa, 'subscribed'), waitEvent(sb, 'subscribed')]);
const tags = [{ team: 'ops' }, { team: 'eng' }, { team: 'ops', prio: '9' },
              { team: 'ops', prio: '10' }, null, { team: 'eng' }];
for (const [i, t] of tags.entries()) {
  const body = { channel: env.CH, data: { i } };
  if (t) body.tags = t;
  await api('publish', body);
}
await waitUntil(sb, 'publication', () => pb.length >= 6, 5000, 'bystander publications');
await waitUntil(sa, 'publication', () => pa.length >= 3, 5000, 'filtered publications');
return {
  a: pa.map((p) => [p.offset, d(p.data).i, p.tags || null]),
  b: pb.map((p) => [p.offset, d(p.data).i]),
  gone: gone.length,
  stateA: sa.state,
};
"""


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_live_delivery_is_filtered_and_bystander_unaffected(
    srv: ServerHandle, protobuf: bool
) -> None:
    before = dropped(srv, "tf")
    env = srv.js_env(CH=f"tf:live-{uid()}", **({"CF_PROTOBUF": "1"} if protobuf else {}))
    out = run_js(LIVE, env)
    assert out["a"] == [
        [2, 1, {"team": "eng"}],
        [4, 3, {"team": "ops", "prio": "10"}],
        [6, 5, {"team": "eng"}],
    ]
    assert out["b"] == [[n + 1, n] for n in range(6)]
    # Offsets 1, 3 and 5 were refused; the position moved past them, so no 2500.
    assert out["gone"] == 0
    assert out["stateA"] == "subscribed"
    assert dropped(srv, "tf") - before == 3


def test_stream_recovery_is_filtered(srv: ServerHandle) -> None:
    out = run_js(
        """
        const c = newClient({ token: token('r') });
        // "" in vals matches a publication without the tag, as in centrifuge
        const sub = c.newSubscription(env.CH, { tagsFilter: { key: 'team', cmp: 'in', vals: ['eng', ''] } });
        const pubs = collect(sub, 'publication');
        const subs = collect(sub, 'subscribed');
        const gone = collect(sub, 'unsubscribed');
        sub.subscribe(); c.connect();
        await waitEvent(sub, 'subscribed');
        const pub = (tags) => api('publish', { channel: env.CH, data: {}, ...(tags ? { tags } : {}) });
        await pub({ team: 'ops' });  // 1, refused
        await pub({ team: 'eng' });  // 2
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'live');
        c.disconnect();
        await pub({ team: 'ops' });  // 3, refused
        await pub(null);             // 4
        await pub({ team: 'ops' });  // 5, refused
        c.connect();
        await waitUntil(sub, 'subscribed', () => subs.length >= 2, 5000, 'resubscribe');
        await waitUntil(sub, 'publication', () => pubs.length >= 2, 5000, 'recovered');
        await pub({ team: 'ops' });  // 6, refused
        await pub({ team: 'eng' });  // 7: continues the position the refused ones moved
        await waitUntil(sub, 'publication', () => pubs.length >= 3, 5000, 'live after recovery');
        return { second: subs[1], offsets: pubs.map((p) => p.offset), gone: gone.length, state: sub.state };
        """,
        srv.js_env(CH=f"tf:rec-{uid()}"),
    )
    assert out["second"]["wasRecovering"] is True
    assert out["second"]["recovered"] is True
    assert out["second"]["hasRecoveredPublications"] is True
    assert out["offsets"] == [2, 4, 7]
    assert out["gone"] == 0
    assert out["state"] == "subscribed"


def test_cache_recovery_gives_the_latest_matching_publication(srv: ServerHandle) -> None:
    out = run_js(
        """
        const c = newClient({ token: token('k') });
        const sub = c.newSubscription(env.CH, { tagsFilter: { key: 'team', cmp: 'eq', val: 'eng' } });
        const pubs = collect(sub, 'publication');
        const subs = collect(sub, 'subscribed');
        sub.subscribe(); c.connect();
        await waitEvent(sub, 'subscribed');
        c.disconnect();
        await api('publish', { channel: env.CH, data: { n: 1 }, tags: { team: 'eng' } });
        await api('publish', { channel: env.CH, data: { n: 2 }, tags: { team: 'ops' } });
        c.connect();
        await waitUntil(sub, 'subscribed', () => subs.length >= 2, 5000, 'resubscribe');
        await waitUntil(sub, 'publication', () => pubs.length >= 1, 5000, 'cache');
        await api('publish', { channel: env.CH, data: { n: 3 }, tags: { team: 'eng' } });
        await waitUntil(sub, 'publication', () => pubs.length >= 2, 5000, 'live');
        return { second: subs[1], pubs: pubs.map((p) => [p.offset, p.data.n]), state: sub.state };
        """,
        srv.js_env(CH=f"tfcache:c-{uid()}"),
    )
    assert out["second"]["recovered"] is True
    # Without the filter the cache would hand over offset 2 (team ops).
    assert out["pubs"] == [[1, 1], [3, 3]]
    assert out["state"] == "subscribed"


async def _subscribe(srv: ServerHandle, ws: RawWS, channel: str, tf: object) -> dict:
    assert "connect" in await ws.connect_cmd(srv.token("raw"))
    return await ws.command({"subscribe": {"channel": channel, "tf": tf}})


async def test_filter_where_not_allowed_is_107(srv: ServerHandle) -> None:
    async with RawWS.connect(srv.ws_url) as ws:
        rep = await _subscribe(srv, ws, f"notf:{uid()}", {"key": "a", "cmp": "ex"})
        assert rep["error"] == {"code": 107, "message": "bad request"}
        # The connection stays; the same channel without a filter subscribes.
        rep = await ws.command({"subscribe": {"channel": f"notf:{uid()}"}})
        assert "subscribe" in rep
    assert "tags filter not allowed" in srv.log_text()


@pytest.mark.parametrize(
    "tf",
    [
        {"key": "a", "cmp": "eq"},  # eq needs val
        {"key": "a", "cmp": "in", "vals": []},
        {"cmp": "sw", "val": "x"},  # no key
        {"op": "xor", "nodes": [{"cmp": "ex"}]},
        {"op": "not", "nodes": []},
        {"key": "a", "cmp": "like", "val": "x"},
    ],
)
async def test_invalid_filter_is_107(srv: ServerHandle, tf: dict) -> None:
    async with RawWS.connect(srv.ws_url) as ws:
        rep = await _subscribe(srv, ws, f"tf:{uid()}", tf)
        assert rep["error"] == {"code": 107, "message": "bad request"}
        assert "subscribe" in await ws.command({"subscribe": {"channel": f"tf:{uid()}"}})


async def test_filter_of_wrong_type_disconnects_3501(srv: ServerHandle) -> None:
    async with RawWS.connect(srv.ws_url) as ws:
        with pytest.raises(WSClosed) as closed:
            await _subscribe(srv, ws, f"tf:{uid()}", {"key": "a", "cmp": "eq", "val": 5})
            await ws.wait_closed()
        assert closed.value.code == 3501
