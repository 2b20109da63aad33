"""Memory and loop stall of one big `/api/batch`: `python -m bench.api_batch`.

Starts one server worker (memory engine by default, `--engine redis` starts a redis-server),
sends one batch of `--count` publishes (about 59 bytes each, as in issue 14: 300k = 17.8 MB)
and meanwhile samples the worker's RSS every 10 ms and probes `/health` back to back. Prints
one JSON line: body size, batch time, the worker's CPU seconds, RSS before / peak / retained one second after the reply
(MB), and the slowest `/health` answer while the batch ran (ms).

    python -m bench.api_batch --count 300000
    python -m bench.api_batch --count 300000 --engine redis --parallel
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.app_process import AppProcess, start_app_process
from bench.runner import Service, start_redis

MB = 1024 * 1024


def batch_body(count: int, channels: int = 100, parallel: bool = False) -> bytes:
    """`{"commands": [{"publish": {"channel": "b<k>", "data": {"i": <i>}}}, ...]}`."""
    parts = [
        b'{"publish":{"channel":"b%d","data":{"i":%d,"p":"x"}}}' % (i % channels, i)
        for i in range(count)
    ]
    tail = b'],"parallel":true}' if parallel else b"]}"
    return b'{"commands":[' + b",".join(parts) + tail


class RssSampler:
    """Samples one process's RSS every `interval` seconds in a thread; `peak` is the max."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def health_probe(url: str, done: asyncio.Event) -> list[float]:
    """Latencies (s) of `/health` requests sent one after another until `done` is set."""
    out: list[float] = []
    async with aiohttp.ClientSession() as s:
        while not done.is_set():
            t0 = time.perf_counter()
            async with s.get(url) as resp:
                await resp.read()
            out.append(time.perf_counter() - t0)
    return out


async def send_batch(handle: AppProcess, body: bytes) -> tuple[int, bytes, list[float], float]:
    """POST the batch while probing /health; (status, reply body, health latencies, seconds)."""
    done = asyncio.Event()
    probe = asyncio.create_task(health_probe(f"{handle.url}/health", done))
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{handle.api_url}/batch", data=body, headers={"X-API-Key": handle.api_key}
        ) as resp:
            status, reply = resp.status, await resp.read()
    took = time.perf_counter() - t0
    done.set()
    return status, reply, await probe, took


def measure(handle: AppProcess, body: bytes) -> dict[str, Any]:
    with RssSampler(handle.worker_pid()) as sampler:
        before = sampler.rss()
        cpu0 = sum(sampler.proc.cpu_times()[:2])
        status, reply, health, took = asyncio.run(send_batch(handle, body))
        cpu = sum(sampler.proc.cpu_times()[:2]) - cpu0
        time.sleep(1.0)  # what the worker keeps once the batch is over
        retained = sampler.rss()
    return {
        "status": status,
        "body_mb": round(len(body) / MB, 1),
        "reply_mb": round(len(reply) / MB, 1),
        "batch_s": round(took, 2),
        "worker_cpu_s": round(cpu, 2),
        "rss_before_mb": round(before / MB),
        "rss_peak_mb": round(sampler.peak / MB),
        "rss_retained_mb": round(retained / MB),
        "health_max_ms": round(max(health, default=0.0) * 1000),
        "health_probes": len(health),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--engine", choices=("memory", "redis"), default="memory")
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--no-history", action="store_true", help="channels without history")
    args = ap.parse_args()
    config: dict[str, Any] = {"log": {"level": "warn"}}
    if not args.no_history:
        history = {"history_size": 10, "history_ttl": "60s"}
        config["channel"] = {"without_namespace": history}
    redis: Service | None = None
    redis_dir = Path(tempfile.mkdtemp(prefix="cfpy-bench-redis-"))
    try:
        if args.engine == "redis":
            redis, redis_port = start_redis(redis_dir)
            address = f"redis://127.0.0.1:{redis_port}"
            config["engine"] = {"type": "redis", "redis": {"address": address}}
        handle = start_app_process(config)
        try:
            result = measure(handle, batch_body(args.count, parallel=args.parallel))
        finally:
            handle.stop(check_log=False)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(redis_dir, ignore_errors=True)
    meta = {"count": args.count, "engine": args.engine, "history": not args.no_history}
    print(json.dumps({**meta, "parallel": args.parallel, **result}))


if __name__ == "__main__":
    main()
