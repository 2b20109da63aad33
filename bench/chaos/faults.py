"""The faults the soak injects. Each injector hurts one thing and returns a `Fault` saying
when the hurt ended (`heal_from`: healing is timed from there), what it did, and what must
be true on top of the general health check before it counts as healed (`extra_check`):
the clients it cut off are subscribed again, the slow consumer's socket is gone.

Injectors never wait for healing themselves; the runner does, with a bound.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.chaos.clients import SdkSubscriber, SlowConsumer
from bench.chaos.procs import App, Redis, tcp_socket

KINDS = (
    "worker-kill",
    "client-drop",
    "redis-kill",
    "slow-consumer",
    "redis-freeze",
    "worker-kill-redis-down",
)

SLOW_PAYLOAD = 64 * 1024
SLOW_PUBLICATIONS = 160  # 10 MB: more than the server's send buffer (<= 4 MB) + queue (1 MB)
_RELEASED = ("TIME_WAIT", "CLOSE", "FIN_WAIT2")


@dataclass(slots=True)
class Fault:
    kind: str
    started: float  # monotonic
    heal_from: float = 0.0  # end of the injected outage (the kill itself, SIGCONT, restart)
    detail: str = ""
    # Besides the general health: None when satisfied, else what is still missing.
    extra_check: Callable[[], str | None] = field(default=lambda: None)
    cleanup: Callable[[], None] = field(default=lambda: None)
    failed: str = ""  # set by a check that knows healing can no longer happen
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def down_s(self) -> float:
        return self.heal_from - self.started


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def _established(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of process `pid`'s established TCP connections."""
    inodes = _socket_inodes(pid)
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "01" and parts[9] in inodes:
                local = int(parts[1].rsplit(":", 1)[1], 16)
                out.append((local, int(parts[2].rsplit(":", 1)[1], 16)))
    return out


def peers_of(pid: int, port: int) -> set[int]:
    """Remote ports of the TCP connections process `pid` accepted on `port`."""
    return {remote for local, remote in _established(pid) if local == port}


def talks_to(pid: int, port: int) -> bool:
    """Process `pid` has a connection to 127.0.0.1:`port` (a worker's node to Redis)."""
    return any(remote == port for _, remote in _established(pid))


def _local_port(s: SdkSubscriber) -> int:
    conn = s.client._conn  # see SdkSubscriber.drop_tcp
    return int(conn.local_address[1]) if conn is not None else 0


def _resubscribed(victims: list[SdkSubscriber], before: dict[str, int]) -> Callable[[], str | None]:
    def check() -> str | None:
        waiting = [s for s in victims if s.counts["subscribed"] <= before[s.name] or not s.ready]
        return f"{len(waiting)} cut-off clients not subscribed again" if waiting else None

    return check


class Injector:
    """Holds what the faults act on; one method per fault kind (names in KINDS)."""

    def __init__(
        self,
        app: App,
        redis: Redis,
        subs: list[SdkSubscriber],
        api_key: str,
        token: Callable[[str], str],
        rng: random.Random,
        redis_outage_s: float,
        freeze_s: float,
        slow_release_s: float,
        health: Callable[[], Awaitable[int]],
    ) -> None:
        self.app = app
        self.redis = redis
        self.subs = subs
        self.api_key = api_key
        self.token = token
        self.rng = rng
        self.redis_outage_s = redis_outage_s
        self.freeze_s = freeze_s
        self.slow_release_s = slow_release_s
        self.health = health
        self._slow_seq = 0

    async def inject(self, kind: str) -> Fault:
        method: dict[str, Callable[[], Awaitable[Fault]]] = {
            "worker-kill": self.worker_kill,
            "client-drop": self.client_drop,
            "redis-kill": self.redis_kill,
            "slow-consumer": self.slow_consumer,
            "redis-freeze": self.redis_freeze,
            "worker-kill-redis-down": self.worker_kill_redis_down,
        }
        return await method[kind]()

    # -------------------------------------------------------------------------- workers

    def _kill_worker(self, f: Fault) -> None:
        workers = self.app.worker_pids()
        if not workers:
            f.detail = "no worker to kill"
            return
        pid = self.rng.choice(workers)
        peers = peers_of(pid, self.app.port)
        victims = [s for s in self.subs if _local_port(s) in peers]
        before = {s.name: s.counts["subscribed"] for s in victims}
        os.kill(pid, signal.SIGKILL)
        f.detail = f"SIGKILL worker {pid} ({len(victims)} SDK clients on it)"
        f.info.update(pid=pid, victims=len(victims))
        resubscribed = _resubscribed(victims, before)

        def check() -> str | None:
            workers_now = self.app.worker_pids()
            if pid in workers_now:
                return f"killed worker {pid} still listed"
            new = [w for w in workers_now if w not in workers]
            if not new:
                return "no replacement worker yet"
            # Its node started (connected to Redis); /health then reaches it at random.
            if not all(talks_to(w, self.redis.port) for w in new):
                return f"replacement worker {new} not connected to Redis"
            f.info["replacement"] = new
            return resubscribed()

        f.extra_check = check

    async def worker_kill(self) -> Fault:
        f = Fault("worker-kill", time.monotonic())
        self._kill_worker(f)
        f.heal_from = time.monotonic()
        return f

    async def worker_kill_redis_down(self) -> Fault:
        """Issue 14 point 1: a worker replaced while Redis is away must boot and serve
        (health 500) and the master must stay up."""
        f = Fault("worker-kill-redis-down", time.monotonic())
        await self.redis.kill()
        await asyncio.sleep(0.5)  # the running workers notice first
        self._kill_worker(f)
        await asyncio.sleep(self.redis_outage_s + 1.0)  # the replacement boots meanwhile
        master = self.app.master_exit()
        f.info["master_exit_during_outage"] = master
        f.detail += f"; Redis down {self.redis_outage_s + 1.5:.1f}s"
        if master is not None:
            f.detail += f"; gunicorn master EXITED with {master} while Redis was down"
        await self.redis.start()
        f.heal_from = time.monotonic()
        return f

    # -------------------------------------------------------------------------- redis

    async def redis_kill(self) -> Fault:
        f = Fault("redis-kill", time.monotonic())
        await self.redis.kill()
        await asyncio.sleep(self.redis_outage_s)
        await self.redis.start()
        f.heal_from = time.monotonic()
        f.detail = f"kill -9 Redis, restarted after {self.redis_outage_s:.1f}s" + (
            " (AOF)" if self.redis.aof else " (no persistence: history lost)"
        )
        return f

    async def redis_freeze(self) -> Fault:
        """SIGSTOP / SIGCONT. Issue 14 point 8: /health should turn 500 while Redis does not
        answer. Recorded (not judged): how long into the freeze /health first said 500."""
        f = Fault("redis-freeze", time.monotonic())
        self.redis.signal(signal.SIGSTOP)
        first_500: float | None = None
        try:
            end = f.started + self.freeze_s
            while time.monotonic() < end:
                try:
                    status = await self.health()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    status = -1
                if status == 500 and first_500 is None:
                    first_500 = time.monotonic() - f.started
                await asyncio.sleep(min(0.25, max(end - time.monotonic(), 0)))
        finally:
            self.redis.signal(signal.SIGCONT)
        f.heal_from = time.monotonic()
        f.info["health_500_after_s"] = None if first_500 is None else round(first_500, 2)
        seen = "never 500" if first_500 is None else f"500 after {first_500:.1f}s"
        f.detail = f"SIGSTOP Redis {self.freeze_s:.1f}s; /health {seen}"
        return f

    # -------------------------------------------------------------------------- clients

    async def client_drop(self, count: int = 5) -> Fault:
        f = Fault("client-drop", time.monotonic())
        ready = [s for s in self.subs if s.ready]
        victims = self.rng.sample(ready, min(count, len(ready)))
        before = {s.name: s.counts["subscribed"] for s in victims}
        dropped = [s for s in victims if s.drop_tcp()]
        f.heal_from = time.monotonic()
        f.detail = f"RST of {len(dropped)} SDK clients' TCP (no close frame)"
        f.extra_check = _resubscribed(dropped, before)
        return f

    async def slow_consumer(self) -> Fault:
        """Issue 14 point 4: a consumer that never reads must be disconnected and its socket
        released (aborted), not kept with megabytes unsent for as long as the peer is open."""
        f = Fault("slow-consumer", time.monotonic())
        self._slow_seq += 1
        channel = f"bulk:slow-{self._slow_seq}"
        route = ("lean", "aiohttp")[self._slow_seq % 2 == 0]
        f.info["route"] = route
        slow = SlowConsumer(
            self.app.port, "/connection/websocket", self.token("slow"), channel, route
        )
        f.cleanup = slow.close
        try:
            await slow.open()
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as e:
            f.heal_from = time.monotonic()
            f.detail = f"slow consumer could not subscribe: {e!r}"
            return f
        sent = await self._flood(channel)
        f.heal_from = time.monotonic()
        port, local = self.app.port, slow.local_port
        deadline = f.heal_from + self.slow_release_s
        seen: list[str] = []

        def check() -> str | None:
            sock = tcp_socket(port, local)
            state = "gone" if sock is None else f"{sock[0]} unsent={sock[1]}"
            if not seen or seen[-1] != state.split()[0]:
                seen.append(state.split()[0])
            f.info["server_socket"] = seen
            if sock is None or sock[0] in _RELEASED:
                return None
            if time.monotonic() > deadline:
                f.failed = (
                    f"slow consumer's server socket still {state} {self.slow_release_s:.0f}s "
                    "after the flood (issue 14 point 4)"
                )
            return f"slow consumer's server socket {state}"

        f.extra_check = check
        f.detail = (
            f"raw client ({route} WebSocket path) never reads; "
            f"{sent} x {SLOW_PAYLOAD // 1024} KB published to it; "
            f"server socket must be released within {self.slow_release_s:.0f}s"
        )
        return f

    async def _flood(self, channel: str) -> int:
        payload = {"channel": channel, "data": {"pad": "x" * SLOW_PAYLOAD}}
        sent = 0
        async with aiohttp.ClientSession(headers={"X-API-Key": self.api_key}) as session:

            async def one() -> None:
                nonlocal sent
                try:
                    async with session.post(
                        f"{self.app.url}/api/publish",
                        json=payload,
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as resp:
                        await resp.read()
                        sent += resp.status == 200
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass

            for _ in range(SLOW_PUBLICATIONS // 8):
                await asyncio.gather(*(one() for _ in range(8)))
        return sent
