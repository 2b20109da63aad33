"""Shared poll without the network: track signatures as Centrifugo computes them, and a
channel's change detection, removals, epoch flips and publish (app/sharedpoll/)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest

from app.errors import ERROR_INTERNAL, ERROR_PERMISSION_DENIED, ERROR_TOKEN_EXPIRED, ClientError
from app.jsonraw import Raw
from app.protocol.gen import client_pb2 as pb
from app.protocol.json import JsonCodec
from app.protocol.protobuf import ProtobufCodec
from app.proxy import ProxyUnavailable
from app.proxy.models import (
    SharedPollItem,
    SharedPollRefreshResult,
    parse_shared_poll_refresh,
    shared_poll_refresh_request,
)
from app.sharedpoll import fanout
from app.sharedpoll.channel import Entry, PollChannel, new_epoch
from app.sharedpoll.frames import PollPub
from app.sharedpoll.options import PollOptions
from app.sharedpoll.signature import GRACE_PERIOD, TrackVerifier, sign, signature_times, verify

SECRET = "test-poll-secret"
NOW = 1_700_000_000


def test_signature_is_centrifugos_hmac_over_nul_separated_fields() -> None:
    keys_hash = hashlib.sha256(b"k1\x00k2").hexdigest()
    payload = f"{NOW}\x00{NOW + 60}\x00alice\x00poll:a\x00{keys_hash}".encode()
    mac = hmac.new(SECRET.encode(), payload, "sha256").hexdigest()
    expected = f"{NOW}:{NOW + 60}:{mac}"
    assert sign(SECRET, "poll:a", ["k1", "k2"], "alice", NOW, NOW + 60) == expected
    assert verify(SECRET, "poll:a", expected, ["k1", "k2"], "alice")


@pytest.mark.parametrize(
    ("channel", "keys", "user"),
    [("poll:b", ["k1", "k2"], "alice"), ("poll:a", ["k2", "k1"], "alice"), ("poll:a", ["k1"], "")],
)
def test_signature_binds_channel_keys_in_order_and_user(
    channel: str, keys: list[str], user: str
) -> None:
    sig = sign(SECRET, "poll:a", ["k1", "k2"], "alice", NOW, NOW + 60)
    assert not verify(SECRET, channel, sig, keys, user)


def test_colon_in_user_or_channel_cannot_shift_fields() -> None:
    sig = sign(SECRET, "b:c", ["k"], "a", NOW, NOW + 60)
    assert not verify(SECRET, "c", sig, ["k"], "a:b")


@pytest.mark.parametrize("sig", ["", "1:2", "x", "1:2:zz", "invalid-signature"])
def test_malformed_signatures_do_not_verify(sig: str) -> None:
    assert not verify(SECRET, "poll:a", sig, ["k"], "")


def test_signature_times_parse_as_go_does() -> None:
    assert signature_times("10:20:abc") == (10, 20)
    assert signature_times("+10:-20:abc") == (10, -20)
    assert signature_times(" 10:20:abc") == (0, 0)
    assert signature_times("1_0:20:abc") == (0, 0)
    assert signature_times("10:20") == (0, 0)


def test_verifier_returns_each_batch_expiry() -> None:
    v = TrackVerifier(SECRET)
    a = sign(SECRET, "poll:a", ["k1"], "u", NOW, NOW + 60)
    b = sign(SECRET, "poll:a", ["k2", "k3"], "u", NOW, 0)
    assert v.check("poll:a", "u", [(a, ["k1"]), (b, ["k2", "k3"])], now=NOW) == [NOW + 60, 0]


def test_verifier_refuses_a_request_with_one_bad_batch() -> None:
    v = TrackVerifier(SECRET)
    good = sign(SECRET, "poll:a", ["k1"], "u", NOW, NOW + 60)
    with pytest.raises(ClientError) as e:
        v.check("poll:a", "u", [(good, ["k1"]), ("bad", ["k2"])], now=NOW)
    assert e.value.code == ERROR_PERMISSION_DENIED


def test_verifier_expiry_has_a_grace_period() -> None:
    v = TrackVerifier(SECRET)
    sig = sign(SECRET, "poll:a", ["k"], "", NOW - 100, NOW)
    assert v.check("poll:a", "", [(sig, ["k"])], now=NOW + GRACE_PERIOD) == [NOW]
    with pytest.raises(ClientError) as e:
        v.check("poll:a", "", [(sig, ["k"])], now=NOW + GRACE_PERIOD + 1)
    assert e.value.code == ERROR_TOKEN_EXPIRED


def test_previous_key_valid_until_its_deadline() -> None:
    v = TrackVerifier("new", "old", previous_until=NOW)
    before = sign("old", "poll:a", ["k"], "", NOW - 1, NOW + 60)
    after = sign("old", "poll:a", ["k"], "", NOW + 1, NOW + 60)
    assert v.check("poll:a", "", [(before, ["k"])], now=NOW) == [NOW + 60]
    with pytest.raises(ClientError) as e:
        v.check("poll:a", "", [(after, ["k"])], now=NOW)
    assert e.value.code == ERROR_PERMISSION_DENIED


def test_no_secret_is_an_internal_error() -> None:
    with pytest.raises(ClientError) as e:
        TrackVerifier("").check("poll:a", "", [("1:2:3", ["k"])])
    assert e.value.code == ERROR_INTERNAL


def test_epoch_is_eight_letters() -> None:
    e = new_epoch()
    assert len(e) == 8 and e.isalpha() and e.isascii()


# ------------------------------------------------------------------ proxy shapes


def test_refresh_request_leaves_zero_versions_out() -> None:
    assert shared_poll_refresh_request("poll:a", [("k1", 0), ("k2", 3)]) == {
        "channel": "poll:a",
        "items": [{"key": "k1"}, {"key": "k2", "version": 3}],
    }


def test_refresh_reply_keeps_data_raw() -> None:
    reply = {"result": {"items": [{"key": "k", "data": Raw(b'{"a": 1}'), "version": 2}]}}
    res = parse_shared_poll_refresh(reply, from_json=True)
    assert res.items == [SharedPollItem(key="k", data=b'{"a": 1}', version=2)]


def test_refresh_reply_error_fails_the_call() -> None:
    with pytest.raises(ProxyUnavailable, match="boom"):
        parse_shared_poll_refresh({"error": {"code": 1, "message": "boom"}}, from_json=True)


# ------------------------------------------------------------------ frames


def test_publication_frame_json_and_protobuf() -> None:
    pub = PollPub("poll:a", "k", b'{"v":1}', 7)
    assert pub.frame(JsonCodec()) == (
        b'{"push":{"channel":"poll:a","pub":{"data":{"v":1},"key":"k","version":7}}}'
    )
    frame = pub.frame(ProtobufCodec())
    reply = pb.Reply()
    reply.ParseFromString(frame[1:])  # one-byte length prefix
    assert (reply.push.channel, reply.push.pub.key, reply.push.pub.version) == ("poll:a", "k", 7)
    assert reply.push.pub.data == b'{"v":1}'


def test_removal_frame() -> None:
    pub = PollPub("poll:a", "k", b"", 0, removed=True)
    assert (
        pub.frame(JsonCodec()) == b'{"push":{"channel":"poll:a","pub":{"key":"k","removed":true}}}'
    )


# ------------------------------------------------------------------ one channel


class Recorder:
    def __init__(self, uid: str = "c1") -> None:
        self.uid = uid
        self.pubs: list[tuple[str, int, bytes]] = []
        self.removed: list[str] = []
        self.lost: list[str] = []

    def poll_publication(self, pub: PollPub) -> None:
        self.pubs.append((pub.key, pub.version, pub.data))

    def poll_removal(self, pub: PollPub) -> None:
        self.removed.append(pub.key)

    def poll_state_lost(self, channel: str) -> None:
        self.lost.append(channel)


def _opts(versionless: bool, interval: float = 3600) -> PollOptions:
    return PollOptions(
        proxy_name="",
        refresh_interval=interval,
        batch_size=2,
        max_keys=10,
        versionless=versionless,
        shutdown_delay=-1,
        track_expired_delay=25,
        publish_enabled=False,
    )


class Backend:
    """The refresh callable a channel is given, answering from a dict (as the SDK's mock
    backend does); records every call."""

    def __init__(self) -> None:
        self.items: dict[str, SharedPollItem] = {}
        self.calls: list[list[tuple[str, int]]] = []
        self.epoch = ""
        self.called = asyncio.Event()

    async def __call__(self, channel: str, items: list[tuple[str, int]]) -> SharedPollRefreshResult:
        self.calls.append(items)
        self.called.set()
        return SharedPollRefreshResult(
            items=[self.items[k] for k, _ in items if k in self.items], epoch=self.epoch
        )


def _channel(
    backend: Backend, versionless: bool, interval: float = 3600
) -> tuple[PollChannel, list[PollChannel]]:
    forgotten: list[PollChannel] = []
    opts = _opts(versionless, interval)
    ch = PollChannel("poll:a", opts, backend, asyncio.Semaphore(4), forgotten.append)
    return ch, forgotten


async def test_versioned_delivers_only_newer_versions() -> None:
    backend = Backend()
    ch, _ = _channel(backend, versionless=False)
    sub = Recorder()
    ch.track(["k"])
    ch.add_subscriber("k", sub)
    ch.apply("", [SharedPollItem("k", b"1", 1)], "timer")
    ch.apply("", [SharedPollItem("k", b"1", 1)], "timer")
    ch.apply("", [SharedPollItem("k", b"2", 2)], "timer")
    assert sub.pubs == [("k", 1, b"1"), ("k", 2, b"2")]
    ch.close()


async def test_versionless_makes_versions_from_content_changes() -> None:
    ch, _ = _channel(Backend(), versionless=True)
    assert len(ch.epoch) == 8
    sub = Recorder()
    ch.track(["a", "b"])
    ch.add_subscriber("a", sub)
    ch.add_subscriber("b", sub)
    ch.apply("", [SharedPollItem("a", b"x"), SharedPollItem("b", b"y")], "timer")
    ch.apply("", [SharedPollItem("a", b"x"), SharedPollItem("b", b"z")], "timer")
    assert sub.pubs == [("a", 1, b"x"), ("b", 2, b"y"), ("b", 3, b"z")]
    ch.close()


async def test_removal_untracks_the_key_and_empty_channel_closes() -> None:
    ch, forgotten = _channel(Backend(), versionless=False)
    sub = Recorder()
    ch.track(["k"])
    ch.add_subscriber("k", sub)
    ch.apply("", [SharedPollItem("k", removed=True)], "timer")
    assert sub.removed == ["k"]
    assert ch.entries == {} and ch.subs == {}
    assert forgotten == [ch]  # shutdown_delay < 0: at once


async def test_epoch_change_resets_state_and_sends_subscribers_away() -> None:
    ch, _ = _channel(Backend(), versionless=False)
    sub = Recorder()
    ch.track(["k"])
    ch.add_subscriber("k", sub)
    ch.apply("e1", [SharedPollItem("k", b"1", 5)], "timer")
    assert sub.lost == ["poll:a"]  # "" -> e1 is a change too, as in centrifuge
    ch.apply("e1", [SharedPollItem("k", b"2", 6)], "timer")
    assert sub.lost == ["poll:a"]
    assert ch.entries["k"].version == 6
    ch.close()


async def test_publish_applies_newer_versions_and_skips_the_next_timer_poll() -> None:
    backend = Backend()
    ch, _ = _channel(backend, versionless=False)
    sub = Recorder()
    ch.track(["k", "m"])
    ch.add_subscriber("k", sub)
    assert ch.published("k", 3, "", b"p")
    assert not ch.published("k", 3, "", b"p")
    assert sub.pubs == [("k", 3, b"p")]
    await ch._cycle()
    assert backend.calls == [[("m", 0)]]  # k came fresh from the publish
    ch.close()


async def test_timer_cycle_polls_in_sorted_batches() -> None:
    backend = Backend()
    ch, _ = _channel(backend, versionless=False, interval=0.02)
    for key in "cab":  # entries only: track() would start the channel's own loop too
        ch.entries[key] = Entry()
    await ch._cycle()
    assert sorted(backend.calls) == [[("a", 0), ("b", 0)], [("c", 0)]]
    ch.close()


async def test_notify_polls_at_once() -> None:
    backend = Backend()
    backend.items["k"] = SharedPollItem("k", b"1", 1)
    ch, _ = _channel(backend, versionless=False)
    sub = Recorder()
    ch.track(["k"])
    ch.add_subscriber("k", sub)
    ch.notify("k")
    await asyncio.wait_for(backend.called.wait(), 2)
    for _ in range(3):
        await asyncio.sleep(0)
    assert sub.pubs == [("k", 1, b"1")]
    ch.close()


async def test_needs_broadcast_sends_unchanged_data_once() -> None:
    backend = Backend()
    ch, _ = _channel(backend, versionless=False)
    first, second = Recorder("c1"), Recorder("c2")
    ch.track(["k"])
    ch.add_subscriber("k", first)
    ch.apply("", [SharedPollItem("k", b"1", 1)], "timer")
    ch.add_subscriber("k", second)
    ch.mark_needs_broadcast(["k"])
    ch.apply("", [SharedPollItem("k", b"1", 1)], "notification")
    ch.apply("", [SharedPollItem("k", b"1", 1)], "timer")
    assert second.pubs == [("k", 1, b"1")]
    assert first.pubs == [("k", 1, b"1"), ("k", 1, b"1")]  # its connection filters by version
    ch.close()


# --- across workers: the fan-out frames and a follower's side of them ---


def test_fanout_frames_round_trip_binary_data_and_removals() -> None:
    pubs = [PollPub("poll:a", "k", b"\x00\xffraw", 7), PollPub("poll:a", "gone", b"", 0, True)]
    msg = fanout.decode("poll:a", fanout.encode_results("node-1", "ep", pubs))
    assert (msg.kind, msg.node, msg.epoch) == (fanout.RESULTS, "node-1", "ep")
    got = [(p.channel, p.key, p.data, p.version, p.removed) for p in msg.pubs]
    assert got == [("poll:a", "k", b"\x00\xffraw", 7, False), ("poll:a", "gone", b"", 0, True)]
    msg = fanout.decode("poll:a", fanout.encode_notify("node-2", ["x", "y"]))
    assert (msg.kind, msg.node, msg.keys) == (fanout.NOTIFY, "node-2", ["x", "y"])
    msg = fanout.decode("poll:a", fanout.encode_published("n", "", PollPub("poll:a", "p", b"1", 3)))
    assert msg.kind == fanout.PUBLISHED and [(p.key, p.version) for p in msg.pubs] == [("p", 3)]


@pytest.mark.parametrize("frame", [b"", b"{}", b'{"t":"x","n":"a"}', b'{"t":"r","n":"a"}'])
def test_fanout_frames_of_another_shape_raise(frame: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        fanout.decode("poll:a", frame)


def test_fanout_channel_is_out_of_reach_of_client_channels() -> None:
    assert fanout.fanout_channel("poll:a").startswith("\x00")


async def test_a_follower_adopts_the_leaders_versions_and_removals() -> None:
    ch, forgotten = _channel(Backend(), versionless=True)
    sub = Recorder()
    ch.track(["k", "r"])
    ch.add_subscriber("k", sub)
    ch.add_subscriber("r", sub)
    epoch = ch.epoch
    ch.adopt(epoch, [PollPub("poll:a", "k", b"x", 41), PollPub("poll:a", "other", b"y", 42)])
    ch.adopt(epoch, [PollPub("poll:a", "k", b"old", 40)])  # older: not delivered
    ch.adopt(epoch, [PollPub("poll:a", "r", b"", 0, removed=True)])
    assert sub.pubs == [("k", 41, b"x")]
    assert sub.removed == ["r"]
    assert ch.entries["k"].version == 41 and ch.entries["k"].data_hash == hash(b"x")
    ch.adopt("newepoch", [])  # the shared versionless epoch changed: state lost
    assert sub.lost == ["poll:a"]
    ch.close()
