"""The messages shared poll workers exchange over the broker (Redis engine only): one
internal broker channel per shared poll channel, `fanout_channel(channel)`, to which every
worker tracking the channel subscribes its node (app/sharedpoll/redis_link.py).

Three kinds, each one broker publication without history:

- RESULTS: the polling worker (the lease holder) after a backend reply: every changed,
  re-sent or removed item with the version it carries (versionless: made by the leader,
  from the channel's counter in Redis) and the channel epoch. Followers adopt them.
- NOTIFY: a follower asks the leader to poll keys at once (a subscriber joined that lacks
  their data), as a local join does with `PollChannel.notify`.
- PUBLISHED: `shared_poll_publish` from the server API on any worker (centrifuge publishes
  it through the broker too, on per-key channels `<len>:<channel><key>`; here the channel's
  one fan-out channel carries it, so a worker subscribes once per channel, not per key).

One frame per backend reply rather than one per item: a timer cycle of 1000 changed keys
is one SPUBLISH. The payload is JSON with item data as base64 (data may be binary; the
frame is decoded once per worker, not per connection). A worker skips RESULTS it sent
itself (it delivered them locally already); PUBLISHED is applied by every worker, the
sender included, because the API node never applies it directly (as centrifuge's broker
route).

The fan-out channel name starts with a NUL byte: no configured namespace can produce it
and no SDK user sends one, so it never meets a client channel in the node's broker
subscriptions.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.sharedpoll.frames import PollPub

__all__ = [
    "FANOUT_PREFIX",
    "NOTIFY",
    "PUBLISHED",
    "RESULTS",
    "FanoutMessage",
    "decode",
    "encode_notify",
    "encode_published",
    "encode_results",
    "fanout_channel",
]

FANOUT_PREFIX = "\x00shared_poll:"
RESULTS, NOTIFY, PUBLISHED = "r", "n", "p"


def fanout_channel(channel: str) -> str:
    """The internal broker channel of shared poll channel `channel`."""
    return FANOUT_PREFIX + channel


@dataclass(slots=True)
class FanoutMessage:
    kind: str  # RESULTS | NOTIFY | PUBLISHED
    node: str  # the sender's node id
    epoch: str = ""
    pubs: list[PollPub] = field(default_factory=list)  # RESULTS, PUBLISHED (one)
    keys: list[str] = field(default_factory=list)  # NOTIFY


def _item(pub: PollPub) -> list[Any]:
    return [pub.key, pub.version, 1 if pub.removed else 0, base64.b64encode(pub.data).decode()]


def encode_results(node: str, epoch: str, pubs: list[PollPub]) -> bytes:
    return orjson.dumps({"t": RESULTS, "n": node, "e": epoch, "i": [_item(p) for p in pubs]})


def encode_notify(node: str, keys: list[str]) -> bytes:
    return orjson.dumps({"t": NOTIFY, "n": node, "k": keys})


def encode_published(node: str, epoch: str, pub: PollPub) -> bytes:
    return orjson.dumps({"t": PUBLISHED, "n": node, "e": epoch, "i": [_item(pub)]})


def decode(channel: str, data: bytes) -> FanoutMessage:
    """Raises ValueError (or TypeError, KeyError, IndexError) for a frame of another shape."""
    obj = orjson.loads(data)
    kind = obj["t"]
    msg = FanoutMessage(kind, str(obj["n"]), str(obj.get("e", "")))
    if kind == NOTIFY:
        msg.keys = [str(k) for k in obj["k"]]
    elif kind in (RESULTS, PUBLISHED):
        msg.pubs = [
            PollPub(channel, str(key), base64.b64decode(data), int(version), bool(removed))
            for key, version, removed, data in obj["i"]
        ]
    else:
        raise ValueError(f"unknown shared poll fan-out message {kind!r}")
    return msg
