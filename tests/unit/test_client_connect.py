"""The steps of a connect (app/client/connecting.py), each on its own, against a real Node
with the memory engine and a Client over a transport that keeps what it is given.

The wire behaviour of the whole connect is proven end to end in tests/e2e (test_protocol,
test_python_sdk, test_single_connection, test_proxy_e2e); these pin each step's contract:
which credentials win, what a grant holds, and the limits' codes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from app.auth import SubscribeOptionsClaim
from app.client import Client, State
from app.client.connecting import ConnectGrant, server_side_subs
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_CHANNEL_LIMIT,
    DISCONNECT_CONNECTION_LIMIT,
    DISCONNECT_PERMISSION_DENIED,
    ERROR_EXPIRED,
    ClientError,
    Disconnect,
)
from app.node import Node
from app.protocol import Codec, DecodeError
from app.protocol.json import JSON
from tests.support.node import start_memory_node

SECRET = "a-test-secret-long-enough-for-hs256!"


class Recorder:
    """A bidirectional transport that keeps the frames written and the close."""

    name: str = "websocket"
    codec: Codec = JSON
    unidirectional: bool = False
    disconnect_push: bool = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: Disconnect | None = None

    async def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    async def close(self, disconnect: Disconnect) -> None:
        self.closed = disconnect


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def make(**client: Any) -> Node:
        cfg = {
            "client": {"token": {"hmac_secret_key": SECRET}, **client},
            "channel": {"without_namespace": {"allow_subscribe_for_client": True}},
        }
        node = await start_memory_node(tmp_path, cfg, f"config{len(nodes)}")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.shutdown()


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_server_side_subs_take_subs_options_over_channels() -> None:
    opts = SubscribeOptionsClaim(info=b'{"a":1}', data=b'"d"')
    reqs = server_side_subs(["a", "b"], {"b": opts, "c": SubscribeOptionsClaim()})
    assert list(reqs) == ["a", "b", "c"]
    assert reqs["a"].info is None
    assert (reqs["b"].info, reqs["b"].data) == (b'{"a":1}', b'"d"')


async def test_token_credentials_set_user_and_grant_its_channels(make_node: Any) -> None:
    node = await make_node()
    client = Client(node, Recorder())
    expire_at = int(time.time()) + 600
    grant = await client._connect_credentials(
        token(sub="u1", exp=expire_at, channels=["news"], info={"x": 1}), None, "", "", {}
    )
    assert (client.user, client.expire_at) == ("u1", expire_at)
    assert client.conn_info is not None and orjson.loads(client.conn_info) == {"x": 1}
    assert list(grant.subs) == ["news"] and grant.client_channels
    assert client._token_channels == ("news",)


async def test_anonymous_credentials_only_where_allowed(make_node: Any) -> None:
    refused = Client(await make_node(), Recorder())
    with pytest.raises(Disconnect) as e:
        await refused._connect_credentials("", None, "", "", {})
    assert e.value.code == DISCONNECT_BAD_REQUEST
    allowed = Client(await make_node(allow_anonymous_connect_without_token=True), Recorder())
    grant = await allowed._connect_credentials("", None, "", "", {})
    assert allowed.user == "" and grant == ConnectGrant()


async def test_trusted_header_names_the_user(make_node: Any) -> None:
    node = await make_node(user_id_http_header="X-User")
    client = Client(node, Recorder(), headers={"X-User": "gw-user"})
    grant = await client._connect_credentials("", None, "", "", {})
    assert client.user == "gw-user" and grant.client_channels and not grant.subs


async def test_anonymous_token_refused_when_disallowed(make_node: Any) -> None:
    node = await make_node(disallow_anonymous_connection_tokens=True)
    with pytest.raises(Disconnect) as e:
        await Client(node, Recorder())._connect_credentials(token(sub=""), None, "", "", {})
    assert e.value.code == DISCONNECT_PERMISSION_DENIED


async def test_expiry_in_the_past_is_110_unless_insecure(make_node: Any) -> None:
    client = Client(await make_node(), Recorder())
    with pytest.raises(ClientError) as e:
        client._accept_expiry(int(time.time()) - 1)
    assert e.value.code == ERROR_EXPIRED
    insecure = Client(await make_node(insecure=True), Recorder())
    insecure._accept_expiry(int(time.time()) - 1)
    assert insecure.expire_at == 0


async def test_user_connection_limit_counts_connected_clients(make_node: Any) -> None:
    node = await make_node(user_connection_limit=1, allow_anonymous_connect_without_token=True)
    first = Client(node, Recorder())
    await first._cmd_connect(1, {"token": token(sub="u1")})
    assert first.state is State.CONNECTED
    second = Client(node, Recorder())
    second.user = "u1"
    with pytest.raises(Disconnect) as e:
        second._check_user_connection_limit()
    assert e.value.code == DISCONNECT_CONNECTION_LIMIT
    second.user = "u2"
    second._check_user_connection_limit()


async def test_client_channels_join_public_ones_with_positions(make_node: Any) -> None:
    client = Client(await make_node(), Recorder())
    client.user = "u1"  # the namespace allows subscribing to users, not anonymous ones
    grant = ConnectGrant(server_side_subs(["granted"], {}))
    client._add_client_channels(
        grant,
        {
            "granted": {"recover": True, "offset": 5, "epoch": "e"},
            "public": {},
            "$private": {},
        },
    )
    assert list(grant.subs) == ["granted", "public"]
    granted = grant.subs["granted"]
    assert (granted.recover, granted.offset, granted.epoch) == (True, 5, "e")
    # With a connect proxy the backend decides: only its channels take positions.
    proxied = ConnectGrant(client_channels=False)
    client._add_client_channels(proxied, {"public": {}})
    assert not proxied.subs
    with pytest.raises(DecodeError):
        client._add_client_channels(ConnectGrant(), {"public": 1})


async def test_channel_limit_bounds_the_connect_subscriptions(make_node: Any) -> None:
    client = Client(await make_node(channel_limit=1), Recorder())
    assert len(client._resolve_connect_channels(ConnectGrant(server_side_subs(["a"], {})))) == 1
    with pytest.raises(Disconnect) as e:
        client._resolve_connect_channels(ConnectGrant(server_side_subs(["a", "b"], {})))
    assert e.value.code == DISCONNECT_CHANNEL_LIMIT


async def test_connect_result_fields(make_node: Any) -> None:
    node = await make_node(connect_include_server_time=True, ping_interval="10s")
    client = Client(node, Recorder())
    client.expire_at = int(time.time()) + 100
    result = client._connect_result(b'{"d":1}')
    assert result["client"] == client.uid and result["data"] == b'{"d":1}'
    assert result["expires"] is True and 0 < result["ttl"] <= 100
    assert (result["ping"], result["pong"]) == (10, True)
    assert abs(result["time"] - time.time() * 1000) < 60_000


async def test_server_side_subscriptions_are_reported_in_the_result(make_node: Any) -> None:
    node = await make_node()
    client = Client(node, Recorder())
    reqs = server_side_subs(["a"], {})
    resolved = [(node.resolve(ch, client_side=False), r) for ch, r in reqs.items()]
    client._become_connected()
    result: dict[str, Any] = {}
    subs = await client._subscribe_at_connect(resolved, result)
    assert [s.channel for s in subs] == ["a"] and set(result["subs"]) == {"a"}
    assert client.state is State.CONNECTED and node.hub.has_subscribers("a")
    await client.close()
