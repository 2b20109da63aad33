"""The periodic position check covers map subscriptions (centrifuge's checkPosition with
isMap): a change of a persistent map that never reached this node (lost on the way, as
during a PUB/SUB reconnect) is noticed against the map broker's stream top, and the client
gets unsubscribe 2500, so its SDK resubscribes and recovers. A real Node on the memory engine
and map broker, a Client over a transport that keeps its frames."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from app.client import Client
from app.errors import Disconnect
from app.maps.broker import MapPublishOptions
from app.protocol import Codec
from app.protocol.json import JSON
from tests.support.node import memory_node


class Frames:
    """A bidirectional transport that keeps every reply and push, and wakes a waiter."""

    name: str = "websocket"
    codec: Codec = JSON
    unidirectional: bool = False
    disconnect_push: bool = False

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def write(self, frame: bytes) -> None:
        self.items += [orjson.loads(line) for line in frame.splitlines() if line]
        self.arrived.set()

    async def close(self, disconnect: Disconnect) -> None:
        pass

    async def wait_for(self, match: Any) -> dict[str, Any]:
        while True:
            for item in self.items:
                if match(item):
                    return item
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)


CONFIG = {
    "client": {"insecure": True, "channel_position_check_delay": "200ms"},
    "channel": {
        "namespaces": [
            {
                "name": "mp",
                "allow_subscribe_for_client": True,
                "subscription_type": "map",
                "map": {"mode": "persistent"},
            }
        ]
    },
}


async def test_a_lost_map_change_is_found_by_the_position_check(tmp_path: Path) -> None:
    async with memory_node(tmp_path, CONFIG) as node:
        wire = Frames()
        client = Client(node, wire)
        await client.handle_frame(b'{"id":1,"connect":{}}')
        await wire.wait_for(lambda f: f.get("id") == 1)
        ch = "mp:lost"
        await client.handle_frame(
            orjson.dumps({"id": 2, "subscribe": {"channel": ch, "type": 1, "phase": 2}})
        )
        reply = await wire.wait_for(lambda f: f.get("id") == 2)
        assert reply["subscribe"]["phase"] == 0  # live, positioned at the empty stream
        broker = node.map_broker
        chopts = node.maps.options(ch)
        assert broker is not None and chopts is not None
        # The node misses one change (its map broker subscription gone for a moment).
        await broker.unsubscribe([ch])
        await broker.publish(ch, "k", MapPublishOptions(data=b'{"v":1}'), chopts)
        await broker.subscribe([ch])
        push = await wire.wait_for(lambda f: "unsubscribe" in f.get("push", {}))
        assert push["push"] == {
            "channel": ch,
            "unsubscribe": {"code": 2500, "reason": "insufficient state"},
        }
        await client.close()
