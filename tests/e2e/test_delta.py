"""Fossil delta compression end to end, on both engines (issue 16 point 1).

centrifuge-js applies every patch itself (`delta: 'fossil'`), so a wrong patch or a wrong
base fails here: each publication must arrive exactly as published, the first one after a
subscribe in full and the later ones as patches, smaller on the wire. Raw frames pin the
JSON form (data as a JSON string, `delta: true` on patches) and the refusals.
"""

from __future__ import annotations

import json
import uuid

import pytest

from .helpers import RawWS, ServerHandle, WSClosed, run_js

HISTORY = {"history_size": 100, "history_ttl": "300s", "force_recovery": True}
CONFIG = {
    "channel": {
        "namespaces": [
            # delta for every publication of the namespace
            {
                "name": "dp",
                "allow_subscribe_for_client": True,
                "allowed_delta_types": ["fossil"],
                "delta_publish": True,
                **HISTORY,
            },
            # delta only where the API publish asks for it
            {
                "name": "da",
                "allow_subscribe_for_client": True,
                "allowed_delta_types": ["fossil"],
                **HISTORY,
            },
            # history but not positioned: negotiated, yet always in full (no offset check
            # proves the client holds the base), as centrifuge
            {
                "name": "dnp",
                "allow_subscribe_for_client": True,
                "allowed_delta_types": ["fossil"],
                "delta_publish": True,
                "history_size": 100,
                "history_ttl": "300s",
            },
            # delta_publish but no delta type allowed: never negotiated
            {
                "name": "nod",
                "allow_subscribe_for_client": True,
                "delta_publish": True,
                **HISTORY,
            },
        ]
    },
}

pytestmark = pytest.mark.usefixtures("node_js")


@pytest.fixture(scope="module")
def srv(server_factory) -> ServerHandle:
    return server_factory(CONFIG)


def uid() -> str:
    return uuid.uuid4().hex[:10]


def doc(n: int) -> dict[str, object]:
    """A ~2 KB JSON document; successive ones differ in one field."""
    d: dict[str, object] = {
        f"field_{i:02d}": f"some fairly long value number {i}" for i in range(50)
    }
    d["counter"] = n
    return d


LIVE = """
const d = (x) => (x instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(x)) : x);
const c = newClient({ token: token('u') });
const sub = c.newSubscription(env.CH, { delta: 'fossil' });
const subs = collect(sub, 'subscribed');
const got = [];
const wire = [];
sub.on('publication', (ctx) => {
  got.push(d(ctx.data));
  const s = sub.deltaStats();
  wire.push([s.bytesReceived, s.numDeltaPayloads]);
});
sub.subscribe(); c.connect();
await waitEvent(sub, 'subscribed');
const docs = JSON.parse(env.DOCS);
for (const doc of docs) {
  await api('publish', { channel: env.CH, data: doc, ...(env.API_DELTA ? { delta: true } : {}) });
}
await waitUntil(sub, 'publication', () => got.length >= docs.length, 5000, 'publications');
// Per publication: bytes on the wire and whether it was a patch.
const sizes = wire.map(([b, n], i) => [b - (i ? wire[i - 1][0] : 0), n - (i ? wire[i - 1][1] : 0)]);
return { negotiated: subs[0].delta === undefined ? null : subs[0].delta, got, sizes, stats: sub.deltaStats() };
"""


def _live(srv: ServerHandle, channel: str, protobuf: bool = False, api_delta: bool = False):
    docs = [doc(n) for n in range(5)]
    env = srv.js_env(
        CH=channel,
        DOCS=json.dumps(docs),
        **({"CF_PROTOBUF": "1"} if protobuf else {}),
        **({"API_DELTA": "1"} if api_delta else {}),
    )
    return docs, run_js(LIVE, env)


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
def test_delta_publish_namespace_sends_patches(srv: ServerHandle, protobuf: bool) -> None:
    docs, out = _live(srv, f"dp:{uid()}", protobuf)
    assert out["got"] == docs  # every patch applied by the SDK to the right base
    full = len(json.dumps(docs[0], separators=(",", ":")))
    assert full > 1900
    first, *later = out["sizes"]
    assert first[1] == 0  # the first after subscribe is in full
    assert first[0] >= full
    assert all(patch == 1 for _, patch in later)
    assert all(size < full / 10 for size, _ in later)
    assert out["stats"]["numFullPayloads"] == 1
    assert out["stats"]["numDeltaPayloads"] == 4


def test_api_delta_flag(srv: ServerHandle) -> None:
    docs, out = _live(srv, f"da:{uid()}", api_delta=True)
    assert out["got"] == docs
    assert out["stats"]["numDeltaPayloads"] == 4
    # The same namespace without the API flag: negotiated, but everything goes in full.
    docs, out = _live(srv, f"da:{uid()}")
    assert out["got"] == docs
    assert out["stats"]["numDeltaPayloads"] == 0
    assert out["stats"]["numFullPayloads"] == 5


def test_unpositioned_subscription_gets_full_payloads(srv: ServerHandle) -> None:
    docs, out = _live(srv, f"dnp:{uid()}")
    assert out["got"] == docs
    assert out["stats"]["numFullPayloads"] == 5
    assert out["stats"]["numDeltaPayloads"] == 0


def test_not_negotiated_where_the_namespace_does_not_allow_it(srv: ServerHandle) -> None:
    docs, out = _live(srv, f"nod:{uid()}")
    assert out["got"] == docs
    assert out["stats"]["numPublications"] == 0  # the SDK saw no delta subscription


def test_recovery_with_delta(srv: ServerHandle) -> None:
    docs = [doc(n) for n in range(8)]
    out = run_js(
        """
        const c = newClient({ token: token('r') });
        const sub = c.newSubscription(env.CH, { delta: 'fossil' });
        const got = [];
        sub.on('publication', (ctx) => got.push(ctx.data));
        const subs = collect(sub, 'subscribed');
        const docs = JSON.parse(env.DOCS);
        sub.subscribe(); c.connect();
        await waitEvent(sub, 'subscribed');
        for (const doc of docs.slice(0, 2)) await api('publish', { channel: env.CH, data: doc });
        await waitUntil(sub, 'publication', () => got.length >= 2, 5000, 'live');
        c.disconnect();
        for (const doc of docs.slice(2, 5)) await api('publish', { channel: env.CH, data: doc });
        c.connect();
        await waitUntil(sub, 'subscribed', () => subs.length >= 2, 5000, 'resubscribe');
        await waitUntil(sub, 'publication', () => got.length >= 5, 5000, 'recovered');
        for (const doc of docs.slice(5)) await api('publish', { channel: env.CH, data: doc });
        await waitUntil(sub, 'publication', () => got.length >= 8, 5000, 'live after');
        return { got, second: subs[1], stats: sub.deltaStats() };
        """,
        srv.js_env(CH=f"dp:{uid()}", DOCS=json.dumps(docs)),
    )
    assert out["second"]["recovered"] is True
    assert out["got"] == docs
    # Full: the first live one and the first recovered one; patches: all others.
    assert out["stats"]["numFullPayloads"] == 2
    assert out["stats"]["numDeltaPayloads"] == 6


async def _subscribe_raw(srv: ServerHandle, ws: RawWS, channel: str, delta: str) -> dict:
    assert "connect" in await ws.connect_cmd(srv.token("raw"))
    return await ws.command({"subscribe": {"channel": channel, "delta": delta}})


async def test_json_wire_form(srv: ServerHandle) -> None:
    ch = f"dp:{uid()}"
    async with RawWS.connect(srv.ws_url) as ws:
        rep = await _subscribe_raw(srv, ws, ch, "fossil")
        assert rep["subscribe"]["delta"] is True
        for n in range(2):
            await srv.api_async("publish", {"channel": ch, "data": doc(n)})
        first = await ws.push()
        second = await ws.push()
    # Data is a JSON string holding the document, then a fossil patch in a string.
    assert json.loads(first["pub"]["data"]) == doc(0)
    assert "delta" not in first["pub"]
    assert second["pub"]["delta"] is True
    assert isinstance(second["pub"]["data"], str)
    assert second["pub"]["data"].endswith(";")
    assert second["pub"]["offset"] == 2


async def test_not_allowed_type_is_ignored(srv: ServerHandle) -> None:
    async with RawWS.connect(srv.ws_url) as ws:
        rep = await _subscribe_raw(srv, ws, f"nod:{uid()}", "fossil")
        assert "delta" not in rep["subscribe"]


async def test_unknown_delta_type_disconnects_3501(srv: ServerHandle) -> None:
    async with RawWS.connect(srv.ws_url) as ws:
        assert "connect" in await ws.connect_cmd(srv.token("raw"))
        await ws.send({"id": 7, "subscribe": {"channel": f"dp:{uid()}", "delta": "xdelta"}})
        with pytest.raises(WSClosed) as e:
            while True:
                await ws.recv()
        assert e.value.code == 3501
    assert "unknown delta type 'xdelta'" in srv.log_text()
