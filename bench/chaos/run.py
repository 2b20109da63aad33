"""The soak itself: start Redis and the app, connect the clients, publish, inject faults on a
schedule for N minutes, wait for each to heal, drain, account, stop everything.

Every wait is bounded (start-up, each heal, the publisher's last retries, the drain, the
shutdown); a master that exits ends the schedule at once and is reported as fatal. Whatever
happens, `Soak.close` stops the clients, the app's whole process group and Redis.
"""

from __future__ import annotations

import asyncio
import random
import resource
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from bench.chaos import report
from bench.chaos.accounting import ClientResult, account_all
from bench.chaos.clients import SdkErrors, SdkSubscriber
from bench.chaos.faults import KINDS, Fault, Injector
from bench.chaos.procs import REPO_ROOT, App, ProcSample, Redis, sample
from bench.chaos.publisher import Publisher

HEALTH_STREAK = 6  # /health 200 answers in a row on fresh connections (random workers)


@dataclass(frozen=True, slots=True)
class Options:
    minutes: float = 20.0
    clients: int = 200
    channels: int = 20
    rate: float = 20.0  # publications/s over all channels
    workers: int = 2
    aof: bool = True
    faults: tuple[str, ...] = KINDS
    gap_s: float = 4.0  # quiet time after each heal
    heal_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    redis_outage_s: float = 2.0
    freeze_s: float = 7.0  # above 0.8 s + the 4 s io_timeout after which /health says 500
    slow_release_s: float = 20.0
    seed: int = 1
    log_level: str = "info"
    keep_workdir: bool = False
    app_root: Path = REPO_ROOT  # where `python -m app` runs: another checkout to compare


@dataclass(slots=True)
class FaultRow:
    fault: Fault
    at_s: float  # since the schedule started
    healed: bool = False
    heal_s: float | None = None  # from heal_from to healthy
    waiting_for: str = ""  # what was still missing when the wait ended
    resubscribes: int = 0


@dataclass(slots=True)
class Usage:
    """Per-process samples: the last one of each pid (CPU) and the peaks (RSS)."""

    last: dict[int, ProcSample] = field(default_factory=dict)
    server_total_peak: int = 0

    def add(self, pid: int) -> ProcSample | None:
        s = sample(pid)
        if s is not None:
            prev = self.last.get(pid)
            if prev is not None:
                s.hwm = max(s.hwm, prev.hwm)
            self.last[pid] = s
        return s


class Soak:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.workdir = Path(tempfile.mkdtemp(prefix="cfpy-chaos-"))
        self.secret = secrets.token_hex(16)
        self.api_key = secrets.token_hex(16)
        self.redis = Redis(self.workdir, opts.aof)
        self.app = App(self.config(), opts.workers, self.workdir, opts.app_root)
        self.channels = [f"chaos:ch{i}" for i in range(opts.channels)]
        self.subs: list[SdkSubscriber] = []
        self.publisher: Publisher | None = None
        self.rows: list[FaultRow] = []
        self.fatal = ""
        self.workers_seen: set[int] = set()
        self.initial_workers: set[int] = set()
        self.usage = Usage()
        self._session: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task[None] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "client": {
                "token": {"hmac_secret_key": self.secret},
                # Enough for any client to recover what it missed during a fault.
                "recovery_max_publication_limit": 1000,
                # A client that missed the last publications before a quiet spell is told
                # (insufficient state) within 5 s instead of 40: the drain converges.
                "channel_position_check_delay": "5s",
            },
            "http_api": {"key": self.api_key},
            "http_server": {"address": "127.0.0.1"},
            "health": {"enabled": True},
            "log": {"level": self.opts.log_level},
            "engine": {
                "type": "redis",
                "redis": {"address": f"redis://127.0.0.1:{self.redis.port}", "prefix": "chaos"},
            },
            "channel": {
                "namespaces": [
                    {
                        "name": "chaos",
                        "history_size": 1000,
                        "history_ttl": "300s",
                        "force_recovery": True,
                        "allow_subscribe_for_client": True,
                    },
                    {"name": "bulk", "allow_subscribe_for_client": True},
                ]
            },
        }

    def token(self, user: str) -> str:
        return jwt.encode({"sub": user}, self.secret, algorithm="HS256")

    # ---------------------------------------------------------------------------- health

    async def health(self) -> int:
        """GET /health on a fresh connection (so it lands on a random worker)."""
        assert self._session is not None
        async with self._session.get(
            f"{self.app.url}/health", timeout=aiohttp.ClientTimeout(total=2)
        ) as resp:
            await resp.read()
            return resp.status

    async def unhealthy(self, since: float) -> str | None:
        """None when the whole system is healthy, else the first thing that is not."""
        code = self.app.master_exit()
        if code is not None:
            return f"gunicorn master exited with {code}"
        workers = self.app.worker_pids()
        if len(workers) != self.opts.workers:
            return f"{len(workers)} of {self.opts.workers} workers"
        if not self.redis.running():
            return "redis-server not running"
        for i in range(HEALTH_STREAK):
            try:
                status = await self.health()
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                return f"/health: {type(e).__name__}"
            if status != 200:
                return f"/health {status} ({i} x 200 before)"
        dead = [s for s in self.subs if s.terminal]
        if dead:
            return f"{len(dead)} clients stopped for good, e.g. {dead[0].name}: {dead[0].terminal}"
        waiting = sum(not s.ready for s in self.subs)
        if waiting:
            return f"{waiting} clients not subscribed"
        assert self.publisher is not None
        oldest = self.publisher.oldest_pending()
        if oldest is not None and oldest < since:
            return f"{len(self.publisher.pending)} publications still being retried"
        return None

    async def wait_healthy(self, since: float, timeout: float, fault: Fault | None) -> str:
        """'' once healthy, else what was still missing when `timeout` ran out.

        Healthy: `unhealthy()` has nothing to say, the fault's own check passes, and then a
        probe publication sent to every channel reached every client (end to end: the
        nodes are subscribed to Redis again and clients that missed something recovered
        it). A fault whose check knows healing can no longer happen ends the wait early."""
        assert self.publisher is not None
        deadline = time.monotonic() + timeout
        probe: dict[str, int] | None = None
        while True:
            reason = await self.unhealthy(since) or ""
            if not reason and fault is not None:
                reason = fault.extra_check() or ""
            if not reason:
                if probe is None:
                    probe = self.publisher.probe(self.channels)
                reason = self.probe_missing(probe)
            if not reason:
                return ""
            if fault is not None and fault.failed:
                return fault.failed
            if self.app.master_exit() is not None or time.monotonic() > deadline:
                return reason
            await asyncio.sleep(0.1)  # poll interval

    def probe_missing(self, probe: dict[str, int]) -> str:
        assert self.publisher is not None
        acks = self.publisher.acks
        unacked = [n for n in probe.values() if n not in acks]
        if unacked:
            return f"{len(unacked)} probe publications not acknowledged yet"
        waiting = [
            s for s in self.subs if not s.has_seen(probe[s.channel], acks[probe[s.channel]].at)
        ]
        if waiting:
            return f"{len(waiting)} clients did not receive the probe publication"
        return ""

    # ---------------------------------------------------------------------------- monitor

    async def monitor(self) -> None:
        """Every 0.5 s: note the worker pids (restarts) and sample CPU and RSS."""
        while True:
            if self.app.master_exit() is None:
                workers = self.app.worker_pids()
                self.workers_seen.update(workers)
                total = 0
                for pid in [self.app.master, *workers]:
                    s = self.usage.add(pid)
                    total += s.rss if s is not None else 0
                self.usage.server_total_peak = max(self.usage.server_total_peak, total)
            if self.redis.proc is not None:
                self.usage.add(self.redis.proc.pid)
            await asyncio.sleep(0.5)

    # ---------------------------------------------------------------------------- phases

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        await self.redis.start()
        self.app.start()
        if await self.wait_booted(30.0):
            raise RuntimeError(f"app not ready:\n{self.app.log_tail()}")
        self.initial_workers = set(self.app.worker_pids())
        self.workers_seen |= self.initial_workers
        self._monitor = asyncio.create_task(self.monitor())
        self.publisher = Publisher(
            f"{self.app.url}/api",
            self.api_key,
            lambda n: self.channels[n % len(self.channels)],
            self.opts.rate,
            run_id=secrets.token_hex(4),
        )
        await self.publisher.seed(self.channels)
        self.subs = [
            SdkSubscriber(
                f"c{i}", self.app.ws_url, self.token(f"u{i}"), self.channels[i % len(self.channels)]
            )
            for i in range(self.opts.clients)
        ]
        room = asyncio.Semaphore(20)  # a connect storm of 200 would only slow everyone

        async def start_one(s: SdkSubscriber) -> None:
            async with room:
                await s.start()

        await asyncio.gather(*(start_one(s) for s in self.subs))
        reason = await self.wait_healthy(time.monotonic(), 60.0, None)
        if reason:
            raise RuntimeError(f"clients not subscribed: {reason}\n{self.app.log_tail()}")

    async def wait_booted(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            code = self.app.master_exit()
            if code is not None:
                return f"exited with {code}"
            if len(self.app.worker_pids()) == self.opts.workers:
                try:
                    if all([await self.health() == 200 for _ in range(HEALTH_STREAK)]):
                        return ""
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
            if time.monotonic() > deadline:
                return "not ready"
            await asyncio.sleep(0.1)  # readiness poll

    async def schedule(self) -> None:
        assert self.publisher is not None
        opts = self.opts
        injector = Injector(
            self.app,
            self.redis,
            self.subs,
            self.api_key,
            self.token,
            self.rng,
            opts.redis_outage_s,
            opts.freeze_s,
            opts.slow_release_s,
            self.health,
        )
        t0 = time.monotonic()
        end = t0 + opts.minutes * 60
        i = 0
        while time.monotonic() < end:
            kind = opts.faults[i % len(opts.faults)]
            i += 1
            subscribed_before = sum(s.counts["subscribed"] for s in self.subs)
            started = time.monotonic()
            fault = await injector.inject(kind)
            row = FaultRow(fault, started - t0)
            self.rows.append(row)
            report.progress(f"{row.at_s:7.1f}s  {kind:<24} {fault.detail}")
            try:
                missing = await self.wait_healthy(fault.heal_from, opts.heal_timeout_s, fault)
            finally:
                fault.cleanup()
            row.healed = not missing
            row.waiting_for = missing
            row.heal_s = time.monotonic() - fault.heal_from if row.healed else None
            row.resubscribes = sum(s.counts["subscribed"] for s in self.subs) - subscribed_before
            report.progress(report.heal_line(row))
            code = self.app.master_exit()
            if code is not None:
                self.fatal = (
                    f"gunicorn master exited with {code} during {kind}; the server is gone.\n"
                    f"----- app log: last error lines -----\n"
                    f"{self.app.log_tail(12, errors_only=True)}"
                )
                return
            await asyncio.sleep(opts.gap_s)

    async def drain(self) -> tuple[list[ClientResult], float]:
        """Stop publishing, then wait (bounded) until no client misses anything."""
        assert self.publisher is not None
        await self.publisher.finish(timeout=self.opts.drain_timeout_s)
        t0 = time.monotonic()
        while True:
            results = self.account()
            missing = sum(len(r.lost) for r in results)
            if not missing or time.monotonic() - t0 > self.opts.drain_timeout_s:
                return results, time.monotonic() - t0
            await asyncio.sleep(1.0)

    def account(self) -> list[ClientResult]:
        assert self.publisher is not None
        return account_all(
            ((s.name, s.channel, list(s.timeline)) for s in self.subs), self.publisher.acks
        )

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        await asyncio.gather(*(s.stop() for s in self.subs))
        if self.publisher is not None:
            await self.publisher.finish(timeout=0)
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.app.stop)
        self.redis.stop()
        if not self.opts.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def _phases(soak: Soak) -> tuple[list[ClientResult], float]:
    """Start, publish under the fault schedule, drain: (per-client results, drain time)."""
    opts = soak.opts
    await soak.start()
    report.progress(
        f"{len(soak.subs)} clients subscribed on {len(soak.channels)} channels; "
        f"{opts.workers} workers, Redis {'AOF' if opts.aof else 'without persistence'}; "
        f"faults for {opts.minutes:g} min"
    )
    assert soak.publisher is not None
    pub_task = asyncio.create_task(soak.publisher.run())
    try:
        await soak.schedule()
    finally:
        soak.publisher.stop()
        await pub_task
    if soak.fatal:
        return [], 0.0
    return await soak.drain()


async def run(opts: Options) -> dict[str, Any]:
    """The whole soak; returns the report document (`report.build`). Everything started
    is stopped on return, and on cancellation (SIGINT/SIGTERM) too."""
    soak = Soak(opts)
    sdk_errors = SdkErrors()
    sdk_errors.install()
    started = time.monotonic()
    rusage0 = resource.getrusage(resource.RUSAGE_SELF)
    results: list[ClientResult] = []
    drain_s = 0.0
    error = ""
    # Every phase is bounded on its own; this bounds their sum, should one misbehave.
    bound_s = opts.minutes * 60 + opts.heal_timeout_s + 2 * opts.drain_timeout_s + 120
    try:
        async with asyncio.timeout(bound_s):
            results, drain_s = await _phases(soak)
    except RuntimeError as e:
        error = str(e)
    except TimeoutError:
        error = f"the soak overran its bound of {bound_s:.0f}s"
    finally:
        try:
            log = soak.app.log.read_text(errors="replace") if soak.app.log.exists() else ""
            rusage1 = resource.getrusage(resource.RUSAGE_SELF)
            doc = report.build(
                soak,
                results,
                drain_s=drain_s,
                wall_s=time.monotonic() - started,
                soak_cpu_s=(rusage1.ru_utime + rusage1.ru_stime)
                - (rusage0.ru_utime + rusage0.ru_stime),
                soak_peak_rss=rusage1.ru_maxrss * 1024,
                app_log=log,
                sdk_errors=sdk_errors,
                error=error,
            )
        finally:
            await soak.close()
    return doc
