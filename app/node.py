"""Composition root of one worker: owns hub, broker, controller, presence, resolver and
verifier.

Its broker subscription of each channel its connections listen to is
app/node_subscriptions.py's. Everything the server API does goes
through the facade methods here, never to an engine directly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from app import VERSION_STRING, broadcast_metrics, control, jsonraw, metrics
from app.auth import SubscribeOverride, TokenVerifier, admin_tail
from app.broker import BatchPublisher, Broker, Controller, HealthReporter
from app.channels import ChannelInfo, ChannelResolver
from app.config import Config
from app.errors import (
    ERROR_BAD_REQUEST,
    ERROR_INTERNAL,
    ERROR_NOT_AVAILABLE,
    ERROR_UNRECOVERABLE_POSITION,
    ClientError,
    Disconnect,
)
from app.hub import Hub
from app.maps.broker import MapBroker, MapChannelOptions
from app.membership import Membership
from app.models import (
    ClientInfo,
    HistoryFilter,
    HistoryResult,
    PresenceStats,
    Publication,
    PublishOptions,
    PublishResult,
    StreamPosition,
)
from app.node_control import NodeControl
from app.node_maps import NodeMaps
from app.node_subscriptions import BrokerSubscriptions
from app.presence import PresenceManager
from app.proxy import ProxyManager
from app.publishing import count_suppressed, publish_options
from app.sharedpoll.coordination import coordinator_for
from app.sharedpoll.fanout import FANOUT_PREFIX
from app.sharedpoll.manager import SharedPollManager
from app.timers import CoarseTimers
from app.upkeep import Upkeep

if TYPE_CHECKING:
    from app.client import Client

log = logging.getLogger("centrifugo.node")


class Node:
    def __init__(
        self,
        cfg: Config,
        broker: Broker,
        presence: PresenceManager,
        controller: Controller | None = None,
        map_broker: MapBroker | None = None,
    ) -> None:
        """`controller` None: the broker is the Controller too (both engines are), as
        centrifuge's SetBroker takes a broker that implements Controller. `map_broker`
        None: map subscriptions answer 108 (not available)."""
        self.config = cfg
        self.id = str(uuid.uuid4())
        self.name = cfg.node.name or f"{socket.gethostname()}_{cfg.http_server.port}"
        self.started_at = time.time()
        self.hub = Hub()
        self.broker = broker
        if controller is None:
            if not isinstance(broker, Controller):
                raise TypeError(f"{type(broker).__name__} is no Controller: pass one")
            controller = broker
        self.controller = controller
        # The broker's optional capabilities, checked once (app/broker.py).
        self._batch = broker if isinstance(broker, BatchPublisher) else None
        self._health: list[HealthReporter] = []
        for part in (broker, map_broker):
            if isinstance(part, HealthReporter):
                self._health.append(part)
        self.presence_manager = presence
        self.map_broker = map_broker
        self.resolver = ChannelResolver(cfg)
        self.maps = NodeMaps(cfg, map_broker)
        self.verifier = TokenVerifier(
            cfg.client, admin_tail.tail_key(cfg.admin.secret) if cfg.admin.enabled else None
        )
        self.proxies = ProxyManager(cfg)
        # What a connection keeps of its request's headers (app/client/connection.py).
        user_header = cfg.client.user_id_http_header.lower()
        self.kept_headers = self.proxies.forwarded_headers() | ({user_header} - {""})
        # With the Redis engine one worker polls each shared poll channel for all of them.
        self.shared_poll = SharedPollManager(
            cfg, self.proxies.shared_poll_proxy, coordinator_for(broker, self.id)
        )
        # The node's own broker subscription of each channel its connections listen to.
        self.subscriptions = BrokerSubscriptions(
            self.hub, self._pubsub, lambda: self.loop, self.spawn
        )
        self._plain_options: dict[int, tuple[Any, PublishOptions]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: CoarseTimers | None = None
        self._upkeep = Upkeep(self)
        self.control = NodeControl(self, controller)
        self.membership: Membership = Membership(
            self.id, self.local_info, controller.publish_control, self.control.answer_survey
        )
        # Every live connection, connected or still connecting (shutdown closes them all).
        self.clients: set[Client] = set()
        # Emulated bidirectional sessions (SSE, HTTP-stream) whose stream this node holds.
        self.sessions: dict[str, Client] = {}
        self.closing = False
        self._stopped = False

    # --- lifecycle ---

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop. Per-connection code asks here rather than calling
        asyncio.get_running_loop(), which costs a getpid() syscall on CPython 3.11 (the
        connect path called it eight times)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def timers(self) -> CoarseTimers:
        """Per-connection deadlines (stale, keepalive, ping): see app/timers.py."""
        timers = self._timers
        if timers is None:
            timers = self._timers = CoarseTimers(self.loop)
        return timers

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # As centrifuge's Node.Run: the controller's handler first, then the broker's.
        await self.controller.run_control(self.control)
        await self.broker.run(self)
        if self.map_broker is not None:
            await self.map_broker.run(self)
        self._upkeep.start()
        self.membership.start()

    @property
    def healthy(self) -> bool:
        """False while the engine or the map broker cannot serve (Redis unreachable or
        not answering)."""
        return all(part.healthy for part in self._health)

    async def drain(self, timeout: float = 5.0) -> None:
        """First step of a graceful stop: refuse new connections and disconnect every
        local client with 3001 so SDKs reconnect elsewhere and recover. The engine stays
        up, so API calls still in flight finish normally."""
        if self.closing:
            return
        self.closing = True
        clients = list(self.clients)
        if clients:
            await asyncio.wait(
                [asyncio.create_task(c.close(Disconnect(3001))) for c in clients], timeout=timeout
            )

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Drain, then stop background work and close the engine (after the HTTP server
        has finished its in-flight requests)."""
        await self.drain(timeout)
        if self._stopped:
            return
        self._stopped = True
        await self._upkeep.stop()
        await self.membership.stop()
        # Background work (control replies, leave messages...) must not outlive the broker.
        pending = [t for t in self._tasks if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.subscriptions.close()
        await self.verifier.close()
        await self.shared_poll.close()
        await self.proxies.close()
        await self.broker.close()
        if self.controller is not self.broker:  # its own connections (controller section)
            await self.controller.close()
        if self.map_broker is not None:
            await self.map_broker.close()
        await self.presence_manager.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background coroutine, keeping a reference so it is not collected."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # --- broker events (BrokerEventHandler) ---

    def handle_publication(self, channel: str, pub: Publication, epoch: str) -> None:
        if channel.startswith(FANOUT_PREFIX):  # shared poll workers' own channel
            self.shared_poll.handle_fanout(channel, pub.data)
            return
        if not metrics.enabled():
            self.hub.broadcast_publication(channel, pub, epoch)
            return
        m = broadcast_metrics.of_channel(channel)  # cached per channel, buffered
        m.received.inc()
        if pub.time:
            metrics.observe_pub_sub_lag(pub.time, m.namespace)
        started = time.perf_counter()
        self.hub.broadcast_publication(channel, pub, epoch)
        m.duration.observe(time.perf_counter() - started)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast_join(channel, info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast_leave(channel, info)

    # --- where a channel's publications come from ---

    def _pubsub(self, channel: str) -> Broker | MapBroker:
        """Where a channel's publications come from: the map broker for a map channel
        (its own PUB/SUB, as Centrifugo's map_broker), the broker for every other."""
        if self.map_broker is not None and self.map_channel_options(channel) is not None:
            return self.map_broker
        return self.broker

    def map_channel_options(self, channel: str) -> MapChannelOptions | None:
        """The map options of `channel` (None: not a map channel): see app/node_maps.py."""
        return self.maps.options(channel)

    # --- facade used by clients and the server API ---

    def resolve(self, channel: str, client_side: bool = False) -> ChannelInfo:
        return self.resolver.resolve(channel, client_side=client_side)

    def publication_channel(
        self, channel: str, data: bytes, *, known_json: bool = False, client_side: bool = False
    ) -> ChannelInfo:
        """The channel a publication of `data` goes to, resolved once for the whole publish,
        with `data` checked against its publication_data_format: the namespace's, else
        channel.publication_data_format (Centrifugo's ChannelOptions), then
        ValidatePublicationData. The one rule of every publish, server API and client alike.

        Raises ClientError: the resolver's (102 unknown namespace, 107...), then 107 for data
        the format refuses: empty unless "binary", not JSON for "json", not a JSON object for
        "json_object". `known_json`: `data` is a span of a decoded JSON document, already
        valid, so it is not validated again.
        """
        chinfo = self.resolve(channel, client_side)
        fmt = chinfo.options.publication_data_format or self.config.channel.publication_data_format
        if fmt == "binary":
            return chinfo
        if not data:
            raise ClientError(ERROR_BAD_REQUEST)
        if fmt == "json" and not known_json and not jsonraw.is_json(data):
            raise ClientError(ERROR_BAD_REQUEST)
        # A valid JSON text whose first non-blank byte is "{" is an object (Go's
        # IsValidJSONObject looks at both ends; the last byte is then "}" anyway).
        if fmt == "json_object" and not (
            data.lstrip()[:1] == b"{" and (known_json or jsonraw.is_json(data))
        ):
            raise ClientError(ERROR_BAD_REQUEST)
        return chinfo

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        skip_history: bool = False,
        idempotency_key: str = "",
        delta: bool = False,
        version: int = 0,
        version_epoch: str = "",
        client_side: bool = False,
        chinfo: ChannelInfo | None = None,
    ) -> PublishResult:
        """Publish `data` to `channel`. `chinfo` is what `publication_channel` answered for
        it when the caller needed the channel first (the client checks permissions on it);
        without it the check runs here."""
        if chinfo is None:
            chinfo = self.publication_channel(channel, data, client_side=client_side)
        opts = publish_options(
            chinfo, info, tags, skip_history, idempotency_key, delta, version, version_epoch
        )
        result = await self.broker.publish(channel, data, opts)
        metrics.child(metrics.NODE_MESSAGES_SENT, "publication", chinfo.namespace).inc()
        if result.suppressed:
            count_suppressed(result, chinfo.namespace)
        return result

    async def publish_many(
        self, items: Sequence[tuple[ChannelInfo, bytes, dict[str, Any]]]
    ) -> list[PublishResult | ClientError]:
        """`publish(chinfo.channel, data, chinfo=chinfo, **kwargs)` of every item, for server
        API batches: each channel as `publication_channel` answered for its data.

        All publications are handed to the broker before any reply is awaited: the Redis
        engine pipelines them (a channel's publications apply in item order) and nobody
        pays a task or a coroutine chain per publication. A failure (the broker's) is
        returned in its item's place, never raised.
        """
        namespaces: list[str] = []
        publications: list[tuple[str, bytes, PublishOptions]] = []
        for chinfo, data, kw in items:
            if kw:
                opts = publish_options(
                    chinfo,
                    kw.get("info"),
                    kw.get("tags"),
                    kw.get("skip_history", False),
                    kw.get("idempotency_key", ""),
                    kw.get("delta", False),
                    kw.get("version", 0),
                    kw.get("version_epoch", ""),
                )
            else:
                opts = self._plain_publish_options(chinfo)
            namespaces.append(chinfo.namespace)
            publications.append((chinfo.channel, data, opts))
        batch = self._batch
        results: Sequence[PublishResult | BaseException]
        if batch is not None:
            results = await batch.publish_many(publications)
        else:
            # Tasks start in order and the memory broker publishes synchronously.
            results = await asyncio.gather(
                *(self.broker.publish(*args) for args in publications), return_exceptions=True
            )
        out: list[PublishResult | ClientError] = []
        sent: dict[str, int] = {}
        for namespace, result in zip(namespaces, results, strict=True):
            if type(result) is PublishResult:
                sent[namespace] = sent.get(namespace, 0) + 1
                out.append(result)
                if result.suppressed:
                    count_suppressed(result, namespace)
            elif isinstance(result, ClientError):
                out.append(result)
            else:
                log.error("publish failed: %r", result)
                out.append(ClientError(ERROR_INTERNAL))
        for namespace, n in sent.items():
            metrics.child(metrics.NODE_MESSAGES_SENT, "publication", namespace).inc(n)
        return out

    def _plain_publish_options(self, chinfo: ChannelInfo) -> PublishOptions:
        """`publish_options` with every caller option at its default, one per namespace:
        a batch's publications share it (brokers only read their options)."""
        ns = chinfo.options
        hit = self._plain_options.get(id(ns))
        if hit is None or hit[0] is not ns:
            hit = self._plain_options[id(ns)] = (
                ns,
                publish_options(chinfo, None, None, False, "", False),
            )
        return hit[1]

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
        client_side: bool = False,
    ) -> HistoryResult:
        ns = self.resolve(channel, client_side).options
        metrics.action("history", channel)
        if not ns.history_enabled:
            raise ClientError(ERROR_NOT_AVAILABLE)
        if since is not None and reverse and since.offset == 0:
            # Nothing lies before offset 0. Centrifugo's API answers this with 100
            # (clients were already refused with 107 before reaching here).
            raise ClientError(ERROR_INTERNAL)
        result = await self.broker.history(
            channel,
            HistoryFilter(since=since, limit=limit, reverse=reverse, meta_ttl=ns.history_meta_ttl),
        )
        if since is not None and since.epoch and since.epoch != result.position.epoch:
            raise ClientError(ERROR_UNRECOVERABLE_POSITION)
        return result

    async def stream_history(self, channel: str, flt: HistoryFilter) -> HistoryResult:
        """Raw history read for recovery (no epoch check: the caller decides)."""
        metrics.action(metrics.recovery_read(flt.since is not None, flt.reverse), channel)
        return await self.broker.history(channel, flt)

    async def remove_history(self, channel: str) -> None:
        self.resolve(channel)
        metrics.action("history_remove", channel)
        await self.broker.remove_history(channel)

    async def presence(self, channel: str, client_side: bool = False) -> dict[str, ClientInfo]:
        metrics.action("presence", channel)
        if not self.resolve(channel, client_side).options.presence:
            raise ClientError(ERROR_NOT_AVAILABLE)
        return await self.presence_manager.presence(channel)

    async def presence_stats(self, channel: str, client_side: bool = False) -> PresenceStats:
        metrics.action("presence_stats", channel)
        if not self.resolve(channel, client_side).options.presence:
            raise ClientError(ERROR_NOT_AVAILABLE)
        return await self.presence_manager.presence_stats(channel)

    async def emulation(self, node_id: str, session: str, data: bytes) -> bool:
        """Commands posted to /emulation (app/node_control.py)."""
        return await self.control.emulation(node_id, session, data)

    # --- server API actions by user: applied here and on every other node ---

    async def subscribe_user(
        self,
        user: str,
        channel: str,
        *,
        client: str = "",
        session: str = "",
        info: bytes | None = None,
        data: bytes | None = None,
        recover_since: StreamPosition | None = None,
        expire_at: int = 0,
        override: SubscribeOverride | None = None,
    ) -> None:
        self.resolve(channel)
        await self.control.user_action(
            control.UserAction(
                "subscribe",
                user,
                channel,
                client,
                session,
                info=info,
                data=data,
                recover_since=recover_since,
                expire_at=expire_at,
                override=override,
            )
        )

    async def unsubscribe_user(
        self, user: str, channel: str, *, client: str = "", session: str = ""
    ) -> None:
        """Unsubscribe the user's connections from `channel`, or from every channel if ""."""
        if channel:
            self.resolve(channel)
        await self.control.user_action(
            control.UserAction("unsubscribe", user, channel, client, session)
        )

    async def disconnect_user(
        self,
        user: str,
        disconnect: Disconnect,
        *,
        client: str = "",
        session: str = "",
        whitelist: Sequence[str] = (),
        wait_local: bool = True,
    ) -> None:
        await self.control.user_action(
            control.UserAction(
                "disconnect",
                user,
                client=client,
                session=session,
                code=disconnect.code,
                reason=disconnect.reason,
                whitelist=list(whitelist),
            ),
            wait_local=wait_local,
        )

    async def refresh_user(
        self,
        user: str,
        *,
        client: str = "",
        session: str = "",
        expired: bool = False,
        expire_at: int = 0,
        info: bytes | None = None,
    ) -> None:
        await self.control.user_action(
            control.UserAction(
                "refresh",
                user,
                client=client,
                session=session,
                expired=expired,
                expire_at=expire_at,
                info=info,
            )
        )

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Channel -> number of subscribed clients, summed over every node."""
        total: dict[str, int] = {}
        with metrics.survey("channels"):
            answers = await self.membership.survey("channels", pattern)
        for answer in answers:
            for ch, n in (answer or {}).items():
                total[ch] = total.get(ch, 0) + n
        return total

    def update_gauges(self) -> None:
        """The node gauges (clients, users, subscriptions, channels, nodes)."""
        hub = self.hub
        metrics.update_node(
            hub.num_clients,
            hub.num_users,
            hub.num_subscriptions,
            hub.num_channels,
            1 + self.membership.num_peers,
        )
        self.shared_poll.update_gauges()

    def local_info(self) -> dict[str, Any]:
        hub = self.hub
        # Called every heartbeat: a good moment to refresh the node gauges too.
        self.update_gauges()
        return {
            "uid": self.id,
            "name": self.name,
            "version": VERSION_STRING,
            "num_clients": hub.num_clients,
            "num_users": hub.num_users,
            "num_channels": hub.num_channels,
            "num_subs": hub.num_subscriptions,
            "uptime": int(time.time() - self.started_at),
        }

    async def info(self) -> list[dict[str, Any]]:
        return self.membership.nodes()


NODE_KEY = web.AppKey("node", Node)
