"""A node's periodic work: presence refresh, stream position checks, metrics snapshots.

Each runs in its own task from `start` until `stop` (Node.start / Node.shutdown):
- presence: every `client.presence_update_interval` each local client's presence entries
  are added again, so they outlive the TTL only while their connection lives;
- positions: every `client.channel_position_check_delay` positioned subscriptions that
  received nothing are compared with their stream's top, catching publications lost on an
  idle channel (e.g. during a PUB/SUB reconnect);
- metrics: as centrifuge's initMetrics, a snapshot of this node's metrics from the start,
  then one per `node.info_metrics_aggregate_interval`, carried by membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

from app.info_metrics import InfoMetrics
from app.metrics_buffer import flush_buffered
from app.models import HistoryFilter, StreamPosition

if TYPE_CHECKING:
    from app.client import Client
    from app.node import Node

log = logging.getLogger("centrifugo.node")


class Upkeep:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._info_metrics = InfoMetrics(node.config.node.info_metrics_aggregate_interval)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        cfg = self._node.config.client
        if cfg.presence_update_interval > 0:
            self._spawn(self._refresh_presence(cfg.presence_update_interval))
        if cfg.channel_position_check_delay > 0:
            self._spawn(self._check_positions(cfg.channel_position_check_delay))
        self._snapshot_metrics()
        self._spawn(self._aggregate_metrics())
        self._spawn(self._flush_metrics())

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        flush_buffered()  # the last second's counts, before the worker exits

    def _clients(self) -> list[Client]:
        # The hub's connections are the node's connected Clients.
        return cast("list[Client]", self._node.hub.connections())

    async def _stream_top(self, channel: str) -> StreamPosition:
        """The top of the stream a positioned subscription follows: the map broker's for a
        map channel (centrifuge's checkPosition with isMap), else the broker's history."""
        node = self._node
        chopts = node.maps.options(channel)
        if chopts is not None and node.map_broker is not None:
            return (await node.map_broker.read_stream(channel, chopts, limit=0)).position
        ns = node.resolve(channel).options
        flt = HistoryFilter(meta_ttl=ns.history_meta_ttl)
        return (await node.broker.history(channel, flt)).position

    async def _flush_metrics(self) -> None:
        """Buffered histogram observations reach the scrape within about a second
        (app/metrics_buffer.py)."""
        while True:
            await asyncio.sleep(1.0)
            flush_buffered()

    def _snapshot_metrics(self) -> None:
        node = self._node
        node.update_gauges()  # the node gauges otherwise follow the heartbeat
        node.membership.set_metrics(self._info_metrics.snapshot())

    async def _aggregate_metrics(self) -> None:
        node = self._node
        while True:
            await asyncio.sleep(self._info_metrics.interval)
            node.update_gauges()
            try:
                # Off the loop: tens of ms per thousand series (app/info_metrics.py).
                snapshot = await asyncio.to_thread(self._info_metrics.snapshot)
            except Exception:  # a collector failing must not end the snapshots
                log.exception("metrics snapshot failed")
                continue
            node.membership.set_metrics(snapshot)

    async def _refresh_presence(self, interval: float) -> None:
        presence = self._node.presence_manager
        while True:
            await asyncio.sleep(interval)
            for client in self._clients():
                for channel, info in client.presence_entries():
                    try:
                        await presence.add_presence(channel, client.uid, info)
                    except Exception:
                        log.exception("presence refresh failed")
                if self._node.map_broker is not None:
                    await client.refresh_map_presence()

    async def _check_positions(self, delay: float) -> None:
        """Catch publications lost on an idle channel (e.g. during a PUB/SUB
        reconnect): compare each positioned subscription with the stream top."""
        while True:
            await asyncio.sleep(delay)
            due: dict[str, list[tuple[Client, Any]]] = {}
            for client in self._clients():
                for sub in client.positions_to_check():
                    due.setdefault(sub.channel, []).append((client, sub))
            for channel, subs in due.items():
                try:
                    top = await self._stream_top(channel)
                except Exception as e:
                    log.info("position check of %r failed: %s", channel, e)
                    continue
                for client, sub in subs:
                    client.check_position(sub, top)
