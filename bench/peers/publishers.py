"""Publishers of the peers stage (`python -m bench.peers`) that bench/publish.py does not have.

Each runs in the stage's publisher process, paced like bench/publish.py (publication `s` of a
job goes to room/group `s % count`, data `{"ts":<publisher time.monotonic()>,"n":s,"p":pad}`)
and returns what `bench.publish.run_job` returns: published, t0, t1, errors, cpu_s.

* `emitter`: the Node.js socket.io peer's publications, as `@socket.io/redis-emitter` sends
  them (`new Emitter(redis).to(room).emit("m", data)`): PUBLISH on `socket.io#/#<room>#` of the
  msgpack array ["emitter", {type: 2, data: ["m", data], nsp: "/"}, {rooms: [room], flags: {},
  except: []}] (emitter 5.1 `BroadcastOperator.emit`; the adapter pattern-subscribes
  `socket.io#/#*`). A Lua loop in Redis builds and publishes one 5 ms tick's publications per
  EVALSHA, as the other Lua publishers do, so the publisher costs the machine no more for this
  peer than for the raw peer and python-socketio. tests/test_bench_peers_smoke.py checks the
  bytes against the real emitter's.
* `group_send`: the Django Channels peer's publications, the way a Django process publishes to
  consumers: `channel_layer.group_send(group, {"type": "bench.pub", "data": data})` on a
  `channels_redis` RedisChannelLayer configured as the server's (`LAYER_OPTIONS`), up to
  `concurrency` sends in flight.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from bench.publish import TICK, PublishJob, run_job

EMITTER_KEY = "socket.io"  # the emitter's and the adapter's default key, namespace "/"
GROUP_MESSAGE_TYPE = "bench.pub"  # handled by the consumer's `bench_pub` (channels_site.py)


def layer_options(redis_port: int) -> dict[str, Any]:
    """CHANNEL_LAYERS["default"]["CONFIG"] of the Channels peer and its publisher.

    `capacity` is raised from channels_redis' default 100: all consumers of a daphne process
    share one Redis key (`specific.<process>!`), and at its capacity `group_send` drops the
    message (logging "over capacity"). The stage offers more than the server drains, to read
    its drain rate, so the default would turn the backlog into loss after 100 messages.
    The host is given as a dict (channels_redis passes its keys to redis-py's ConnectionPool)
    to raise `max_connections`: redis-py's asyncio pool holds 100 connections at most and
    raises "Too many connections" past that, not waits, and the daphne process ran one
    command per connection in flight: a burst of 200 clients subscribing at once (the load
    generator's connect concurrency) failed their `group_add`s.
    """
    host = {"address": f"redis://127.0.0.1:{redis_port}", "max_connections": 2000}
    return {"hosts": [host], "capacity": 1_000_000, "expiry": 120}


# Bench-only: generates publications s0 .. s0+n-1 as @socket.io/redis-emitter messages.
# ARGV: 1 room base, 2 room count, 3 first s, 4 n, 5 ts, 6 pad. msgpack by hand around
# cmsgpack's scalars: the emitter's (notepack's) maps keep their key order, and cmsgpack
# would encode the empty `flags` object as an empty array.
EMITTER_LUA = """
local base, c = ARGV[1], tonumber(ARGV[2])
local s0, n, ts, pad = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local p = cmsgpack.pack
local head = '\\147' .. p('emitter') .. '\\131' .. p('type') .. '\\002' .. p('data') .. '\\146'
  .. p('m') .. '\\131'
local nsp = p('nsp') .. p('/') .. '\\131' .. p('rooms') .. '\\145'
local tail = p('flags') .. '\\128' .. p('except') .. '\\144'
for s = s0, s0 + n - 1 do
  local room = base
  if c > 1 then room = base .. (s % c) end
  local data = p('ts') .. p(ts) .. p('n') .. p(s) .. p('p') .. p(pad)
  redis.call('publish', 'socket.io#/#' .. room .. '#', head .. data .. nsp .. p(room) .. tail)
end
return n
"""


@dataclass(frozen=True, slots=True)
class PeerJob:
    """One paced publishing phase for a peer; `mode` is `emitter`, `group_send`, or any
    bench/publish.py mode (`base` given as `job`)."""

    mode: str
    rate: float  # publications per second
    duration: float
    base: str  # room / group name base ("" + index when count > 1)
    count: int
    redis_port: int
    pad: int = 63  # data of ~100 bytes
    concurrency: int = 32  # group_send: sends in flight
    job: PublishJob | None = None  # any other mode: run by bench.publish.run_job


def run_peer_job(job: PeerJob) -> dict[str, Any]:
    """Runs one job in the publisher process; returns counts, timing and its own CPU."""
    if job.job is not None:
        return run_job(job.job)
    cpu0 = os.times()
    if job.mode == "emitter":
        res = _run_emitter(job)
    elif job.mode == "group_send":
        res = asyncio.run(_run_group_send(job))
    else:
        raise ValueError(f"unknown peer publisher mode {job.mode!r}")
    cpu1 = os.times()
    res["cpu_s"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return res


def _due(job: PeerJob, t0: float, now: float, sent: int) -> int:
    return min(int(job.rate * (now - t0)) - sent, 2000)


def _run_emitter(job: PeerJob) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=job.redis_port)
    sha = r.script_load(EMITTER_LUA)
    pad = "x" * job.pad
    sent = 0
    t0 = time.monotonic()
    end = t0 + job.duration
    while (now := time.monotonic()) < end:
        n = _due(job, t0, now, sent)
        if n > 0:
            r.evalsha(sha, 0, job.base, job.count, sent, n, f"{now:.6f}", pad)
            sent += n
        time.sleep(max(0.0, TICK - (time.monotonic() - now)))
    t1 = time.monotonic()
    r.close()
    return {"published": sent, "t0": t0, "t1": t1, "errors": 0}


async def _run_group_send(job: PeerJob) -> dict[str, Any]:
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(**layer_options(job.redis_port))
    pad = "x" * job.pad
    sem = asyncio.Semaphore(job.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    errors = 0

    async def send(s: int, ts: float) -> None:
        nonlocal errors
        group = job.base if job.count == 1 else f"{job.base}{s % job.count}"
        try:
            message = {"type": GROUP_MESSAGE_TYPE, "data": {"ts": ts, "n": s, "p": pad}}
            await layer.group_send(group, message)
        except Exception:  # counted: the stage reports them as publish errors and loss
            errors += 1
        finally:
            sem.release()

    sent = 0
    t0 = time.monotonic()
    end = t0 + job.duration
    while (now := time.monotonic()) < end:
        n = _due(job, t0, now, sent)
        # Waiting for a free slot, not for the next tick, keeps a slow layer saturated.
        while n > 0 and time.monotonic() < end:
            await sem.acquire()
            t = asyncio.create_task(send(sent, time.monotonic()))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
            n -= 1
        await asyncio.sleep(max(0.0, TICK - (time.monotonic() - now)))
    if tasks:
        await asyncio.gather(*tasks)
    t1 = time.monotonic()
    await layer.close_pools()
    return {"published": sent, "t0": t0, "t1": t1, "errors": errors}
