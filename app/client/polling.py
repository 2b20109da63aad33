"""Shared poll subscriptions of a connection (SubscribeRequest.type 4): the subscribe,
`track` / `untrack` (SubRefreshRequest.type 1 / 2, with signed batches of keys), what the
connection holds for each key, and the publications the channel's poller hands it.

After centrifuge's client_shared_poll.go and client_keyed.go; the signatures are
Centrifugo's (app/sharedpoll/signature.py), the polling app/sharedpoll/. A shared poll
subscription is a `Subscription` in `_subs` like any other (channel limit, 105, unsubscribe
and close treat it as one) but it joins no hub channel and no broker: its publications come
from the worker's poller, filtered here by the version the connection already holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from app import metrics
from app.channels import ChannelInfo
from app.client.state import SubRequest, Subscription, ttl_until
from app.client.sub_request import SUB_TYPE_SHARED_POLL
from app.client.subscribing import SubscribeFlow
from app.errors import (
    DISCONNECT_BAD_REQUEST,
    DISCONNECT_INAPPROPRIATE_PROTOCOL,
    ERROR_ALREADY_SUBSCRIBED,
    ERROR_BAD_REQUEST,
    ERROR_LIMIT_EXCEEDED,
    ERROR_NOT_AVAILABLE,
    UNSUBSCRIBE_INSUFFICIENT_STATE,
    ClientError,
    Disconnect,
)
from app.protocol import DecodeError, get_int, get_raw, get_str
from app.sharedpoll.frames import PollPub
from app.sharedpoll.options import PollOptions, poll_options

log = logging.getLogger("centrifugo.client")

__all__ = ["PollFlow", "PollState", "KeyState"]

TRACK = 1  # SubRefreshRequest.type (client_keyed.go typeTrack / typeUntrack)
UNTRACK = 2
SHARED_POLL = "shared_poll"


@dataclass(slots=True)
class KeyState:
    version: int  # what the client holds: from its track, then from each delivery
    expire_at: int  # its batch's signature expiry (unix seconds), 0 for none


@dataclass(slots=True)
class PollState:
    """One shared poll subscription's keys (centrifuge's keyedState for a channel)."""

    opts: PollOptions
    keys: dict[str, KeyState] = field(default_factory=dict)
    expire_handle: asyncio.TimerHandle | None = None  # next expired-signature sweep


def _batches(params: dict[str, Any]) -> list[tuple[str, list[tuple[str, int]]]]:
    """SubRefreshRequest.track: [(signature, [(key, version)])]; wrong types are a bad
    request (DecodeError: 3501), as the protocol decoder refuses them."""
    raw = params.get("track")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DecodeError("track is not a list")
    out = []
    for b in raw:
        if not isinstance(b, dict):
            raise DecodeError("track batch is not an object")
        items = b.get("items") or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise DecodeError("track items is not a list of objects")
        out.append(
            (get_str(b, "signature"), [(get_str(i, "key"), get_int(i, "version")) for i in items])
        )
    return out


def _untrack(params: dict[str, Any]) -> list[str]:
    raw = params.get("untrack")
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise DecodeError("untrack is not a list of strings")
    return raw


class PollFlow(SubscribeFlow):
    """The shared poll part of `Client` (app/client/connection.py), on top of its
    subscriptions; `PollSubscriber` (app/sharedpoll/channel.py) for the poller."""

    __slots__ = ()

    # ------------------------------------------------------------ subscribe

    def _cmd_subscribe(self, cmd_id: int, params: dict[str, Any]) -> Any:
        try:
            shared_poll = (
                len(params) > 1 and get_int(params, "type", signed=True) == SUB_TYPE_SHARED_POLL
            )
        except DecodeError:
            shared_poll = False  # the stream path refuses it
        if not shared_poll:
            return super()._cmd_subscribe(cmd_id, params)
        return self._poll_subscribe(cmd_id, params)

    def _poll_subscribe(self, cmd_id: int, params: dict[str, Any]) -> Any:
        """handleSubscribe's shared poll routing then handleSharedPollSubscribe's checks,
        before the first await (the reservation is taken in command order)."""
        channel = get_str(params, "channel")
        if not channel:
            raise Disconnect(DISCONNECT_BAD_REQUEST)
        try:
            chinfo = self.node.resolve(channel, client_side=True)
        except ClientError:
            chinfo = None
        if chinfo is None or chinfo.options.subscription_type != SHARED_POLL:
            log.info("shared poll subscribe to %r: not a shared poll channel", channel)
            raise ClientError(ERROR_NOT_AVAILABLE)
        if channel in self._subs or self._subscribing_to(channel):
            raise ClientError(ERROR_ALREADY_SUBSCRIBED)
        limit = self.cfg.channel_limit
        if limit > 0 and self._num_channels() >= limit:
            raise ClientError(ERROR_LIMIT_EXCEEDED)
        req = SubRequest(
            token=get_str(params, "token"), client_data=get_raw(params, "data") or None
        )
        subscribing = self._subscribing
        if subscribing is None:
            subscribing = self._subscribing = {}
        subscribing[channel] = None
        return self._poll_subscribe_reserved(cmd_id, chinfo, req)

    async def _poll_subscribe_reserved(
        self, cmd_id: int, chinfo: ChannelInfo, req: SubRequest
    ) -> None:
        channel = chinfo.channel
        try:
            await self._authorize_subscribe(chinfo, req)
            opts = poll_options(chinfo.options)
            result: dict[str, Any] = {"type": SUB_TYPE_SHARED_POLL}
            if req.expire_at:
                result["expires"] = True
                result["ttl"] = ttl_until(req.expire_at)
            epoch = self.node.shared_poll.epoch(channel, opts)
            if epoch:
                result["epoch"] = epoch
            if req.data:
                result["data"] = req.data
            sub = Subscription(
                channel=channel,
                chinfo=chinfo,
                server_side=False,
                chan_info=req.info,
                expire_at=req.expire_at,
                buffer=None,
            )
            self._subs[channel] = sub
            polls = self._polls
            if polls is None:
                polls = self._polls = {}
            polls[channel] = PollState(opts)
            reply = self.codec.encode_reply(cmd_id, "subscribe", result)
            self.send(reply, "subscribe", chinfo.namespace)
            if sub.expire_at:
                self._schedule_sub_expiry(sub)
        finally:
            self._end_subscribing(channel)

    async def _drop_subscription(self, sub: Subscription, announce: bool = True) -> None:
        if self._polls is not None:
            state = self._polls.pop(sub.channel, None)
            if state is not None:
                self._poll_release(sub.channel, state, list(state.keys))
                if not self._polls:
                    self._polls = None
        await super()._drop_subscription(sub, announce)

    # ------------------------------------------------------------ track / untrack

    def _poll_sub_refresh(self, sub: Subscription, cmd_id: int, params: dict[str, Any]) -> bool:
        """sub_refresh on a shared poll subscription: type 1 tracks, 2 untracks (answered
        here, True); any other type is the token refresh of every subscription (False)."""
        state = self._polls.get(sub.channel) if self._polls is not None else None
        if state is None:
            return False
        kind = get_int(params, "type", signed=True)
        if kind == TRACK:
            self._poll_track(sub.channel, state, cmd_id, params)
        elif kind == UNTRACK:
            keys = _untrack(params)
            if not keys:
                raise ClientError(ERROR_BAD_REQUEST)
            self._poll_untrack(sub.channel, state, keys)
            reply = self.codec.encode_reply(cmd_id, "sub_refresh", {})
            self.send(reply, "sub_refresh", sub.chinfo.namespace)
        else:
            return False
        return True

    def _poll_track(
        self, channel: str, state: PollState, cmd_id: int, params: dict[str, Any]
    ) -> None:
        """handleTrack: every batch verified (Centrifugo's OnTrack), keys deduplicated with
        the last batch winning, the per-connection limit, the reply (with the earliest
        signature expiry as ttl), then the subscriber joins and the poller is asked for
        what the client lacks; keys also in `untrack` are dropped at the end (a replay of
        a signature whose keys the client untracked since)."""
        batches = _batches(params)
        untrack = _untrack(params)
        flat: dict[str, tuple[int, int]] = {}  # key -> (version, batch index)
        for i, (_, items) in enumerate(batches):
            for key, version in items:
                flat.pop(key, None)  # re-inserted: last batch wins, order too
                flat[key] = (version, i)
        if not flat:
            raise ClientError(ERROR_BAD_REQUEST)
        inline = set(untrack)
        new = sum(1 for k in flat if k not in state.keys and k not in inline)
        freed = sum(1 for k in inline if k in state.keys)
        if len(state.keys) - freed + new > state.opts.max_keys:
            raise ClientError(ERROR_LIMIT_EXCEEDED)
        expiries = self.node.shared_poll.verifier.check(
            channel, self.user, [(sig, [k for k, _ in items]) for sig, items in batches]
        )
        keys = list(flat)
        versions = [flat[k][0] for k in keys]
        tracked = self.node.shared_poll.track(channel, self._subs[channel].chinfo.options, keys)
        min_expire = 0
        for key, (version, i) in flat.items():
            expire_at = expiries[i]
            state.keys[key] = KeyState(version, expire_at)
            if expire_at > 0 and (min_expire == 0 or expire_at < min_expire):
                min_expire = expire_at
        result: dict[str, Any] = {}
        if min_expire > 0:
            result["expires"] = True
            now = int(time.time())
            if min_expire > now:
                result["ttl"] = min_expire - now
        # The reply goes out before the first broadcast can reach this connection.
        reply = self.codec.encode_reply(cmd_id, "sub_refresh", result)
        self.send(reply, "sub_refresh", metrics.namespace_of(channel))
        self.node.shared_poll.join(channel, self, keys, tracked, versions)
        if min_expire > 0:
            self._poll_schedule_sweep(channel, state)
        if untrack:
            self._poll_untrack(channel, state, untrack)

    def _poll_untrack(self, channel: str, state: PollState, keys: list[str]) -> None:
        """Only keys this connection tracks count; others are ignored."""
        gone = [k for k in keys if state.keys.pop(k, None) is not None]
        self._poll_release(channel, state, gone)

    def _poll_release(self, channel: str, state: PollState, keys: list[str]) -> None:
        if state.expire_handle is not None and not state.keys:
            state.expire_handle.cancel()
            state.expire_handle = None
        if keys:
            self.node.shared_poll.leave(channel, self, keys)

    # ------------------------------------------------------------ signature expiry

    def _poll_schedule_sweep(self, channel: str, state: PollState) -> None:
        """Keys whose signature expired more than `track_expired_extra_delay` ago are
        dropped silently (checkTrackExpiration): the SDK refreshes signatures before."""
        expiries = [ks.expire_at for ks in state.keys.values() if ks.expire_at > 0]
        if state.expire_handle is not None:
            state.expire_handle.cancel()
            state.expire_handle = None
        if not expiries:
            return
        delay = max(min(expiries) + state.opts.track_expired_delay - time.time(), 0) + 1
        state.expire_handle = self.node.loop.call_later(delay, self._poll_sweep, channel, state)

    def _poll_sweep(self, channel: str, state: PollState) -> None:
        state.expire_handle = None
        if self._polls is None or self._polls.get(channel) is not state:
            return
        now = time.time()
        expired = [
            k
            for k, ks in state.keys.items()
            if ks.expire_at > 0 and now > ks.expire_at + state.opts.track_expired_delay
        ]
        if expired:
            log.info(
                "track keys expired: channel %r, client %s, user %r, %d keys",
                channel,
                self.uid,
                self.user,
                len(expired),
            )
            self._poll_untrack(channel, state, expired)
        self._poll_schedule_sweep(channel, state)

    # ------------------------------------------------------------ PollSubscriber

    def poll_publication(self, pub: PollPub) -> None:
        """keyedWritePublication: only a version newer than the client's goes."""
        state = self._polls.get(pub.channel) if self._polls is not None else None
        if state is None:
            return
        ks = state.keys.get(pub.key)
        if ks is None or pub.version <= ks.version:
            return
        if self._poll_write(pub):
            ks.version = pub.version

    def poll_removal(self, pub: PollPub) -> None:
        """keyedWriteRemoval: the key is no longer tracked by this connection."""
        state = self._polls.get(pub.channel) if self._polls is not None else None
        if state is None or state.keys.pop(pub.key, None) is None:
            return
        self._poll_write(pub)

    def poll_state_lost(self, channel: str) -> None:
        sub = self._subs.get(channel)
        if sub is not None:
            self.node.spawn(self._server_unsubscribe(sub, UNSUBSCRIBE_INSUFFICIENT_STATE))

    def _poll_write(self, pub: PollPub) -> bool:
        frame = pub.frame(self.codec)
        if not frame:
            self.disconnect_soon(Disconnect(DISCONNECT_INAPPROPRIATE_PROTOCOL))
            return False
        counter = self._writer.counter("push_publication", metrics.namespace_of(pub.channel))
        self._writer.enqueue(frame, counter)
        return True
