"""Stages of a benchmark run that are not a fan-out of publications.

* `idle`: (c) idle connections with one subscription each, ramped in steps; RSS of the serving
  process(es) before and after, and (d) the connect + subscribe rate of each step (clients
  connect as fast as they can, JWT on the app).
* `storm`: (d) N clients with recovery positions lose their connections at once (API
  `disconnect`, or a restart of the worker) and reconnect; the time until all re-subscribed
  with `recovered: true`.
* `batch`: `/api/batch` publish throughput into channels with history, closed loop, with 1
  and 2 workers (the second app: the fan-out scenarios' `app2` when it runs, else one started
  here).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from bench import report
from bench.load import ConnSpec
from bench.publish import PublishJob

if TYPE_CHECKING:
    from bench.runner import Run


def _log(msg: str) -> None:
    from bench.runner import log

    log(msg)


# ------------------------------------------------------------------------------ idle/connect


def idle(r: Run) -> None:
    o = r.opts
    for rep in range(o.repeat):
        for target in o.idle_targets:
            if rep:
                # A process keeps the heap its earlier connections grew: new connections
                # would reuse it and look free. Every run starts from a fresh process.
                r.restart(target)
            _idle_target(r, target, rep + 1)


def _idle_target(r: Run, target: str, run: int) -> None:
    from bench.runner import py_spy

    o = r.opts
    svc = r.server(target)
    tgt = r.target(target)
    time.sleep(o.idle_settle)
    workers = svc.workers()
    rss0 = _rss(workers)
    n = 0
    for step in o.idle_steps:
        # By default one personal channel per connection: each subscribe then costs the app a
        # node-level Redis subscription and a stream-position read, as a user channel would.
        k = o.idle_channels
        specs = [ConnSpec(i, f"idle_{i % k if k else i}", r.token(i)) for i in range(n, step)]
        prof = None
        if o.profile_dir is not None and target == "app":
            prof = o.profile_dir / f"idle-connect-{step}.txt"
        cpu0 = _cpu(r, target)
        with py_spy(workers[-1], prof, o.profile_native):
            secs = r.lg.connect(tgt, specs, 0, concurrency=o.connect_concurrency, read_delay=0.05)
        cpu1 = _cpu(r, target)
        time.sleep(o.idle_settle)  # let the connect burst's garbage go before reading RSS
        rss = _rss(workers)
        new = step - n
        row = {
            "target": target,
            "conns": step,
            "channels": min(step, o.idle_channels) if o.idle_channels else step,
            "new": new,
            "connect_s": round(secs, 3),
            "connects_per_s": round(new / secs) if secs > 0 else 0,
            "rss_before_mb": round(rss0 / 2**20, 1),
            "rss_mb": round(rss / 2**20, 1),
            "kb_per_conn": round((rss - rss0) / step / 1024, 2),
            "server_cpu_ms_per_connect": round((cpu1["server"] - cpu0["server"]) / new * 1e3, 3),
            "loadgen_cpu_ms_per_connect": round((cpu1["loadgen"] - cpu0["loadgen"]) / new * 1e3, 3),
            "redis_cpu_ms_per_connect": round((cpu1["redis"] - cpu0["redis"]) / new * 1e3, 3),
            "run": run,
        }
        r.idle.append(row)
        _log(
            f"idle {target}: {step:,} conns, {row['kb_per_conn']} KB/conn RSS "
            f"({row['rss_mb']} MB), {row['connects_per_s']:,} connect+subscribe/s"
        )
        n = step
    r.lg.disconnect()
    r.wait_drained(target)


def _rss(pids: list[int]) -> int:
    from bench.runner import rss_bytes

    return rss_bytes(pids)


def _cpu(r: Run, target: str) -> dict[str, float]:
    return r.snapshot(target)


# ------------------------------------------------------------------------------ storm


def storm(r: Run) -> None:
    o = r.opts
    n = o.storm_clients
    # One user for all storm clients, so one API call disconnects every one of them.
    token = r.token("storm")
    specs = [ConnSpec(i, f"storm:s{i}", token) for i in range(n)]
    tgt = r.target("app")
    secs = r.lg.storm_connect(tgt, specs, o.connect_concurrency)
    _log(f"storm: {n} recoverable subscribers in {secs:.1f}s")
    # Something to recover: storm_pubs publications in every channel after the positions.
    job = PublishJob(
        mode="api-batch",
        rate=50_000,
        duration=120,
        base="storm:s",
        count=n,
        total=n * o.storm_pubs,
        url=f"http://127.0.0.1:{r.app_port}",
        api_key=r.api_key,
        batch=500,
    )
    pub = r.publish(job, 180)
    if pub["errors"]:
        raise RuntimeError(f"storm: {pub['errors']} publications failed")
    time.sleep(0.5)
    expected = [len(part) for part in r.lg.split(specs)]
    for rep in range(o.repeat):
        for trigger in o.storm_triggers:
            r.storm.append(_storm_once(r, trigger, n, expected, rep + 1))
            time.sleep(0.5)
    r.lg.disconnect()
    time.sleep(1.0)  # a restarted worker's node stays in `info` a while: do not wait for it


def _storm_once(r: Run, trigger: str, n: int, expected: list[int], run: int) -> dict[str, Any]:
    o = r.opts
    r.lg.storm_arm()
    workers = r.app.workers()
    cpu0 = r.snapshot("app")
    t0 = time.monotonic()
    if trigger == "api":
        body = json.dumps({"user": "storm", "disconnect": {"code": 3001, "reason": "storm"}})
        req = urllib.request.Request(
            f"http://127.0.0.1:{r.app_port}/api/disconnect",
            data=body.encode(),
            headers={"X-API-Key": r.api_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
    elif trigger == "restart":
        # Graceful worker restart: gunicorn's master forks a new worker and keeps the
        # listening socket, so reconnecting clients wait in its backlog meanwhile.
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
    else:
        raise ValueError(f"unknown storm trigger {trigger!r}")
    stats = r.lg.storm_collect(expected, o.storm_timeout)
    cpu1 = r.snapshot("app")
    first = min((s["first"] for s in stats if s["first"]), default=0.0)
    last = max((s["last"] for s in stats), default=0.0)
    recovered = sum(s["recovered"] for s in stats)
    not_recovered = sum(s["not_recovered"] for s in stats)
    complete = recovered + not_recovered >= n
    errors: dict[str, int] = {}
    codes: dict[str, int] = {}
    for s in stats:
        for k, v in s["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in s["close_codes"].items():
            codes[str(k)] = codes.get(str(k), 0) + v
    row = {
        "trigger": trigger,
        "clients": n,
        "lost": sum(s["lost"] for s in stats),
        "recovered": recovered,
        "not_recovered": not_recovered,
        "pubs_recovered": sum(s["pubs"] for s in stats),
        "first_s": round(first - t0, 3) if first else None,
        "complete": complete,
        # until the last re-subscribe; the timeout when some never came back
        "all_s": round(last - t0, 3) if complete and last else o.storm_timeout,
        "resubscribes_per_s": round(n / (last - first)) if last > first else 0,
        "attempts": sum(s["attempts"] for s in stats),
        "failures": sum(s["failures"] for s in stats),
        "errors": errors,
        "close_codes": codes,
        # A restarted worker's CPU is gone with it: only the API trigger has a meaningful
        # server figure (the new worker's boot would dominate otherwise).
        "server_cpu_s": round(cpu1["server"] - cpu0["server"], 3) if trigger == "api" else None,
        "loadgen_cpu_s": round(cpu1["loadgen"] - cpu0["loadgen"], 3),
        "redis_cpu_s": round(cpu1["redis"] - cpu0["redis"], 3),
        "run": run,
    }
    _log(
        f"storm {trigger}: {recovered:,}/{n:,} recovered ({row['pubs_recovered']:,} pubs), "
        f"first {row['first_s']} s, all {row['all_s']} s, {row['attempts']:,} attempts"
    )
    return row


# ------------------------------------------------------------------------------ batch


def batch(r: Run, stack: ExitStack) -> None:
    from bench.runner import app_config, launch_app, wait_workers

    o = r.opts
    apps = {}
    for workers in o.batch_workers:
        if workers == 1:
            apps[1] = (r.app, r.app_port)
            continue
        if workers == 2 and r.app2 is not None:
            # the fan-out scenarios' 2-worker app (same config, its own prefix), left running
            apps[2] = (r.app2, r.app2_port)
            continue
        # Its own Redis prefix: the two apps must not form one cluster.
        cfg = app_config(r.redis_port, r.secret, r.api_key, o.history, prefix=f"cfb{workers}")
        svc, port = launch_app(r.workdir, cfg, o.app_env, workers, name=f"app{workers}")
        stack.callback(svc.stop)
        wait_workers(svc, port, workers)
        apps[workers] = (svc, port)
        _log(f"app ({workers} workers) on port {port}")
    for rep in range(o.repeat):
        for workers, (svc, port) in apps.items():
            row = _batch_once(r, svc, port, workers)
            row["run"] = rep + 1
            r.batch.append(row)
            _log(
                f"batch {workers} worker(s): {row['ok_per_s']:,} publishes/s with history "
                f"({row['errors']} errors, worker CPU {row['cpu_s']['workers']})"
            )
            time.sleep(0.5)
    for svc, _ in apps.values():
        if svc not in (r.app, r.app2):
            svc.stop()


def _batch_once(r: Run, svc: Any, port: int, workers: int) -> dict[str, Any]:
    from bench.runner import cpu_seconds, py_spy

    o = r.opts
    job = PublishJob(
        mode="api-batch",
        rate=1e9,  # closed loop: as fast as the server answers
        duration=o.batch_duration,
        base=f"hist:b{workers}_",
        count=o.batch_channels,
        url=f"http://127.0.0.1:{port}",
        api_key=r.api_key,
        concurrency=o.batch_concurrency,
        batch=o.batch_size,
    )
    pids = svc.workers()
    master = [p for p in svc.pids() if p not in pids]
    before = [cpu_seconds([p]) for p in pids]
    m0, redis0 = cpu_seconds(master), cpu_seconds(r.redis.pids())
    prof = None if o.profile_dir is None else o.profile_dir / f"batch-{workers}w.txt"
    with py_spy(pids[-1], prof, o.profile_native):
        pub = r.publish(job, o.batch_duration + 120)
    after = [cpu_seconds([p]) for p in pids]
    m1, redis1 = cpu_seconds(master), cpu_seconds(r.redis.pids())
    secs = pub["t1"] - pub["t0"]
    ok = pub.get("ok", 0)
    per_worker = [round(b - a, 3) for a, b in zip(before, after, strict=True)]
    cpu = {
        "workers": per_worker,
        "master": round(m1 - m0, 3),
        "redis": round(redis1 - redis0, 3),
        "publisher": round(pub["cpu_s"], 3),
    }
    return {
        "workers": workers,
        "history": True,
        "channels": o.batch_channels,
        "batch_size": o.batch_size,
        "concurrency": o.batch_concurrency,
        "published": pub["published"],
        "ok": ok,
        "errors": pub["errors"],
        "seconds": round(secs, 3),
        "ok_per_s": round(ok / secs) if secs > 0 else 0,
        "cpu_s": cpu,
        "cpu_s_per_1M": {
            "workers": report.per_million(sum(per_worker), ok),
            "master": report.per_million(cpu["master"], ok),
            "redis": report.per_million(cpu["redis"], ok),
            "publisher": report.per_million(cpu["publisher"], ok),
        },
    }
