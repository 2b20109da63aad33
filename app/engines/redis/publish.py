"""A publication as the one Redis command that stores and fans it out, and that
command's reply read back as a PublishResult.

With history, lua/history_add.lua appends to the stream, bumps the offset and SPUBLISHes
(one call for a single publish, one per (shard, partition) and up to
HISTORY_ITEMS_PER_CALL publications in a batch: `HistoryCall`); with an idempotency key
only, lua/publish_idempotent.lua; otherwise a plain SPUBLISH (in a batch, the plain
ones bound for a shard go as one group of SPUBLISH commands: `PlainGroup`). The RESP pieces of these
commands are cached per channel (keys.py) and per options, since this runs on every
publish. The epoch candidate and the EXPIRE seconds are history_get's arguments too.
"""

from __future__ import annotations

import asyncio
import os
import string
from collections.abc import Awaitable
from typing import Any, NamedTuple

from redis.exceptions import RedisError, ResponseError

from app.engines.redis import codec
from app.engines.redis.resp import bulk
from app.engines.redis.shard import Shard
from app.models import PublishOptions, PublishResult, StreamPosition

DEFAULT_META_TTL = 720 * 3600


_LETTERS = string.ascii_letters.encode()


_EPOCH_LETTERS = bytes(_LETTERS[i % 52] for i in range(256))


def epoch_bytes() -> bytes:
    """A fresh candidate epoch for every call (8 letters): the scripts adopt it only
    when the stream meta is missing. Cheap, since it runs on every publish."""
    return os.urandom(8).translate(_EPOCH_LETTERS)


_TTLS: dict[float, str] = {}


def expire_seconds(seconds: float) -> str:
    """Whole seconds for EXPIRE, never rounding a positive TTL down to 'forever'."""
    text = _TTLS.get(seconds)
    if text is None:
        text = str(max(int(seconds + 0.999), 1)) if seconds > 0 else "0"
        if len(_TTLS) < 1024:  # a handful of namespace settings in practice
            _TTLS[seconds] = text
    return text


WITH_HISTORY, _IDEMPOTENT, _PLAIN, PLAIN_GROUP = range(4)  # what a publish command answers

# Publications per history_add call in a batch: enough to spread the cost of entering the
# script, few enough that one call holds Redis for about a millisecond at most.
HISTORY_ITEMS_PER_CALL = 50


def keeps_history(opts: PublishOptions) -> bool:
    return opts.history_size > 0 and opts.history_ttl > 0


# history_add's flag of a publication it did not store -> PublishResult.suppress_reason
_SUPPRESS_REASONS = {b"1": "idempotency", b"v": "version"}

# An unversioned publication's ARGV[8], ARGV[9] (version '0', version epoch '').
_NO_VERSION = ("0", "")
_NO_VERSION_RESP = bulk(b"0") + bulk(b"")


def _version_args(opts: PublishOptions) -> tuple[tuple[str, str], bytes]:
    """history_add's version arguments, plain and as RESP."""
    if not opts.version:
        return _NO_VERSION, _NO_VERSION_RESP
    version, epoch = str(opts.version), opts.version_epoch
    return (version, epoch), bulk(version.encode()) + bulk(epoch.encode())


def publish_result(kind: int, reply: Any, item: int = 0) -> PublishResult:
    """`reply` of a publish command; `item` picks one publication of a history_add call."""
    if kind == WITH_HISTORY:
        offset, epoch, flag = reply[3 * item : 3 * item + 3]
        if flag == b"0":
            return PublishResult(StreamPosition(int(offset), epoch.decode()))
        if flag == b"e":  # this item's command failed inside the script
            raise ResponseError(epoch.decode(errors="replace"))
        reason = _SUPPRESS_REASONS[flag]
        return PublishResult(StreamPosition(int(offset), epoch.decode()), True, reason)
    if kind == _IDEMPOTENT:
        if reply:
            return PublishResult(StreamPosition())
        return PublishResult(StreamPosition(), True, "idempotency")  # 0: key seen before
    return PublishResult(StreamPosition())


class _ItemOptions(NamedTuple):
    """A history_add item's option arguments: as RESP (the command) and plain (kept for
    re-encoding), shared by every publication with the same values."""

    after_payload: bytes  # the payload's closing CRLF, then history size and ttl
    meta_ttl_resp: bytes
    result_ttl_resp: bytes
    size: int
    ttl: str
    meta_ttl: str
    result_ttl: str


_ITEM_OPTIONS: dict[tuple[int, float, float, float], _ItemOptions] = {}


def _item_options(opts: PublishOptions) -> _ItemOptions:
    result_ttl = opts.idempotent_result_ttl if opts.idempotency_key else 0.0
    key = (opts.history_size, opts.history_ttl, opts.history_meta_ttl, result_ttl)
    item = _ITEM_OPTIONS.get(key)
    if item is None:
        ttl = expire_seconds(opts.history_ttl)
        meta_ttl = expire_seconds(opts.history_meta_ttl or DEFAULT_META_TTL)
        result = expire_seconds(result_ttl) if opts.idempotency_key else "0"
        item = _ItemOptions(
            b"\r\n" + bulk(str(opts.history_size).encode()) + bulk(ttl.encode()),
            bulk(meta_ttl.encode()),
            bulk(result.encode()),
            opts.history_size,
            ttl,
            meta_ttl,
            result,
        )
        if len(_ITEM_OPTIONS) < 1024:  # a handful of namespace settings in practice
            _ITEM_OPTIONS[key] = item
    return item


class _Pieces(NamedTuple):
    """What a history_add item takes from its options, worked out once per call."""

    item: _ItemOptions
    version: tuple[str, str]  # ARGV[8], ARGV[9] plain
    tail: bytes  # ARGV[5..9] after the PUB/SUB channel, as RESP (the call's epoch in it)
    bare: bool  # no client info, tags or delta: the payload is an empty line, then the data


_NO_PIECES = _Pieces(_ItemOptions(b"", b"", b"", 0, "", "", ""), _NO_VERSION, b"", True)


def bare(opts: PublishOptions) -> bool:
    """Whether `codec.encode_payload` writes no meta for a publication with these options:
    its payload is then an empty line, then the data (the server API's usual publication),
    which the batch paths format in place."""
    return opts.client_info is None and not opts.tags and not opts.delta


def _pieces(opts: PublishOptions, epoch_resp: bytes) -> _Pieces:
    o = _item_options(opts)
    version, version_resp = _version_args(opts)
    tail = o.meta_ttl_resp + epoch_resp + o.result_ttl_resp + version_resp
    return _Pieces(o, version, tail, bare(opts))


# lua/history_add.lua: each item's KEYS (stream, meta, result key) and ARGV (payload, size,
# ttl, PUB/SUB channel, meta ttl, epoch, result ttl, version, version epoch).
KEYS_PER_ITEM = 3
ARGS_PER_ITEM = 9


class HistoryCall:
    """Publications with history bound for one (shard, partition), added by one
    history_add call (one for a single publish, up to HISTORY_ITEMS_PER_CALL for a
    batch); every item's result comes from its one reply.

    The command is built from RESP pieces cached per channel and per options, so only
    the payload is encoded per publication: packing every argument (twelve per item) was
    a fifth of a batch publish's CPU. An item's options pieces are worked out once per
    call (a batch's publications share one options object) and its ARGV formatted as one
    bytes object: 54.1k -> 49.4k instructions per publication with `python -m
    bench.instructions --shape api --history 10` (with one await per call in
    RedisBroker.publish_many). The plain keys and args are built only for a Cluster shard,
    whose commands are handed over to redis-py on a redirection: elsewhere the packed bytes
    are the whole command (a NOSCRIPT answer re-sends them as EVAL, resp.eval_command):
    49.7k -> 45.5k instructions per publication with the same command."""

    __slots__ = (
        "shard",
        "epoch",
        "_epoch_resp",
        "keys",
        "args",
        "_rkeys",
        "_rargs",
        "reply",
        "answers",
        "_opts",
        "_pieces",
        "_plain",
    )

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self._plain = not shard.single_pipeline  # `keys` and `args` wanted (see above)
        # One candidate epoch serves the call: channels are told apart by their keys, and
        # a channel's meta cannot vanish between two of its items in one script.
        self.epoch = epoch_bytes()
        self._epoch_resp = bulk(self.epoch)
        self.keys: list[Any] = []
        self.args: list[Any] = []
        self._rkeys: list[bytes] = []
        self._rargs: list[bytes] = []
        self.reply: asyncio.Future[Any] | None = None
        self.answers: list[Any] | None = None  # the reply, once awaited
        self._opts: PublishOptions | None = None  # the options `_pieces` were worked out for
        self._pieces = _NO_PIECES

    def __len__(self) -> int:
        return len(self._rkeys)  # one entry per publication

    def add(self, channel: str, data: bytes, opts: PublishOptions) -> int:
        """Appends one publication (KEYS and ARGV as lua/history_add.lua documents them);
        returns its index in the call's reply."""
        if opts is not self._opts:
            # A batch's publications share one options object (Node._plain_publish_options):
            # their pieces are worked out once per call, not per publication.
            self._opts = opts
            self._pieces = _pieces(opts, self._epoch_resp)
        o, version, tail, no_meta = self._pieces
        keys = self.shard.require_keys()
        keys_resp, channel_resp = keys.history_resp(channel)
        if no_meta:
            payload = b"\n" + data
        else:
            payload = codec.encode_payload(data, opts.client_info, opts.tags, 0, opts.delta)
        index = len(self._rkeys)
        if opts.idempotency_key:
            result_key = keys.publish_keys(channel)[3] + opts.idempotency_key
            self._rkeys.append(keys_resp[0] + bulk(result_key.encode()))
        else:
            self._rkeys.append(keys_resp[1])
        # The item's ARGV in one piece: the payload's bulk string, then the cached rest
        # (joined once per call with the other items).
        self._rargs.append(
            b"$%d\r\n%b%b%b%b" % (len(payload), payload, o.after_payload, channel_resp, tail)
        )
        if self._plain:
            stream, meta, pubsub_channel, result_prefix = keys.publish_keys(channel)
            if not opts.idempotency_key:
                result_key = result_prefix
            self.keys += (stream, meta, result_key)
            args = (payload, o.size, o.ttl, pubsub_channel, o.meta_ttl, self.epoch, o.result_ttl)
            self.args += args
            self.args += version
        return index

    def issue(self) -> None:
        try:
            packed = b"".join(self._rkeys) + b"".join(self._rargs)
            if self._plain:
                reply = self.shard.eval("history_add", self.keys, self.args, packed)
            else:
                n = len(self)
                reply = self.shard.eval_packed(
                    "history_add", KEYS_PER_ITEM * n, ARGS_PER_ITEM * n, packed
                )
            self.reply = asyncio.ensure_future(reply)
        except (RedisError, OSError) as e:  # every item of the call fails alike
            self.reply = asyncio.get_running_loop().create_future()
            self.reply.set_exception(e)


class PlainGroup:
    """Publications without history or idempotency key bound for one shard's pipeline,
    sent as one group of SPUBLISH commands (`AutoPipeline.execute_many`): one future for
    all of them, each command built from the channel's cached head and its payload.

    Measured with `python -m bench.instructions --shape api` (batches of 500 plain
    publishes decoded, published and answered): 59.8k -> 37.2k instructions per
    publication with app/api/batch.py's PlainPublish lane (45.9k with the groups and the
    lane alone, then the payload formatted in place here and one await per group in
    RedisBroker.publish_many) against a future, a _Cmd, hiredis packing and a coroutine
    per SPUBLISH."""

    __slots__ = ("shard", "_keys", "_parts", "reply", "answers", "_opts", "_bare")

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self._keys = shard.require_keys()
        self._parts: list[bytes] = []
        self.reply: asyncio.Future[list[Any]] | None = None
        self.answers: list[Any] | None = None  # the reply, once awaited
        self._opts: PublishOptions | None = None  # what `_bare` was worked out for
        self._bare = True

    def add(self, channel: str, data: bytes, opts: PublishOptions) -> int:
        """Appends one publication; returns its index in the group's reply."""
        head = self._keys.spublish_head(channel)
        if opts is not self._opts:  # once per options object, as HistoryCall.add
            self._opts = opts
            self._bare = bare(opts)
        if self._bare:
            # encode_payload's output without meta, formatted in place.
            self._parts.append(b"%b$%d\r\n\n%b\r\n" % (head, len(data) + 1, data))
        else:
            payload = codec.encode_payload(data, opts.client_info, opts.tags, 0, opts.delta)
            self._parts.append(b"%b$%d\r\n%b\r\n" % (head, len(payload), payload))
        return len(self._parts) - 1

    def issue(self) -> None:
        try:
            self.reply = self.shard.spublish_group(self._parts)
        except (RedisError, OSError) as e:  # every item of the group fails alike
            self.reply = asyncio.get_running_loop().create_future()
            self.reply.set_exception(e)


# What every published PlainGroup item answers. One object for all of them: results are
# only read on their way to the caller (Node.publish_many, the API's batch runner), and
# building two dataclasses per publication was ~2 % of a worker's CPU at saturation
# (py-spy, `python -m bench --scenarios personal --paths app/api --profile`).
_PUBLISHED = PublishResult(StreamPosition())


def group_result(answer: Any) -> PublishResult:
    """A PlainGroup item's result from its place in the group's reply; raises its error (an
    error reply, or the connection's failure)."""
    if isinstance(answer, BaseException):
        raise answer
    return _PUBLISHED


def issue_publish(
    shard: Shard, channel: str, data: bytes, opts: PublishOptions
) -> tuple[int, Awaitable[Any]]:
    """Queues the publication's one command on `channel`'s shard; returns (kind, its
    reply), the reply read by `publish_result`."""
    if keeps_history(opts):
        call = HistoryCall(shard)
        call.add(channel, data, opts)
        call.issue()
        assert call.reply is not None
        return WITH_HISTORY, call.reply
    keys = shard.require_keys()
    payload = codec.encode_payload(data, opts.client_info, opts.tags, 0, opts.delta)
    _, _, pubsub_channel, result_prefix = keys.publish_keys(channel)
    if opts.idempotency_key:
        reply = shard.eval(
            "publish_idempotent",
            [result_prefix + opts.idempotency_key],
            [pubsub_channel, payload, expire_seconds(opts.idempotent_result_ttl)],
        )
        return _IDEMPOTENT, reply
    return _PLAIN, shard.spublish(pubsub_channel, payload)
