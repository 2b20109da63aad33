"""One measured fan-out phase of the standalone stages (bench.nats_fanout,
bench.webtransport): a paced publish job, every load process's count collected, and the
figures those stages report. The CPU seconds of each process group are read around the job
(the publisher's own come from the job), so CPU per delivery covers the same window.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from bench.load import LoadGenerator
from bench.publish import PublishJob, run_job
from bench.runner import cpu_seconds


def run_fanout_phase(
    lg: LoadGenerator,
    groups: dict[str, list[int]],
    pool: concurrent.futures.ProcessPoolExecutor,
    job: PublishJob,
    expected_for: Callable[[int], list[int]],
    hard: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs `job` and collects what the clients got; `expected_for(published)` is what each
    load process should receive. Returns the row's common figures (published, publish
    errors, deliveries/s from the first publication to the last receipt, delivered, lost,
    CPU s per 1M deliveries of every group and the publisher, p50/p99 ms) and the load
    processes' own reports for the stage's extras. The clients stay connected."""
    lg.reset()
    cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
    res = pool.submit(run_job, job).result(timeout=job.duration + 120)
    expected = expected_for(res["published"])
    got = lg.collect(expected, idle=3.0, hard=hard)
    cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
    cpu["publisher"] = res["cpu_s"]
    delivered = sum(g["msgs"] for g in got)
    last = max((g["last"] for g in got if g["last"]), default=res["t1"])
    window = max(last - res["t0"], 1e-9)
    lat = sorted(x for g in got for x in g["lat"])
    row = {
        "published": res["published"],
        "publish_errors": res["errors"],
        "deliveries_per_s": round(delivered / window),
        "delivered": delivered,
        "lost": sum(expected) - delivered,
        "cpu_s_per_1m": {k: round(v / max(delivered, 1) * 1e6, 2) for k, v in cpu.items()},
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 2) if lat else None,
    }
    return row, got
