"""gRPC end to end (research §2.4, §1.12): the server API `CentrifugoApi` and the `uni_grpc`
stream, called with grpcio clients generated from proto/api.proto and proto/uni.proto,
against a real server on both engines.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from grpc_gen import api_pb2_grpc, uni_pb2_grpc

from app import VERSION_STRING
from app.api.gen import api_pb2 as pb
from app.api.gen import uni_pb2
from tests.support.tls_certs import self_signed_pem

from .helpers import RawWS, ServerHandle, free_port

HISTORY = {"history_size": 100, "history_ttl": "300s"}
CHANNELS = {
    "without_namespace": {"presence": True, "force_recovery": True, **HISTORY},
    "namespaces": [
        {"name": "plain"},
        {"name": "bin", "publication_data_format": "binary", "presence": True, **HISTORY},
        {"name": "obj", "publication_data_format": "json_object"},
    ],
}
TRANSPORT = (("x-centrifugo-error-mode", "transport"),)
# grpcio shares TCP connections between channels to one target unless told not to; the
# multi-worker test needs each stream on its own connection.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

_seq = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_seq)}{secrets.token_hex(3)}"


def grpc_config(**grpc_api: Any) -> dict[str, Any]:
    return {
        # A short ping interval: uni_grpc must still send no pings.
        "client": {"ping_interval": "1s", "pong_timeout": "500ms"},
        "channel": CHANNELS,
        "grpc_api": {"enabled": True, "address": "127.0.0.1", "port": free_port(), **grpc_api},
        "uni_grpc": {"enabled": True, "address": "127.0.0.1", "port": free_port()},
    }


@pytest.fixture(scope="module")
def server(server_factory: Any) -> ServerHandle:
    return server_factory(grpc_config(key="gk-" + secrets.token_hex(8)))


@pytest.fixture(scope="module")
def open_server(server_factory: Any) -> ServerHandle:
    """No key (no auth), errors as gRPC statuses by configuration."""
    return server_factory(grpc_config(error_mode="transport"))


def api_target(server: ServerHandle) -> str:
    return f"127.0.0.1:{server.config['grpc_api']['port']}"


def uni_target(server: ServerHandle) -> str:
    return f"127.0.0.1:{server.config['uni_grpc']['port']}"


def auth(server: ServerHandle) -> tuple[tuple[str, str], ...]:
    key = server.config["grpc_api"].get("key")
    return (("authorization", f"apikey {key}"),) if key else ()


class Api:
    """The generated stub with the server's key sent on every call."""

    def __init__(self, server: ServerHandle, channel: grpc.aio.Channel) -> None:
        self.stub = api_pb2_grpc.CentrifugoApiStub(channel)
        self.md = auth(server)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stub, name)

        async def call(request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
            return await method(request, metadata=self.md + metadata, timeout=10)

        return call


@asynccontextmanager
async def api_client(server: ServerHandle) -> AsyncIterator[Api]:
    async with grpc.aio.insecure_channel(api_target(server), options=CHANNEL_OPTIONS) as ch:
        yield Api(server, ch)


class Uni:
    """One uni_grpc stream."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._it = call.__aiter__()

    async def push(self, timeout: float = 5.0) -> uni_pb2.Push:
        return await asyncio.wait_for(self._it.__anext__(), timeout)

    async def ended(self, timeout: float = 5.0) -> grpc.StatusCode:
        """Wait for the end of the stream (no further pushes allowed) and return its status."""
        with pytest.raises(StopAsyncIteration):
            extra = await self.push(timeout)
            raise AssertionError(f"unexpected push {extra}")
        return await self.call.code()


@asynccontextmanager
async def uni_stream(
    server: ServerHandle, request: uni_pb2.ConnectRequest, metadata: Any = ()
) -> AsyncIterator[Uni]:
    async with grpc.aio.insecure_channel(uni_target(server), options=CHANNEL_OPTIONS) as ch:
        stub = uni_pb2_grpc.CentrifugoUniStreamStub(ch)
        call = stub.Consume(request, metadata=metadata)
        try:
            yield Uni(call)
        finally:
            call.cancel()


def status_error(e: grpc.aio.AioRpcError) -> pb.Error:
    """The API Error packed in the google.rpc.Status details of a transport-mode error."""
    raw = dict(e.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    fields = _decode_fields(raw)
    assert fields[1] == [e.code().value[0]]
    assert fields[2] == [e.details().encode()]
    (detail,) = fields[3]
    packed = any_pb2.Any.FromString(detail)
    err = pb.Error()
    assert packed.Unpack(err)
    return err


def _decode_fields(data: bytes) -> dict[int, list[Any]]:
    """A minimal protobuf reader (varint and length-delimited fields)."""
    out: dict[int, list[Any]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        n = shift = 0
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7

    while pos < len(data):
        tag = varint()
        if tag & 7 == 0:
            value: Any = varint()
        else:
            assert tag & 7 == 2, tag
            length = varint()
            value = data[pos : pos + length]
            pos += length
        out.setdefault(tag >> 3, []).append(value)
    return out


# --------------------------------------------------------------------------------------------
# server API


async def test_auth(server: ServerHandle, open_server: ServerHandle) -> None:
    async with grpc.aio.insecure_channel(api_target(server)) as ch:
        stub = api_pb2_grpc.CentrifugoApiStub(ch)
        for md in [(), (("authorization", "apikey wrong"),), (("authorization", "gk"),)]:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Info(pb.InfoRequest(), metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert e.value.details() == "unauthenticated"
        resp = await stub.Info(pb.InfoRequest(), metadata=auth(server))
        assert len(resp.result.nodes) == 1
    # Without grpc_api.key no credentials are needed.
    async with grpc.aio.insecure_channel(api_target(open_server)) as ch:
        resp = await api_pb2_grpc.CentrifugoApiStub(ch).Info(pb.InfoRequest())
        assert resp.result.nodes[0].version == VERSION_STRING


async def test_publish_and_history(server: ServerHandle) -> None:
    ch = uniq("h")
    async with api_client(server) as api:
        r1 = await api.Publish(pb.PublishRequest(channel=ch, data=b'{"n": 1}', tags={"t": "v"}))
        assert not r1.HasField("error")
        assert r1.result.offset == 1 and len(r1.result.epoch) > 0
        b64 = base64.b64encode(b'{"n":2}').decode()
        r2 = await api.Publish(pb.PublishRequest(channel=ch, b64data=b64))
        assert (r2.result.offset, r2.result.epoch) == (2, r1.result.epoch)
        hist = await api.History(pb.HistoryRequest(channel=ch, limit=-1))
        assert hist.result == pb.HistoryResult(
            publications=[
                # Payload bytes travel as given (the JSON is not re-serialised).
                pb.Publication(data=b'{"n": 1}', offset=1, tags={"t": "v"}),
                pb.Publication(data=b'{"n":2}', offset=2),
            ],
            offset=2,
            epoch=r1.result.epoch,
        )
        since = pb.StreamPosition(offset=1, epoch=r1.result.epoch)
        hist = await api.History(pb.HistoryRequest(channel=ch, limit=10, since=since))
        assert [p.offset for p in hist.result.publications] == [2]
        hist = await api.History(pb.HistoryRequest(channel=ch, limit=1, reverse=True))
        assert [p.offset for p in hist.result.publications] == [2]
        # Position only.
        hist = await api.History(pb.HistoryRequest(channel=ch))
        assert hist.result == pb.HistoryResult(offset=2, epoch=r1.result.epoch)
        # Removing history keeps the stream position.
        rm = await api.HistoryRemove(pb.HistoryRemoveRequest(channel=ch))
        assert rm.HasField("result") and not rm.HasField("error")
        hist = await api.History(pb.HistoryRequest(channel=ch, limit=-1))
        assert list(hist.result.publications) == [] and hist.result.offset == 2
        # Idempotent publish returns the first result.
        key = uniq("k")
        a = await api.Publish(pb.PublishRequest(channel=ch, data=b"1", idempotency_key=key))
        b = await api.Publish(pb.PublishRequest(channel=ch, data=b"1", idempotency_key=key))
        assert a.result == b.result and a.result.offset == 3
        # skip_history: nothing stored, no position in the result.
        r = await api.Publish(pb.PublishRequest(channel=ch, data=b"1", skip_history=True))
        assert r.HasField("result") and r.result == pb.PublishResult()


async def test_publish_version_drops_stale_publications(server: ServerHandle) -> None:
    """gRPC Publish and Broadcast carry version and version_epoch to the broker too."""
    ch = uniq("v")
    async with api_client(server) as api:
        offsets = []
        for v in (1, 2, 2, 1, 3):
            r = await api.Publish(
                pb.PublishRequest(channel=ch, data=b"%d" % v, version=v, version_epoch="e")
            )
            offsets.append(r.result.offset)
        assert offsets == [1, 2, 2, 2, 3]
        b = await api.Broadcast(
            pb.BroadcastRequest(channels=[ch], data=b"3", version=3, version_epoch="e")
        )
        assert b.result.responses[0].result.offset == 3
        hist = await api.History(pb.HistoryRequest(channel=ch, limit=-1))
        assert [(p.offset, p.data) for p in hist.result.publications] == [
            (1, b"1"),
            (2, b"2"),
            (3, b"3"),
        ]


async def test_binary_payloads(server: ServerHandle) -> None:
    ch = uniq("bin:b")
    payload = bytes(range(256))
    async with api_client(server) as api:
        r = await api.Publish(pb.PublishRequest(channel=ch, data=payload))
        assert r.result.offset == 1
        hist = await api.History(pb.HistoryRequest(channel=ch, limit=-1))
        assert [p.data for p in hist.result.publications] == [payload]
        # Without publication_data_format nothing is validated; json_object wants an object.
        r = await api.Publish(pb.PublishRequest(channel=uniq("h"), data=b"\xff\x00"))
        assert r.result.offset == 1
        r = await api.Publish(pb.PublishRequest(channel=uniq("obj:o"), data=b"[1]"))
        assert r.error == pb.Error(code=107, message="bad request")
        r = await api.Publish(pb.PublishRequest(channel=uniq("obj:o"), data=b'{"a":1}'))
        assert not r.HasField("error")


async def test_method_errors_in_response(server: ServerHandle) -> None:
    async with api_client(server) as api:
        cases = [
            (api.Publish(pb.PublishRequest(channel="", data=b"1")), 107, "bad request"),
            (
                api.Publish(
                    pb.PublishRequest(channel=uniq("x")),
                ),
                107,
                "bad request",
            ),
            (api.Publish(pb.PublishRequest(channel="nope:x", data=b"1")), 102, "unknown channel"),
            (api.History(pb.HistoryRequest(channel=uniq("plain:p"))), 108, "not available"),
            (api.Presence(pb.PresenceRequest(channel=uniq("plain:p"))), 108, "not available"),
            (api.PresenceStats(pb.PresenceStatsRequest(channel="")), 107, "bad request"),
            (
                api.History(
                    pb.HistoryRequest(
                        channel=uniq("h"), limit=1, since=pb.StreamPosition(offset=0, epoch="x")
                    )
                ),
                112,
                "unrecoverable position",
            ),
            (api.RPC(pb.RPCRequest(method="m", params=b"{}")), 104, "not found"),
            (api.RPC(pb.RPCRequest()), 107, "bad request"),
        ]
        for coro, code, message in cases:
            resp = await coro
            assert resp.error == pb.Error(code=code, message=message), resp
            assert not resp.HasField("result")


async def test_transport_error_mode(server: ServerHandle, open_server: ServerHandle) -> None:
    cases = [
        (
            "Publish",
            pb.PublishRequest(channel="", data=b"1"),
            107,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ("Publish", pb.PublishRequest(channel="nope:x", data=b"1"), 102, grpc.StatusCode.NOT_FOUND),
        ("RPC", pb.RPCRequest(method="m"), 104, grpc.StatusCode.NOT_FOUND),
        ("History", pb.HistoryRequest(channel="plain:x"), 108, grpc.StatusCode.INVALID_ARGUMENT),
        (
            "History",
            pb.HistoryRequest(channel="h", limit=1, since=pb.StreamPosition(epoch="bad")),
            112,
            grpc.StatusCode.OUT_OF_RANGE,
        ),
    ]
    messages = {100: "internal server error", 102: "unknown channel", 104: "not found"}
    messages |= {107: "bad request", 108: "not available", 112: "unrecoverable position"}
    # Per call by metadata, and for every call by grpc_api.error_mode.
    for srv, md in [(server, TRANSPORT), (open_server, ())]:
        async with api_client(srv) as api:
            for method, request, code, status in cases:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await getattr(api, method)(request, md)
                assert e.value.code() == status, (method, code)
                assert e.value.details() == messages[code]
                assert status_error(e.value) == pb.Error(code=code, message=messages[code])
            # Success looks the same in both modes.
            ok = await api.Publish(pb.PublishRequest(channel=uniq("h"), data=b"{}"), md)
            assert ok.result.offset == 1
    # Other metadata values keep errors in the response.
    async with api_client(server) as api:
        resp = await api.RPC(pb.RPCRequest(method="m"), (("x-centrifugo-error-mode", "body"),))
        assert resp.error.code == 104


async def test_broadcast(server: ServerHandle) -> None:
    a, b = uniq("h"), uniq("plain:b")
    async with api_client(server) as api:
        resp = await api.Broadcast(
            pb.BroadcastRequest(channels=[a, "nope:x", b, ""], data=b'{"x":1}')
        )
        assert list(resp.result.responses) == [
            pb.PublishResponse(
                result=pb.PublishResult(offset=1, epoch=resp.result.responses[0].result.epoch)
            ),
            pb.PublishResponse(error=pb.Error(code=102, message="unknown channel")),
            pb.PublishResponse(result=pb.PublishResult()),
            pb.PublishResponse(error=pb.Error(code=107, message="bad request")),
        ]
        assert resp.result.responses[0].result.epoch
        empty = await api.Broadcast(pb.BroadcastRequest(data=b"1"))
        assert empty.error.code == 107


async def test_batch(server: ServerHandle) -> None:
    ch = uniq("h")
    async with api_client(server) as api:
        for parallel in (False, True):
            resp = await api.Batch(
                pb.BatchRequest(
                    commands=[
                        pb.Command(publish=pb.PublishRequest(channel=ch, data=b"1")),
                        pb.Command(history=pb.HistoryRequest(channel="plain:x")),
                        pb.Command(presence_stats=pb.PresenceStatsRequest(channel=ch)),
                        pb.Command(),
                    ],
                    parallel=parallel,
                )
            )
            replies = list(resp.replies)
            assert len(replies) == 4
            assert replies[0].HasField("publish") and replies[0].publish.offset >= 1
            assert replies[1] == pb.Reply(error=pb.Error(code=108, message="not available"))
            assert replies[2].HasField("presence_stats")
            assert replies[2].presence_stats == pb.PresenceStatsResult()
            assert replies[3] == pb.Reply(error=pb.Error(code=104, message="not found"))
    # A command with a field this proto does not know (a PRO command, number 17) is 104.
    async with grpc.aio.insecure_channel(api_target(server)) as chan:
        raw_batch = chan.unary_unary(
            "/centrifugal.centrifugo.api.CentrifugoApi/Batch",
            request_serializer=lambda b: b,
            response_deserializer=pb.BatchResponse.FromString,
        )
        command = b"\x8a\x01\x00"  # field 17, empty message
        resp = await raw_batch(b"\x0a" + bytes([len(command)]) + command, metadata=auth(server))
        assert list(resp.replies) == [pb.Reply(error=pb.Error(code=104, message="not found"))]


async def test_channels_and_info(server: ServerHandle) -> None:
    user, ch = uniq("u"), uniq("h")
    async with api_client(server) as api:
        async with uni_stream(
            server, uni_pb2.ConnectRequest(token=server.token(user, channels=[ch]))
        ) as uni:
            client = (await uni.push()).connect.client
            resp = await api.Channels(pb.ChannelsRequest(pattern=ch[:-1] + "*"))
            assert dict(resp.result.channels) == {ch: pb.ChannelInfo(num_clients=1)}
            resp = await api.Channels(pb.ChannelsRequest(pattern="nothing-*"))
            assert dict(resp.result.channels) == {}
            pres = await api.Presence(pb.PresenceRequest(channel=ch))
            assert dict(pres.result.presence) == {client: pb.ClientInfo(user=user, client=client)}
            stats = await api.PresenceStats(pb.PresenceStatsRequest(channel=ch))
            assert stats.result == pb.PresenceStatsResult(num_clients=1, num_users=1)
            info = await api.Info(pb.InfoRequest())
            (node,) = info.result.nodes
            uuid.UUID(node.uid)
            assert node.version == VERSION_STRING and node.name
            assert node.num_clients >= 1 and node.num_users >= 1 and node.num_channels >= 1


async def test_user_methods_on_live_uni_stream(server: ServerHandle) -> None:
    user, ch = uniq("u"), uniq("h")
    async with (
        api_client(server) as api,
        uni_stream(server, uni_pb2.ConnectRequest(token=server.token(user))) as uni,
    ):
        assert (await uni.push()).HasField("connect")
        override = pb.SubscribeOptionOverride(presence=pb.BoolValue(value=False))
        r = await api.Subscribe(
            pb.SubscribeRequest(user=user, channel=ch, data=b'{"welcome":1}', override=override)
        )
        assert r.HasField("result") and not r.HasField("error")
        sub = await uni.push()
        assert sub.channel == ch
        assert sub.subscribe == uni_pb2.Subscribe(
            recoverable=True, positioned=True, epoch=sub.subscribe.epoch, data=b'{"welcome":1}'
        )
        assert sub.subscribe.epoch
        # The override switched presence off for this subscription.
        pres = await api.Presence(pb.PresenceRequest(channel=ch))
        assert dict(pres.result.presence) == {}
        await api.Publish(pb.PublishRequest(channel=ch, data=b'{"m":1}'))
        assert await uni.push() == uni_pb2.Push(
            channel=ch, pub=uni_pb2.Publication(data=b'{"m":1}', offset=1)
        )
        await api.Unsubscribe(pb.UnsubscribeRequest(user=user, channel=ch))
        assert await uni.push() == uni_pb2.Push(
            channel=ch, unsubscribe=uni_pb2.Unsubscribe(code=2000, reason="server unsubscribe")
        )
        await api.Disconnect(
            pb.DisconnectRequest(user=user, disconnect=pb.Disconnect(code=4007, reason="later"))
        )
        assert await uni.push() == uni_pb2.Push(
            disconnect=uni_pb2.Disconnect(code=4007, reason="later")
        )
        assert await uni.ended() == grpc.StatusCode.OK


async def test_refresh_expired_and_whitelist(server: ServerHandle) -> None:
    user = uniq("u")
    async with api_client(server) as api:
        async with uni_stream(server, uni_pb2.ConnectRequest(token=server.token(user))) as a:
            async with uni_stream(server, uni_pb2.ConnectRequest(token=server.token(user))) as b:
                keep = (await a.push()).connect.client
                assert (await b.push()).HasField("connect")
                await api.Disconnect(pb.DisconnectRequest(user=user, whitelist=[keep]))
                assert (await b.push()).disconnect == uni_pb2.Disconnect(
                    code=3503, reason="force disconnect"
                )
                await api.Refresh(pb.RefreshRequest(user=user, expired=True))
                assert (await a.push()).disconnect == uni_pb2.Disconnect(
                    code=3005, reason="connection expired"
                )
                assert await a.ended() == grpc.StatusCode.OK


async def test_refresh_info_reaches_presence(server: ServerHandle) -> None:
    # RefreshRequest.info bytes become the connection info (raw JSON) that later
    # subscriptions announce in presence.
    user, ch = uniq("u"), uniq("h")
    async with (
        api_client(server) as api,
        uni_stream(server, uni_pb2.ConnectRequest(token=server.token(user))) as uni,
    ):
        client = (await uni.push()).connect.client
        await api.Refresh(
            pb.RefreshRequest(user=user, info=b'{"v":2}', expire_at=int(time.time()) + 60)
        )
        await api.Subscribe(pb.SubscribeRequest(user=user, channel=ch))
        while not (await uni.push()).HasField("subscribe"):
            pass  # a refresh push may come first
        pres = await api.Presence(pb.PresenceRequest(channel=ch))
        assert pres.result.presence[client] == pb.ClientInfo(
            user=user, client=client, conn_info=b'{"v":2}'
        )


async def test_refresh_sends_refresh_push(server: ServerHandle) -> None:
    user = uniq("u")
    async with (
        api_client(server) as api,
        uni_stream(server, uni_pb2.ConnectRequest(token=server.token(user))) as uni,
    ):
        assert (await uni.push()).HasField("connect")
        await api.Refresh(pb.RefreshRequest(user=user, expire_at=int(time.time()) + 3600))
        refresh = (await uni.push(timeout=2)).refresh
        assert refresh.expires and 3500 < refresh.ttl <= 3600


async def test_history_reverse_from_zero_is_internal_error(server: ServerHandle) -> None:
    async with api_client(server) as api:
        since = pb.StreamPosition(offset=0)
        resp = await api.History(pb.HistoryRequest(channel=uniq("h"), reverse=True, since=since))
        assert resp.error == pb.Error(code=100, message="internal server error")


# --------------------------------------------------------------------------------------------
# uni_grpc


async def test_uni_connect_push_and_publications(server: ServerHandle) -> None:
    user, ch, bch = uniq("u"), uniq("h"), uniq("bin:b")
    token = server.token(user, channels=[ch, bch], info={"name": "x"})
    async with (
        api_client(server) as api,
        uni_stream(server, uni_pb2.ConnectRequest(token=token, name="test", version="1")) as uni,
    ):
        push = await uni.push()
        assert push.HasField("connect")
        c = push.connect
        assert c.version == VERSION_STRING
        uuid.UUID(c.client)
        uuid.UUID(c.session)
        assert not c.pong
        assert set(c.subs) == {ch, bch}
        assert c.subs[ch].recoverable and c.subs[ch].positioned and c.subs[ch].epoch
        payload = b"\x00\x01binary\xff"
        await api.Publish(pb.PublishRequest(channel=bch, data=payload))
        await api.Publish(pb.PublishRequest(channel=ch, data=b'{"a":"b"}'))
        assert await uni.push() == uni_pb2.Push(
            channel=bch, pub=uni_pb2.Publication(data=payload, offset=1)
        )
        assert await uni.push() == uni_pb2.Push(
            channel=ch, pub=uni_pb2.Publication(data=b'{"a":"b"}', offset=1)
        )
        # client.ping_interval is 1s, yet gRPC streams carry no pings (as in Centrifugo).
        with pytest.raises(TimeoutError):
            await uni.push(timeout=2.5)


async def test_uni_recovery_through_subs(server: ServerHandle) -> None:
    user, ch = uniq("u"), uniq("h")
    async with api_client(server) as api:
        epoch = ""
        for n in range(1, 5):
            epoch = (await api.Publish(pb.PublishRequest(channel=ch, data=b"%d" % n))).result.epoch
        subs = {ch: uni_pb2.SubscribeRequest(recover=True, offset=2, epoch=epoch)}
        req = uni_pb2.ConnectRequest(token=server.token(user, channels=[ch]), subs=subs)
        async with uni_stream(server, req) as uni:
            sub = (await uni.push()).connect.subs[ch]
            assert sub == uni_pb2.SubscribeResult(
                recoverable=True,
                positioned=True,
                was_recovering=True,
                recovered=True,
                epoch=epoch,
                offset=2,
                publications=[
                    uni_pb2.Publication(data=b"3", offset=3),
                    uni_pb2.Publication(data=b"4", offset=4),
                ],
            )


async def test_uni_connect_error_is_disconnect(server: ServerHandle) -> None:
    async with uni_stream(server, uni_pb2.ConnectRequest(token="bad")) as uni:
        assert await uni.push() == uni_pb2.Push(
            disconnect=uni_pb2.Disconnect(code=3500, reason="invalid token")
        )
        assert await uni.ended() == grpc.StatusCode.OK
    # No credentials and anonymous connections not allowed: bad request.
    async with uni_stream(server, uni_pb2.ConnectRequest()) as uni:
        assert (await uni.push()).disconnect.code == 3501
        assert await uni.ended() == grpc.StatusCode.OK


async def test_uni_metadata_as_headers_and_cancel(server_factory: Any) -> None:
    cfg = grpc_config()
    cfg["client"] = {"user_id_http_header": "x-user"}
    cfg["channel"] = {"without_namespace": {"presence": True, "allow_subscribe_for_client": True}}
    server = server_factory(cfg)
    ch = uniq("h")
    async with api_client(server) as api:
        req = uni_pb2.ConnectRequest(subs={ch: uni_pb2.SubscribeRequest()})
        async with uni_stream(server, req, metadata=(("x-user", "carol"),)) as uni:
            client = (await uni.push()).connect.client
            pres = await api.Presence(pb.PresenceRequest(channel=ch))
            # A public channel named in subs, joined by the user from the metadata.
            assert dict(pres.result.presence) == {
                client: pb.ClientInfo(user="carol", client=client)
            }
        # The client cancelled the call: the server drops the connection.
        deadline = time.monotonic() + 5
        while (await api.Presence(pb.PresenceRequest(channel=ch))).result.presence:
            assert time.monotonic() < deadline, "presence of a cancelled stream remains"
            await asyncio.sleep(0.05)


async def test_uni_and_websocket_see_same_publications(server: ServerHandle) -> None:
    # A publication reaches a uni_grpc stream and a JSON WebSocket alike.
    user, ch = uniq("u"), uniq("h")
    async with (
        api_client(server) as api,
        uni_stream(server, uni_pb2.ConnectRequest(token=server.token(user, channels=[ch]))) as uni,
    ):
        assert (await uni.push()).HasField("connect")
        async with RawWS.connect(server.ws_url) as ws:
            await ws.connect_cmd(server.token(uniq("w"), channels=[ch]))
            await api.Publish(pb.PublishRequest(channel=ch, data=b'{"both":true}'))
            assert (await ws.push())["pub"] == {"data": {"both": True}, "offset": 1}
        assert (await uni.push()).pub == uni_pb2.Publication(data=b'{"both":true}', offset=1)


# --------------------------------------------------------------------------------------------
# several workers


async def test_workers_share_grpc_ports(server_factory: Any, engine: str) -> None:
    if engine != "redis":
        pytest.skip("several workers need the redis engine")
    server = server_factory(grpc_config(), workers=2)
    ch = uniq("h")

    async def nodes() -> list[Any]:
        async with api_client(server) as api:
            return list((await api.Info(pb.InfoRequest())).result.nodes)

    # /health answers once one worker is up: wait for the second one.
    deadline = time.monotonic() + 15
    while len(await nodes()) < 2:
        assert time.monotonic() < deadline, "second worker not in info"
        await asyncio.sleep(0.1)
    # Each stream is its own TCP connection: SO_REUSEPORT spreads them over both workers.
    streams: list[tuple[Any, Uni]] = []
    try:
        for _ in range(16):
            token = server.token(uniq("u"), channels=[ch])
            ctx = uni_stream(server, uni_pb2.ConnectRequest(token=token))
            uni = await ctx.__aenter__()
            streams.append((ctx, uni))
            assert (await uni.push()).HasField("connect")
        # Info about the other worker is as fresh as its last heartbeat (a few seconds).
        deadline = time.monotonic() + 10
        while sum(counts := [n.num_clients for n in await nodes()]) != len(streams):
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.2)
        assert min(counts) > 0, f"every stream went to one worker: {counts}"
        # A publication through any worker reaches every stream.
        for i in range(4):
            async with api_client(server) as api:
                await api.Publish(pb.PublishRequest(channel=ch, data=json.dumps(i).encode()))
        for _, uni in streams:
            got = [(await uni.push()).pub.data for _ in range(4)]
            assert got == [b"0", b"1", b"2", b"3"]
    finally:
        for ctx, _ in streams:
            await ctx.__aexit__(None, None, None)


# --------------------------------------------------------------------------------------------
# TLS


async def test_tls(server_factory: Any) -> None:
    cert, key = self_signed_pem()
    tls = {"enabled": True, "cert_pem": cert.decode(), "key_pem": key.decode()}
    cfg = grpc_config()
    cfg["grpc_api"]["tls"] = tls
    cfg["uni_grpc"]["tls"] = tls
    server = server_factory(cfg)
    creds = grpc.ssl_channel_credentials(root_certificates=cert)
    async with grpc.aio.secure_channel(api_target(server), creds) as ch:
        resp = await api_pb2_grpc.CentrifugoApiStub(ch).Info(pb.InfoRequest(), timeout=10)
        assert resp.result.nodes[0].version == VERSION_STRING
    async with grpc.aio.secure_channel(uni_target(server), creds) as ch:
        call = uni_pb2_grpc.CentrifugoUniStreamStub(ch).Consume(
            uni_pb2.ConnectRequest(token=server.token(uniq("u")))
        )
        push = await asyncio.wait_for(call.__aiter__().__anext__(), 10)
        assert push.connect.version == VERSION_STRING
        call.cancel()
    # Plaintext clients cannot talk to a TLS port.
    async with grpc.aio.insecure_channel(api_target(server)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await api_pb2_grpc.CentrifugoApiStub(ch).Info(pb.InfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
