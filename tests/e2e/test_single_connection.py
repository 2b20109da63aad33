"""`client.subscribe_to_user_personal_channel.single_connection`: a user's new connection
closes the older ones (3504), as Centrifugo's connect handler does through presence in the
personal channel. Real server, raw WebSocket clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import RawWS, ServerHandle, start_server

CONFIG = {
    "client": {"subscribe_to_user_personal_channel": {"enabled": True, "single_connection": True}},
    "channel": {"without_namespace": {"presence": True}},
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(CONFIG)
    yield handle
    handle.stop()


async def test_new_connection_closes_the_older_one(server: ServerHandle) -> None:
    async with RawWS.connect(server.ws_url) as first, RawWS.connect(server.ws_url) as other:
        reply = await first.connect_cmd(server.token("alice"))
        assert reply["connect"]["subs"] == {"#alice": {}}
        assert "connect" in await other.connect_cmd(server.token("bob"))
        async with RawWS.connect(server.ws_url) as second:
            # Answered at once: not after the old connection's closing handshake, which
            # `first` (not reading yet) would hold up to its 5 s bound.
            reply = await second.command({"connect": {"token": server.token("alice")}}, 2.0)
            assert reply["connect"]["subs"] == {"#alice": {}}
            assert await first.wait_closed() == (3504, "connection limit")
            # The newest connection stays, and so does another user's.
            presence = server.api("presence", {"channel": "#alice"})["result"]["presence"]
            assert [p["client"] for p in presence.values()] == [reply["connect"]["client"]]
            assert len(server.api("presence", {"channel": "#bob"})["result"]["presence"]) == 1
