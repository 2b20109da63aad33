"""The one connect path of the engine's raw connections (app/engines/redis/connect.py): the
handshake is done, and its replies consumed, before the owner's protocol sees the connection;
a refused one raises the server's error and no owner is made."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import hiredis
import pytest
from redis.asyncio import Redis

from app.engines.redis.connect import Endpoint, handshake_commands, open_connection
from app.engines.redis.resp import pack_command


class _Owner(asyncio.Protocol):
    """Records what the owner of a connection is shown."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made += 1
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.replies.put_nowait(reply)

    async def call(self, *args: Any) -> Any:
        assert self.transport is not None
        self.transport.write(pack_command(args))
        return await asyncio.wait_for(self.replies.get(), 5)


def test_handshake_commands_follow_the_endpoint() -> None:
    assert handshake_commands(Endpoint(), 0, "") == []
    ep = Endpoint(username="u", password="p", client_name="named")
    assert handshake_commands(ep, 5, "fallback") == [
        ("AUTH", "u", "p"),
        ("CLIENT", "SETNAME", "named"),
        ("SELECT", 5),
    ]
    assert handshake_commands(Endpoint(password="p"), 0, "fallback") == [
        ("AUTH", "p"),
        ("CLIENT", "SETNAME", "fallback"),
    ]


async def test_the_owner_sees_only_its_own_replies(redis_proc: Any, rdb: Redis) -> None:
    ep = Endpoint(port=redis_proc.port, client_name="conn-test")
    owner = await open_connection(
        ep, _Owner, connect_by=None, handshake_timeout=5.0, db=3, default_name="unused"
    )
    try:
        assert owner.made == 1 and owner.replies.empty()
        assert await owner.call("CLIENT", "GETNAME") == b"conn-test"
        info = (await owner.call("CLIENT", "INFO")).decode()
        assert " db=3 " in info
    finally:
        assert owner.transport is not None
        owner.transport.close()


async def test_default_name_without_a_client_name(redis_proc: Any, rdb: Redis) -> None:
    ep = Endpoint(port=redis_proc.port)
    owner = await open_connection(
        ep, _Owner, connect_by=None, handshake_timeout=5.0, default_name="reader"
    )
    try:
        assert await owner.call("CLIENT", "GETNAME") == b"reader"
    finally:
        assert owner.transport is not None
        owner.transport.close()


async def test_a_refused_handshake_raises_its_error(redis_proc: Any, rdb: Redis) -> None:
    await rdb.execute_command("ACL", "SETUSER", "cu", "on", ">s3cret", "~*", "&*", "+@all")
    made: list[_Owner] = []

    def owner() -> _Owner:
        made.append(_Owner())
        return made[-1]

    ep = Endpoint(port=redis_proc.port, username="cu", password="wrong")
    with pytest.raises(hiredis.ReplyError, match="WRONGPASS"):
        await open_connection(ep, owner, connect_by=None, handshake_timeout=5.0)
    assert made == []  # no owner was ever shown the connection
