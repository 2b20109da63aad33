"""Map subscriptions (issue 17): the `maps` stage of `python -m bench`.

For each worker count in `--maps-workers` (default 1,2) an app of its own is started on the
run's redis-server (Redis engine and `map_broker.type: redis`, prefix `cfmap<workers>`, so it
joins no other app's cluster) with one namespace `map:` of `subscription_type: map`, mode
`--maps-mode` (persistent; ephemeral gets a key_ttl of 300 s). Then:

1. **State sync.** One map channel is seeded with `--maps-keys` (10,000) keys of
   `--maps-value-bytes` (100) bytes of JSON through `/api/batch` (`map_publish` commands, 1000
   per request). `--maps-clients` (1000) raw WebSocket clients connect (JWT), and then all at
   once sync the whole state the way an SDK does (app/client/mapping.py): a subscribe with
   `type: 1, phase: 2, limit: --maps-page` (1000), then one continuation subscribe per reply
   with its `cursor` (and the first reply's `epoch` and `offset`) until a reply has `phase: 0`
   (live). Measured from the first subscribe to the last live reply: the time, keys delivered
   per second, and the CPU seconds of the app's workers and of redis-server in that window.
2. **Per-key updates.** The same clients stay live on that channel: one channel with 1000
   subscribers, so the updates hit the hash the clients just synced (10k keys), and no second
   connect burst shares the run. A publisher process sends `/api/map_publish` calls (a key out
   of the seeded ones at random, a new 100-byte value) in a closed loop, `--maps-concurrency`
   (16) in flight, for `--maps-duration` (10) s; then the stage waits for every delivery.
   Reported: map_publish calls/s, deliveries/s (clients count every push), worker CPU µs per
   delivery and per call, redis-server CPU beside them.

CPU is read the way the other stages read it (bench.runner.cpu_seconds on the processes), and
the figures are given as ratios inside the run (worker CPU : Redis CPU) since absolute rates
drift on a shared machine. Every `--sample-every`-th client parses its replies fully: its
state must hold every seeded key exactly once, and its live pushes must carry contiguous
offsets; the stage fails otherwise.

The namespace raises `map.subscribe_catch_up_timeout` to 120 s: with the default 5 s, a sync
that shares one worker with 999 others (each a page apart) outlives its deadline and the server
disconnects the client (3006 slow), which is centrifuge's behaviour, not what is measured here.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from bench.load import mask_frame
from bench.rawws import RawWsClient

if TYPE_CHECKING:
    from bench.runner import Run, Service

NAMESPACE = "map"
CHANNEL = "map:state"
PING = b"{}"
PUSH = b'{"push":'
CONNECT_ID = 1
# Every subscribe of a sync has its own id from here up, so a reply is matched to its page.
FIRST_SUB_ID = 2
PHASE_LIVE = 0
PHASE_STATE = 2


def map_config(
    redis_port: int, secret: str, api_key: str, workers: int, mode: str
) -> dict[str, Any]:
    from bench.runner import app_config

    prefix = f"cfmap{workers}"
    cfg = app_config(redis_port, secret, api_key, history=False, prefix=prefix)
    cfg["map_broker"] = {
        "type": "redis",
        "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": prefix},
    }
    opts: dict[str, Any] = {"mode": mode, "subscribe_catch_up_timeout": "120s"}
    if mode != "persistent":
        opts["key_ttl"] = "300s"
    cfg["channel"]["namespaces"].append(
        {
            "name": NAMESPACE,
            "subscription_type": "map",
            "allow_subscribe_for_client": True,
            "map": opts,
        }
    )
    return cfg


def value(n: int, size: int) -> bytes:
    """A JSON object of exactly `size` bytes (at least ~20) holding `n`."""
    head = b'{"n":%d,"p":"' % n
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


# ------------------------------------------------------------------------------ clients


class MapClient(RawWsClient):
    """One raw WebSocket client: connects, then syncs the map channel page by page until
    live, then counts the pushes. Replies are read only up to their state (orjson on the
    head); the keys of a page are counted with bytes.count. A sampled client parses all of
    it: the keys it was given and the offsets of its pushes."""

    def __init__(self, port: int, token: str, page: int, sample: bool) -> None:
        super().__init__("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        self.token = token
        self.page = page
        self.sample = sample
        self.connected: asyncio.Future[None] = loop.create_future()
        self.live: asyncio.Future[float] = loop.create_future()
        self.sub_id = FIRST_SUB_ID
        self.epoch = ""
        self.offset = 0
        self.pages = 0
        self.keys = 0  # entries received in sync replies
        self.key_set: set[str] = set()  # sampled only
        self.pushes = 0
        self.last_push = 0.0
        self.push_offset = 0  # sampled only: the last push's offset
        self.gaps = 0

    def fail(self, why: str) -> None:
        for fut in (self.connected, self.live):
            if not fut.done():
                fut.set_exception(RuntimeError(why))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection closed: {exc}")

    def on_open(self) -> None:
        cmd = {"id": CONNECT_ID, "connect": {"token": self.token}}
        self.write(mask_frame(json.dumps(cmd).encode()))

    def on_refused(self, head: bytes) -> None:
        self.fail(head.decode(errors="replace"))

    def start_sync(self) -> None:
        self._subscribe({})

    def _subscribe(self, more: dict[str, Any]) -> None:
        sub = {"channel": CHANNEL, "type": 1, "phase": PHASE_STATE, "limit": self.page} | more
        self.write(mask_frame(orjson.dumps({"id": self.sub_id, "subscribe": sub})))

    def on_frame(self, opcode: int, payload: bytes, head_len: int) -> None:
        if opcode != 1:
            return
        for line in payload.split(b"\n"):
            if line == PING:
                self.write(mask_frame(PING))
            elif line.startswith(PUSH):
                self.pushes += 1
                if self.sample:
                    self._check_push(line)
            else:
                self._reply(line)
        if self.pushes:
            self.last_push = time.monotonic()

    def _check_push(self, line: bytes) -> None:
        offset = orjson.loads(line)["push"]["pub"].get("offset", 0)
        if self.push_offset and offset != self.push_offset + 1:
            self.gaps += 1
        self.push_offset = offset

    def _reply(self, line: bytes) -> None:
        # The head: every field before the first list (state or publications), which the
        # server puts last (app/client/mapping.py); the lists are only counted.
        cut = min(
            (i for i in (line.find(b',"state":['), line.find(b',"publications":[')) if i >= 0),
            default=-1,
        )
        head = orjson.loads(line if cut < 0 else line[:cut] + b"}}")
        if "error" in head:
            self.fail(f"reply {head}")
            return
        if head.get("id") == CONNECT_ID:
            if not self.connected.done():
                self.connected.set_result(None)
            return
        res = head.get("subscribe")
        if res is None or head.get("id") != self.sub_id:
            self.fail(f"unexpected reply {line[:200]!r}")
            return
        self.pages += 1
        if cut >= 0:
            self.keys += line.count(b'"key":', cut)
            if self.sample:
                full = orjson.loads(line)["subscribe"]
                for pub in (*full.get("publications", ()), *full.get("state", ())):
                    if pub["key"] in self.key_set:
                        self.fail(f"key {pub['key']} delivered twice")
                    self.key_set.add(pub["key"])
        if self.sub_id == FIRST_SUB_ID:
            self.epoch, self.offset = res.get("epoch", ""), res.get("offset", 0)
        if res.get("phase", PHASE_LIVE) == PHASE_LIVE:
            self.push_offset = res.get("offset", 0)
            self.live.set_result(time.monotonic())
            return
        self.sub_id += 1
        more: dict[str, Any] = {"cursor": res["cursor"], "epoch": self.epoch}
        if self.offset:
            more["offset"] = self.offset
        self._subscribe(more)


async def connect_clients(
    port: int, tokens: list[str], page: int, sample_every: int
) -> list[MapClient]:
    loop = asyncio.get_running_loop()
    clients: list[MapClient] = []
    for i, tok in enumerate(tokens):
        c = MapClient(port, tok, page, sample_every > 0 and i % sample_every == 0)
        await loop.create_connection(lambda c=c: c, "127.0.0.1", port)  # type: ignore[misc]
        clients.append(c)
        if len(clients) % 100 == 0:  # a bounded burst: the server's accept queue is finite
            await asyncio.gather(*(x.connected for x in clients[-100:]))
    await asyncio.wait_for(asyncio.gather(*(c.connected for c in clients)), 60)
    return clients


# ------------------------------------------------------------------------------ publishing


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """The per-key update publisher (run in the runner's spawned pool process)."""

    url: str
    api_key: str
    keys: int
    value_bytes: int
    duration: float
    concurrency: int


def run_update_job(job: UpdateJob) -> dict[str, Any]:
    """Closed loop of `/api/map_publish` calls for `job.duration` s; counts and CPU."""
    cpu0 = time.process_time()
    out = asyncio.run(_updates(job))
    out["cpu_s"] = time.process_time() - cpu0
    return out


async def _updates(job: UpdateJob) -> dict[str, Any]:
    headers = {"X-API-Key": job.api_key, "Content-Type": "application/json"}
    rnd = random.Random(17)
    counts = {"sent": 0, "ok": 0, "errors": 0}
    conn = aiohttp.TCPConnector(limit=job.concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.monotonic()
        deadline = t0 + job.duration

        async def loop() -> None:
            while time.monotonic() < deadline:
                n = counts["sent"]
                counts["sent"] += 1
                body = b'{"channel":"%s","key":"k%d","data":%s}' % (
                    CHANNEL.encode(),
                    rnd.randrange(job.keys),
                    value(n, job.value_bytes),
                )
                async with s.post(f"{job.url}/api/map_publish", data=body, headers=headers) as r:
                    reply = await r.read()
                ok = r.status == 200 and b'"error"' not in reply
                counts["ok" if ok else "errors"] += 1

        await asyncio.gather(*(loop() for _ in range(job.concurrency)))
        t1 = time.monotonic()
    return {**counts, "t0": t0, "t1": t1}


async def seed(url: str, api_key: str, keys: int, value_bytes: int) -> float:
    """`keys` map_publish commands through /api/batch, 1000 per request; returns seconds."""
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        for start in range(0, keys, 1000):
            cmds = b",".join(
                b'{"map_publish":{"channel":"%s","key":"k%d","data":%s}}'
                % (CHANNEL.encode(), i, value(i, value_bytes))
                for i in range(start, min(start + 1000, keys))
            )
            body = b'{"parallel":true,"commands":[' + cmds + b"]}"
            async with s.post(f"{url}/api/batch", data=body, headers=headers) as resp:
                reply = await resp.read()
            if resp.status != 200 or b'"error"' in reply:
                raise RuntimeError(f"seeding failed: HTTP {resp.status} {reply[:300]!r}")
    return time.monotonic() - t0


# ------------------------------------------------------------------------------ the stage


def _log(msg: str) -> None:
    from bench.runner import log

    log(msg)


def maps(r: Run, stack: ExitStack) -> None:
    """Both scenarios for each worker count in `opts.maps_workers` (rows in `r.maps`)."""
    from bench.runner import launch_app

    o = r.opts
    for workers in o.maps_workers:
        cfg = map_config(r.redis_port, r.secret, r.api_key, workers, o.maps_mode)
        svc, port = launch_app(r.workdir, cfg, o.app_env, workers, name=f"appmap{workers}")
        stack.callback(svc.stop)
        svc.wait_http(f"http://127.0.0.1:{port}/health")
        deadline = time.monotonic() + 30
        while len(svc.workers()) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        _log(f"maps: app ({workers} worker(s), map_broker redis) on port {port}")
        for rep in range(o.repeat):
            # asyncio's own loop: bench.rawws wants an asyncio.Transport (uvloop's is not one)
            loop = asyncio.new_event_loop()
            try:
                sync, update = loop.run_until_complete(_both(r, svc, port, workers))
            finally:
                loop.close()
            for row in (sync, update):
                row["run"] = rep + 1
                r.maps.append(row)
            if rep + 1 < o.repeat:  # a fresh map for the next run
                _clear(port, r.api_key)
        svc.stop()


def _clear(port: int, api_key: str) -> None:
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/map_clear",
        data=json.dumps({"channel": CHANNEL}).encode(),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def _cpu(r: Run, svc: Service) -> dict[str, float]:
    from bench.runner import cpu_seconds

    return {
        "workers": cpu_seconds(svc.workers()),
        "redis": cpu_seconds(r.redis.pids()),
        "clients": time.process_time(),
    }


def _diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a[k], 3) for k in a}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


async def _both(
    r: Run, svc: Service, port: int, workers: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    o = r.opts
    url = f"http://127.0.0.1:{port}"
    secs = await seed(url, r.api_key, o.maps_keys, o.maps_value_bytes)
    _log(f"maps: {o.maps_keys:,} keys seeded into {CHANNEL} in {secs:.1f}s")
    tokens = [r.token(f"m{i}") for i in range(o.maps_clients)]
    clients = await connect_clients(port, tokens, o.maps_page, o.sample_every)
    try:
        sync = await _sync(r, svc, workers, clients)
        update = await _update(r, svc, workers, clients, url)
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.abort()
    return sync, update


async def _sync(r: Run, svc: Service, workers: int, clients: list[MapClient]) -> dict[str, Any]:
    o = r.opts
    cpu0 = _cpu(r, svc)
    t0 = time.monotonic()
    for c in clients:
        c.start_sync()
    done = await asyncio.wait_for(asyncio.gather(*(c.live for c in clients)), 120)
    t1 = max(done)
    cpu = _diff(cpu0, _cpu(r, svc))
    keys = sum(c.keys for c in clients)
    sampled = [c for c in clients if c.sample]
    for c in sampled:
        if len(c.key_set) != o.maps_keys:
            raise RuntimeError(f"maps: a sampled client synced {len(c.key_set)} keys")
    took = t1 - t0
    row = {
        "scenario": "sync",
        "workers": workers,
        "mode": o.maps_mode,
        "clients": len(clients),
        "keys": o.maps_keys,
        "value_bytes": o.maps_value_bytes,
        "page": o.maps_page,
        "pages": sum(c.pages for c in clients),
        "keys_delivered": keys,
        "seconds": round(took, 3),
        "first_live_s": round(min(done) - t0, 3),
        "keys_per_s": round(keys / took) if took > 0 else 0,
        "cpu_s": cpu,
        "worker_cpu_us_per_key": round(cpu["workers"] / keys * 1e6, 3) if keys else None,
        "worker_vs_redis_cpu": _ratio(cpu["workers"], cpu["redis"]),
        "sampled_verified": len(sampled),
    }
    _log(
        f"maps sync {workers}w: {len(clients):,} clients x {o.maps_keys:,} keys live in "
        f"{took:.2f}s, {row['keys_per_s']:,} keys/s, worker CPU {cpu['workers']:.2f}s, "
        f"redis {cpu['redis']:.2f}s (x{row['worker_vs_redis_cpu']})"
    )
    return row


async def _update(
    r: Run, svc: Service, workers: int, clients: list[MapClient], url: str
) -> dict[str, Any]:
    o = r.opts
    for c in clients:
        c.pushes, c.last_push = 0, 0.0
    job = UpdateJob(
        url, r.api_key, o.maps_keys, o.maps_value_bytes, o.maps_duration, o.maps_concurrency
    )
    cpu0 = _cpu(r, svc)
    pub = await asyncio.get_running_loop().run_in_executor(r.pool, run_update_job, job)
    expected = pub["ok"] * len(clients)
    last, seen = time.monotonic(), -1
    while (got := sum(c.pushes for c in clients)) < expected:
        if got != seen:
            last, seen = time.monotonic(), got
        elif time.monotonic() - last > 5:
            break  # counted as lost
        await asyncio.sleep(0.02)
    cpu = _diff(cpu0, _cpu(r, svc))
    end = max((c.last_push for c in clients), default=0.0)
    window = end - pub["t0"] if end else 0.0
    publish_s = pub["t1"] - pub["t0"]
    gaps = sum(c.gaps for c in clients if c.sample)
    row = {
        "scenario": "update",
        "workers": workers,
        "mode": o.maps_mode,
        "clients": len(clients),
        "channels": 1,
        "keys": o.maps_keys,
        "concurrency": o.maps_concurrency,
        "calls": pub["ok"],
        "errors": pub["errors"],
        "publish_s": round(publish_s, 3),
        "calls_per_s": round(pub["ok"] / publish_s) if publish_s > 0 else 0,
        "expected": expected,
        "delivered": got,
        "lost": max(expected - got, 0),
        "window_s": round(window, 3),
        "deliveries_per_s": round(got / window) if window > 0 else 0,
        "cpu_s": cpu | {"publisher": round(pub["cpu_s"], 3)},
        "worker_cpu_us_per_delivery": round(cpu["workers"] / got * 1e6, 3) if got else None,
        "worker_cpu_us_per_call": round(cpu["workers"] / pub["ok"] * 1e6, 1) if pub["ok"] else None,
        "redis_cpu_us_per_call": round(cpu["redis"] / pub["ok"] * 1e6, 1) if pub["ok"] else None,
        "worker_vs_redis_cpu": _ratio(cpu["workers"], cpu["redis"]),
        "offset_gaps": gaps,
    }
    _log(
        f"maps update {workers}w: {row['calls_per_s']:,} map_publish/s, "
        f"{row['deliveries_per_s']:,} deliveries/s ({got:,}/{expected:,}), worker "
        f"{row['worker_cpu_us_per_delivery']} us/delivery, x{row['worker_vs_redis_cpu']} redis"
    )
    if gaps:
        raise RuntimeError(f"maps: {gaps} offset gaps on the sampled clients")
    return row
