"""JSON codec of client protocol v2: framing, type checks and omission rules."""

import os

import orjson
import pytest

from app import protocol as proto
from app.models import ClientInfo, Publication
from app.protocol.json import JSON


def test_several_commands_per_frame_and_trailing_newline():
    frame = b'{"id":1,"connect":{"token":"t"}}\n{"id":2,"subscribe":{"channel":"a"}}\n'
    cmds = JSON.decode_commands(frame)
    assert [(c.id, c.method) for c in cmds] == [(1, "connect"), (2, "subscribe")]
    assert cmds[1].params == {"channel": "a"}


def test_empty_command_is_a_pong():
    (cmd,) = JSON.decode_commands(b"{}")
    assert (cmd.id, cmd.method) == (0, "")


def test_first_non_null_request_field_wins():
    (cmd,) = JSON.decode_commands(b'{"id":3,"connect":null,"publish":{"channel":"x","data":1}}')
    assert cmd.method == "publish"


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[1,2]",
        b'{"id":-1}',
        b'{"id":"x","connect":{}}',
        b'{"id":1,"subscribe":[]}',
        b"",
        b"\n\n",
    ],
)
def test_malformed_frames_raise(frame):
    with pytest.raises(proto.DecodeError):
        JSON.decode_commands(frame)


def test_typed_getters_reject_wrong_types():
    with pytest.raises(proto.DecodeError):
        proto.get_str({"channel": 1}, "channel")
    with pytest.raises(proto.DecodeError):
        proto.get_bool({"recover": "yes"}, "recover")
    with pytest.raises(proto.DecodeError):
        proto.get_int({"offset": -1}, "offset")
    assert proto.get_int({"offset": "42"}, "offset") == 42  # 64-bit ints may be strings
    assert proto.get_int({"limit": -1}, "limit", signed=True) == -1
    assert proto.get_str({}, "channel") == ""


def test_raw_data_is_spliced_not_reencoded():
    pub = Publication(data=b'{"b": 2, "a": 1}', offset=7)
    frame = JSON.encode_pub_push("news", pub)
    assert frame == b'{"push":{"channel":"news","pub":{"data":{"b": 2, "a": 1},"offset":7}}}'


def test_zero_values_omitted_but_client_info_keeps_user_and_client():
    pub = Publication(data=b"1", info=ClientInfo(user="", client="c1"))
    obj = orjson.loads(JSON.encode_pub_push("ch", pub))
    assert obj == {
        "push": {"channel": "ch", "pub": {"data": 1, "info": {"user": "", "client": "c1"}}}
    }


def test_empty_result_is_written_as_object():
    assert JSON.encode_reply(3, "publish", {}) == b'{"id":3,"publish":{}}'


def test_join_push_shape():
    info = ClientInfo(user="u", client="c", conn_info=b'{"n":1}', chan_info=b'"x"')
    obj = orjson.loads(JSON.encode_join_push("room", info))
    assert obj == {
        "push": {
            "channel": "room",
            "join": {"info": {"user": "u", "client": "c", "conn_info": {"n": 1}, "chan_info": "x"}},
        }
    }


def test_protocol_neutral_results_render_as_json():
    pub = Publication(data=b'{"k":1}', offset=3, info=ClientInfo("u", "c"))
    frame = JSON.encode_reply(
        5, "history", {"publications": [pub], "epoch": "e", "offset": 3, "data": b"[1]"}
    )
    assert orjson.loads(frame) == {
        "id": 5,
        "history": {
            "publications": [{"data": {"k": 1}, "offset": 3, "info": {"user": "u", "client": "c"}}],
            "epoch": "e",
            "offset": 3,
            "data": [1],
        },
    }


def test_binary_payload_has_no_json_frame():
    assert JSON.encode_pub_push("ch", Publication(data=b"\x00\x01")) == b""


@pytest.mark.parametrize("channel", ["news", 'we"ird\\ch', "ünï:ch", "$private"])
@pytest.mark.parametrize("data", [b'{"a":1}', b'"text"', b"[1, 2]", b"null"])
@pytest.mark.parametrize("offset", [0, 1, 2**40])
def test_pub_push_fast_path_matches_the_general_encoding(
    channel: str, data: bytes, offset: int
) -> None:
    # Publications without info/tags/time are spliced by hand; with them, built by orjson.
    # Both must produce one wire shape: compare against the general path's output.
    from app.protocol.json import JSON_UNI, publication_obj

    pub = Publication(data=data, offset=offset)
    for codec in (JSON, JSON_UNI):
        push = {"channel": channel, "pub": publication_obj(pub)}
        expected = orjson.dumps(push if codec.bare else {"push": push})
        assert codec.encode_pub_push(channel, pub) == expected
    frame = JSON.encode_pub_push(channel, pub)
    assert orjson.loads(frame)["push"]["pub"]["data"] == orjson.loads(data)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_encoded_frames_hold_only_their_own_size() -> None:
    """Frames wait in per-connection queues bounded in bytes (client.queue_max_size): a short
    frame must not keep orjson's 4 KB working buffer (20,000 replies held 82 MB before)."""
    pub = Publication(data=b'{"n":1}', offset=1, info=ClientInfo("u", "c"))
    before = _rss()
    frames = [
        *(JSON.encode_reply(i, "publish", {}) for i in range(10_000)),
        *(
            JSON.encode_error(i, {"code": 103, "message": "permission denied"})
            for i in range(5_000)
        ),
        *(JSON.encode_pub_push("ch", pub) for _ in range(5_000)),
    ]
    per_frame = (_rss() - before) / len(frames)
    assert per_frame < 1024, f"{per_frame:.0f} bytes held per frame"
