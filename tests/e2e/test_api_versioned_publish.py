"""Versioned publish through the server HTTP API (issue 16 point 3), on both engines.

`version` and `version_epoch` on publish, broadcast and batch publish: a version not newer
than the channel's last stored one in the same epoch is dropped (not stored, not sent) and
answered with the stream's current position, as Centrifugo answers it. A centrifuge-python
subscriber must see exactly the versions that were stored.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from .helpers import ServerHandle
from .redis_e2e_helpers import ApiClient, SdkSubscriber

CONFIG: dict[str, Any] = {
    "channel": {
        "without_namespace": {
            "history_size": 10,
            "history_ttl": "300s",
            "allow_subscribe_for_client": True,
        },
    },
}

VERSIONS = (1, 2, 2, 1, 3)


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    return server_factory(CONFIG)


async def publish_versions(api: ApiClient, how: str, ch: str) -> list[dict[str, Any]]:
    """Publishes {"v": v} with version v for every v of VERSIONS; returns each result."""
    out = []
    if how == "batch":  # one sequential batch: the Redis engine sends one script call
        commands = [
            {"publish": {"channel": ch, "data": {"v": v}, "version": v, "version_epoch": "e1"}}
            for v in VERSIONS
        ]
        body = await api.call("batch", {"commands": commands})
        return [reply["publish"] for reply in body["replies"]]
    for v in VERSIONS:
        if how == "publish":
            params = {"channel": ch, "data": {"v": v}, "version": v, "version_epoch": "e1"}
            out.append(await api.result("publish", params))
        else:
            params = {"channels": [ch], "data": {"v": v}, "version": v, "version_epoch": "e1"}
            (reply,) = (await api.result("broadcast", params))["responses"]
            out.append(reply["result"])
    return out


@pytest.mark.parametrize("how", ["publish", "broadcast", "batch"])
async def test_stale_versions_are_neither_delivered_nor_stored(
    server: ServerHandle, how: str
) -> None:
    ch = f"ver-{how}-{uuid.uuid4().hex[:8]}"
    sub = SdkSubscriber(server.ws_url, server.token("u1"), ch, "u1")
    api = ApiClient(server)
    try:
        await sub.start()
        results = await publish_versions(api, how, ch)
        epoch = results[0]["epoch"]
        # A dropped version answers the current top (success, no new offset).
        assert [(r["offset"], r["epoch"]) for r in results] == [
            (1, epoch),
            (2, epoch),
            (2, epoch),
            (2, epoch),
            (3, epoch),
        ]
        await sub.wait_for(lambda: len(sub.pubs) >= 3, what="3 publications")
        # A new epoch starts the versions over: version 1 of epoch e2 is stored.
        await api.result(
            "publish", {"channel": ch, "data": {"v": 101}, "version": 1, "version_epoch": "e2"}
        )
        await sub.wait_for(lambda: len(sub.pubs) >= 4, what="the e2 publication")
        assert sub.pubs == [(1, {"v": 1}), (2, {"v": 2}), (3, {"v": 3}), (4, {"v": 101})]
        hist = await api.result("history", {"channel": ch, "limit": -1})
        assert [(p["offset"], p["data"]) for p in hist["publications"]] == [
            (1, {"v": 1}),
            (2, {"v": 2}),
            (3, {"v": 3}),
            (4, {"v": 101}),
        ]
    finally:
        await sub.stop()
        await api.close()
