"""Paced publishers. Each job runs in its own process so it never shares a core's time slice
with the load-generator clients' event loops.

Publication `s` (0-based within a job) goes to channel `s % count` with offset `s // count + 1`,
so the runner knows exactly how many messages each connection must receive. Its data is
`{"ts":<publisher time.monotonic()>,"n":<s>,"p":"<pad>"}` (no `{}` inside, which the counting
clients rely on to spot pings).

Modes:
  spublish   one EVALSHA per tick: a Lua loop SPUBLISHes the tick's publications already framed
             as the app's broker frames (`__p1:<offset>:<epoch>__` + empty meta + data). This
             skips the HTTP API and the history script and isolates Redis -> worker -> sockets.
  redis      same Lua loop for the raw peer: SPUBLISH of the finished push JSON.
  api        POST /api/publish, one publication per request (keep-alive, bounded in flight).
  api-batch  POST /api/batch {"parallel": true}, one request per tick with the tick's publications.
  trigger    POST /trigger on the raw peer: it builds and fans out the frames itself (no Redis).
  sio        same Lua loop for the python-socketio peer: PUBLISH on the manager's one channel
             (`socketio`) of the message `AsyncRedisManager(write_only=True).emit("m", data,
             room=<channel>)` publishes (python-socketio 5.x JSON), which every server decodes.

`total` stops a job after that many publications (the reconnect storm fills histories with it).
A rate far above what the server takes makes the HTTP modes closed-loop: at most `concurrency`
requests in flight, each with up to `batch` publications (api-batch), so the result is the
server's throughput.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

TICK = 0.005  # pacing granularity, s
MAX_PER_CALL = 2000  # publications per Lua call / batch request, keeps Redis latency small

PUBLISH_LUA = """
-- Bench-only: generates publications s0 .. s0+n-1 and publishes each (see bench/publish.py).
-- ARGV: 1 command (spublish|publish), 2 pub/sub channel prefix, 3 channel base, 4 channel count,
--       5 first s, 6 n, 7 ts, 8 frame kind (app|raw|sio), 9 epoch, 10 pad
-- (kind sio: ARGV[2] is the whole Redis channel, the room goes into the message)
local cmd, prefix, base, c = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local s0, n, ts, kind, epoch, pad = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9], ARGV[10]
for s = s0, s0 + n - 1 do
  local idx = s % c
  local off = (s - idx) / c + 1
  local name = base
  if c > 1 then name = base .. idx end
  local data = '{"ts":' .. ts .. ',"n":' .. s .. ',"p":"' .. pad .. '"}'
  local msg
  local target = prefix .. name
  if kind == 'app' then
    msg = '__p1:' .. off .. ':' .. epoch .. '__\\n' .. data
  elseif kind == 'sio' then
    target = prefix
    msg = '{"method":"emit","event":"m","data":[' .. data .. '],"binary":false,"namespace":"/",'
      .. '"room":"' .. name .. '","skip_sid":null,"callback":null,"host_id":"bench-publisher"}'
  else
    msg = '{"push":{"channel":"' .. name .. '","pub":{"data":' .. data .. ',"offset":' .. off .. '}}}'
  end
  redis.call(cmd, target, msg)
end
return n
"""


def channel_name(base: str, count: int, idx: int) -> str:
    return base if count == 1 else f"{base}{idx}"


def data_bytes(ts: float, s: int, pad: str) -> bytes:
    return b'{"ts":%.6f,"n":%d,"p":"%s"}' % (ts, s, pad.encode())


def push_bytes(name: str, s: int, count: int, ts: float, pad: str) -> bytes:
    """The exact push the app sends for publication `s` (the raw peer sends the same bytes)."""
    off = s // count + 1
    return b'{"push":{"channel":"%s","pub":{"data":%s,"offset":%d}}}' % (
        name.encode(),
        data_bytes(ts, s, pad),
        off,
    )


@dataclass(frozen=True, slots=True)
class PublishJob:
    mode: str
    rate: float  # publications per second
    duration: float  # s; publishing stops then, whatever was sent
    base: str  # channel name base
    count: int  # number of channels
    pad: int = 40
    redis_port: int = 0
    pubsub_prefix: str = ""  # Redis channel prefix in front of the channel name
    command: str = "spublish"
    epoch: str = "bench"
    url: str = ""  # server base URL for api / api-batch / trigger
    api_key: str = ""
    in_flight: int = 64  # api: requests in flight
    concurrency: int = 4  # api-batch: requests in flight (and connections)
    batch: int = MAX_PER_CALL  # api-batch: most publications per request
    total: int = 0  # stop after this many publications (0: only the duration counts)


def run_job(job: PublishJob) -> dict[str, Any]:
    """Runs one job (in the publisher process); returns counts, timing and its own CPU."""
    cpu0 = os.times()
    if job.mode in ("spublish", "redis", "sio"):
        res = _run_lua(job)
    else:
        res = asyncio.run(_run_http(job))
    cpu1 = os.times()
    res["cpu_s"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return res


def _due(job: PublishJob, t0: float, now: float, sent: int, most: int = MAX_PER_CALL) -> int:
    n = min(int(job.rate * (now - t0)) - sent, most)
    if job.total:
        n = min(n, job.total - sent)
    return n


def _finished(job: PublishJob, now: float, end: float, sent: int) -> bool:
    return now >= end or (job.total > 0 and sent >= job.total)


def _run_lua(job: PublishJob) -> dict[str, Any]:
    import redis

    r = redis.Redis(port=job.redis_port)
    sha = r.script_load(PUBLISH_LUA)
    kind = {"spublish": "app", "redis": "raw", "sio": "sio"}[job.mode]
    command = "publish" if job.mode == "sio" else job.command
    pad = "x" * job.pad
    sent = 0
    t0 = time.monotonic()
    end = t0 + job.duration
    while True:
        now = time.monotonic()
        if _finished(job, now, end, sent):
            break
        n = _due(job, t0, now, sent)
        if n > 0:
            r.evalsha(
                sha,
                0,
                command,
                job.pubsub_prefix,
                job.base,
                job.count,
                sent,
                n,
                f"{now:.6f}",
                kind,
                job.epoch,
                pad,
            )
            sent += n
        time.sleep(max(0.0, TICK - (time.monotonic() - now)))
    t1 = time.monotonic()
    r.close()
    return {"published": sent, "t0": t0, "t1": t1, "errors": 0}


async def _run_http(job: PublishJob) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if job.api_key:
        headers["X-API-Key"] = job.api_key
    pad = "x" * job.pad
    # Trigger requests run one at a time: concurrent fan-out loops would interleave (reorder)
    # the frames of one channel.
    in_flight = {"api": job.in_flight, "api-batch": job.concurrency, "trigger": 1}[job.mode]
    sem = asyncio.Semaphore(in_flight)
    errors = 0
    ok = 0
    tasks: set[asyncio.Task[None]] = set()

    async def post(session: aiohttp.ClientSession, path: str, body: bytes, n: int) -> None:
        nonlocal errors, ok
        try:
            async with session.post(job.url + path, data=body, headers=headers) as resp:
                text = await resp.read()
            if resp.status != 200:
                errors += n
                return
            if job.mode == "api-batch":
                replies = orjson.loads(text).get("replies") or []
                bad = sum(1 for x in replies if "error" in x)
                errors += bad
                ok += n - bad
            elif job.mode == "api":
                if b'"error"' in text:
                    errors += 1
                else:
                    ok += 1
            else:
                ok += n
        except (aiohttp.ClientError, OSError, ValueError):
            errors += n
        finally:
            sem.release()

    def body_for(first: int, n: int, ts: float) -> tuple[str, bytes]:
        if job.mode == "trigger":
            req = {"base": job.base, "count": job.count, "start": first, "n": n, "ts": ts}
            return "/trigger", orjson.dumps(req | {"pad": pad})
        items = []
        for s in range(first, first + n):
            ch = channel_name(job.base, job.count, s % job.count)
            items.append(b'{"channel":"%s","data":%s}' % (ch.encode(), data_bytes(ts, s, pad)))
        if job.mode == "api":
            return "/api/publish", items[0]
        cmds = b",".join(b'{"publish":' + it + b"}" for it in items)
        return "/api/batch", b'{"commands":[' + cmds + b'],"parallel":true}'

    connector = aiohttp.TCPConnector(limit=in_flight, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        sent = 0
        t0 = time.monotonic()
        end = t0 + job.duration
        while True:
            now = time.monotonic()
            if _finished(job, now, end, sent):
                break
            n = _due(job, t0, now, sent, job.batch if job.mode == "api-batch" else MAX_PER_CALL)
            if job.mode == "trigger":
                # A trigger request is served to its end before the next one: keep each short.
                n = min(n, max(1, int(job.rate * TICK * 4)))
            # One request per publication for "api", one per tick otherwise. Waiting for a
            # free slot (not for the next tick) keeps a closed loop saturated.
            while n > 0 and time.monotonic() < end:
                k = 1 if job.mode == "api" else n
                await sem.acquire()
                path, body = body_for(sent, k, time.monotonic())
                t = asyncio.create_task(post(session, path, body, k))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                sent += k
                n -= k
            await asyncio.sleep(max(0.0, TICK - (time.monotonic() - now)))
        if tasks:
            await asyncio.gather(*tasks)
        t1 = time.monotonic()
    # The runner spreads expectations by `published`; failed publishes show up as errors+loss.
    return {"published": sent, "ok": ok, "t0": t0, "t1": t1, "errors": errors}
