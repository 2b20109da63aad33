"""Where a subscription starts in its stream: the stream top (positioning), or recovery
from the client's position, stream or cache (research §5), with the recovered
publications as fossil patches for a delta subscription."""

from __future__ import annotations

from typing import Any

from app import fossil, metrics
from app.client.state import ClientState, SubRequest, Subscription
from app.config import ChannelOptions
from app.errors import ERROR_UNRECOVERABLE_POSITION, ClientError
from app.filter import Matcher
from app.hub import json_string
from app.models import HistoryFilter, HistoryResult, Publication, StreamPosition
from app.recovery import cache_recovered, stream_recovered

# SubscribeRequest.flag bits (centrifuge client.go subscriptionFlag*). 1 (channel compaction)
# changes nothing here; 2 asks for error 112 instead of `recovered: false` when stream
# recovery fails, so that an SDK with getState reloads its state instead.
SUB_FLAG_REJECT_UNRECOVERED = 2

_NO_TAGS: dict[str, str] = {}


def matching(tags_filter: Matcher | None, pubs: list[Publication]) -> list[Publication]:
    """The publications a subscription's tags filter lets through (all without one)."""
    if tags_filter is None:
        return pubs
    return [p for p in pubs if tags_filter(p.tags or _NO_TAGS)]


class Positioning(ClientState):
    """Positioning and recovery at subscribe: a part of `Client`
    (app/client/connection.py)."""

    __slots__ = ()

    async def _position(
        self, sub: Subscription, req: SubRequest, ns: ChannelOptions
    ) -> dict[str, Any]:
        """Stream position, and recovery when asked (research §5)."""
        result: dict[str, Any] = {}
        if sub.recoverable:
            result["recoverable"] = True
        result["positioned"] = True
        meta_ttl = ns.history_meta_ttl
        if not (req.recover and sub.recoverable):
            hist = await self.node.stream_history(sub.channel, HistoryFilter(meta_ttl=meta_ttl))
            top = hist.position
            sub.offset, sub.epoch = top.offset, top.epoch
            result["epoch"] = top.epoch
            if top.offset:
                result["offset"] = top.offset
            return result

        result["was_recovering"] = True
        pubs: list[Publication]
        cache = ns.force_recovery_mode == "cache"
        if cache:
            # With a tags filter, the latest publication it lets through, among as many
            # as stream recovery would read (centrifuge's recoverCache).
            limit = 1 if sub.tags_filter is None else self._recovery_limit()
            hist = await self.node.stream_history(
                sub.channel, HistoryFilter(limit=limit, reverse=True, meta_ttl=meta_ttl)
            )
            top = hist.position
            latest = matching(sub.tags_filter, hist.publications)[:1]
            recovered, pubs = cache_recovered(latest, top, req.offset, req.epoch)
        else:
            hist = await self._recover_stream(sub.channel, req, meta_ttl)
            top = hist.position
            pubs = hist.publications
            recovered = stream_recovered(pubs, top, req.offset, req.epoch)
            if not recovered and req.flag & SUB_FLAG_REJECT_UNRECOVERED:
                raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        last = pubs[-1].offset if pubs else req.offset
        pubs = matching(sub.tags_filter, pubs)
        sub.epoch = top.epoch
        result["epoch"] = top.epoch
        metrics.child(
            metrics.RECOVER,
            "yes" if recovered else "no",
            sub.chinfo.namespace,
            "yes" if recovered and pubs else "no",
        ).inc()
        if recovered:
            metrics.observe_recovered(len(pubs), sub.chinfo.namespace)
            result["recovered"] = True
            sub.offset = top.offset if cache else max(last, req.offset)
            if req.offset:
                result["offset"] = req.offset
            if pubs:
                result["publications"] = self._delta_recovered(pubs) if sub.delta else pubs
                if sub.delta:
                    self.node.hub.offer_delta_base(sub.channel, top.epoch, pubs[-1])
            # The client holds the base of the next patch: the last recovered publication
            # or, with none, the one it had (centrifuge sets flagDeltaAllowed here).
            sub.delta_ready = sub.delta
        else:
            sub.offset = top.offset
            if top.offset:
                result["offset"] = top.offset
        return result

    def _delta_recovered(self, pubs: list[Publication]) -> list[Publication]:
        """Recovered publications for a delta subscription (centrifuge's
        makeRecoveredPubsDeltaFossil): the first in full, each next one a patch against
        the one before when that is smaller; in JSON every data is a JSON string."""
        as_json = self.codec.name.startswith("json")
        out: list[Publication] = []
        prev: Publication | None = None
        for pub in pubs:
            patch = None if prev is None else fossil.worth_sending(prev.data, pub.data)
            data = pub.data if patch is None else patch
            if as_json:
                data = json_string(data) or data  # binary data never reaches JSON clients
            out.append(
                Publication(data, pub.info, pub.offset, pub.tags, pub.time, patch is not None)
            )
            prev = pub
        return out

    async def _recover_stream(
        self, channel: str, req: SubRequest, meta_ttl: float
    ) -> HistoryResult:
        return await self.node.stream_history(
            channel,
            HistoryFilter(
                since=StreamPosition(req.offset, req.epoch),
                limit=self.cfg.recovery_max_publication_limit,
                meta_ttl=meta_ttl,
            ),
        )

    def _recovery_limit(self) -> int:
        n: int = self.cfg.recovery_max_publication_limit
        return n if n > 0 else -1
