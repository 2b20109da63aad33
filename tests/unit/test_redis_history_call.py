"""A history_add call and a group of SPUBLISH commands built from cached RESP pieces
(app/engines/redis/publish.py) must be byte for byte the commands hiredis packs from the
same keys and args."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest

from app.engines.redis import codec, publish
from app.engines.redis.keys import Keys
from app.engines.redis.pipeline import Script
from app.engines.redis.publish import HistoryCall, PlainGroup
from app.engines.redis.resp import eval_command, evalsha_command
from app.models import ClientInfo, PublishOptions

SCRIPT = Script("history_add", "return 1")


class _Shard:
    """What HistoryCall needs of a shard: its key names, eval and eval_packed (recorded).
    `single_pipeline` False: a call builds the plain keys and args too (a Cluster's)."""

    def __init__(self, cluster: bool, single_pipeline: bool) -> None:
        self.keys = Keys("centrifugo", cluster)
        self.single_pipeline = single_pipeline
        self.calls: list[tuple[str, list[Any], list[Any], bytes | None]] = []
        self.packed_calls: list[tuple[str, int, int, bytes]] = []
        self.groups: list[list[bytes]] = []

    def require_keys(self) -> Keys:
        return self.keys

    def eval(self, name: str, keys: list[Any], args: list[Any], packed: bytes | None = None):
        self.calls.append((name, keys, args, packed))
        return _done()

    def eval_packed(self, name: str, nkeys: int, nargs: int, packed: bytes) -> Any:
        self.packed_calls.append((name, nkeys, nargs, packed))
        return _done()

    def spublish_group(self, parts: list[bytes]) -> Any:
        self.groups.append(parts)
        return _done()


async def _done() -> list[Any]:
    return []


OPTIONS = [
    PublishOptions(history_size=100, history_ttl=300),
    PublishOptions(history_size=10, history_ttl=0.5, history_meta_ttl=3600, delta=True),
    PublishOptions(
        history_size=5,
        history_ttl=60,
        idempotency_key="key-ä",
        idempotent_result_ttl=30,
        tags={"a": "b"},
        client_info=ClientInfo("user", "client", b'{"x":1}', None),
    ),
    PublishOptions(history_size=3, history_ttl=60, version=7, version_epoch="e1"),
]


async def _issued(shard: _Shard) -> None:
    call = HistoryCall(shard)  # type: ignore[arg-type]
    for i in range(12):
        index = call.add(f"ns:chän{i % 5}", b'{"n":%d}' % i, OPTIONS[i % len(OPTIONS)])
        assert index == i
    assert len(call) == 12
    call.issue()
    await call.reply  # type: ignore[misc]


@pytest.mark.parametrize("cluster", [False, True])
async def test_packed_command_equals_hiredis_packing(
    cluster: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain keys and args (built where a Cluster needs them) packed by hiredis are the
    command; a single pipeline's call, which builds only the packed bytes, sends the same."""
    monkeypatch.setattr(publish, "epoch_bytes", lambda: b"epoch1")  # one epoch for both calls
    plain = _Shard(cluster, single_pipeline=False)
    await _issued(plain)
    assert not plain.packed_calls
    ((name, keys, args, packed),) = plain.calls
    assert name == "history_add"
    assert (
        len(keys) == 3 * 12 and len(args) == 9 * 12
    )  # lua/history_add.lua: 3 KEYS, 9 ARGV per item
    assert packed is not None
    expected = hiredis.pack_command(("EVALSHA", SCRIPT.sha, len(keys), *keys, *args))
    assert evalsha_command(SCRIPT.sha, len(keys), len(args), packed) == expected
    if not cluster:
        single = _Shard(cluster, single_pipeline=True)
        await _issued(single)
        assert not single.calls
        ((name, nkeys, nargs, packed),) = single.packed_calls
        assert (name, nkeys, nargs) == ("history_add", len(keys), len(args))
        assert evalsha_command(SCRIPT.sha, nkeys, nargs, packed) == expected


def test_eval_command_is_the_evalsha_with_the_body() -> None:
    """A NOSCRIPT answer re-sends an EVALSHA as EVAL (pipeline): same keys and args."""
    keys, args = ["k1", "kä"], [b"\n{}", 10, "x" * 300]
    evalsha = hiredis.pack_command(("EVALSHA", SCRIPT.sha, len(keys), *keys, *args))
    body = SCRIPT.body
    assert eval_command(evalsha, body) == hiredis.pack_command(
        ("EVAL", body, len(keys), *keys, *args)
    )


async def test_plain_group_commands_equal_hiredis_packing() -> None:
    """Bare and meta-carrying options, alternating and repeated: each item is the SPUBLISH
    hiredis packs for the channel and encode_payload's payload."""
    shard = _Shard(False, single_pipeline=True)
    group = PlainGroup(shard)  # type: ignore[arg-type]
    bare = PublishOptions()
    tagged = PublishOptions(tags={"a": "b"}, client_info=ClientInfo("u", "c", b'{"x":1}', None))
    delta = PublishOptions(delta=True)
    sequence = [bare, bare, tagged, bare, delta, delta, tagged]
    for i, opts in enumerate(sequence):
        assert group.add(f"chän{i}", b'{"n":%d}' % i, opts) == i
    group.issue()
    await group.reply  # type: ignore[misc]
    ((parts,),) = [shard.groups]
    for i, (part, opts) in enumerate(zip(parts, sequence, strict=True)):
        payload = codec.encode_payload(b'{"n":%d}' % i, opts.client_info, opts.tags, 0, opts.delta)
        channel = shard.keys.publish_keys(f"chän{i}")[2]
        assert part == hiredis.pack_command(("SPUBLISH", channel, payload))
