"""app/metrics_scrape.py: quantiles from merged histogram buckets (histogram_quantile's
interpolation), the 10-minute window of a Summary's quantiles, live workers told by their
live-gauge files, and per-pid process families."""

from __future__ import annotations

import math
import os
from pathlib import Path

from prometheus_client.metrics_core import Metric

from app import metrics_scrape
from app.metrics_scrape import (
    WINDOW,
    add_summary_quantiles,
    live_worker_pids,
    quantile,
    worker_process_families,
)

INF = math.inf
BOUNDS = (0.1, 0.5, 1.0, INF)


def test_quantile_interpolates_within_the_bucket() -> None:
    # 10 observations, all in (0.1, 0.5]: the median is halfway through that bucket.
    assert quantile(0.5, BOUNDS, (0, 10, 10, 10)) == 0.1 + 0.4 * 0.5
    # The first bucket starts at 0.
    assert quantile(0.5, BOUNDS, (4, 4, 4, 4)) == 0.05


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert quantile(0.99, BOUNDS, (0, 0, 0, 5)) == 1.0


def test_no_observations_is_nan() -> None:
    assert math.isnan(quantile(0.5, BOUNDS, (0, 0, 0, 0)))


def _families(count_in_first: float, count_in_second: float) -> list[Metric]:
    """A Summary `x` and its companion `x_histogram`, as the multiprocess merge gives them."""
    summary = Metric("x", "", "summary")
    summary.add_sample("x_count", {"m": "a"}, count_in_first + count_in_second)
    summary.add_sample("x_sum", {"m": "a"}, 1.0)
    hist = Metric("x_histogram", "", "histogram")
    cumulative = (
        count_in_first,
        count_in_first + count_in_second,
        count_in_first + count_in_second,
    )
    for le, value in zip(("0.1", "1.0", "+Inf"), cumulative, strict=True):
        hist.add_sample("x_histogram_bucket", {"m": "a", "le": le}, value)
    return [summary, hist]


def _quantiles(families: list[Metric]) -> dict[str, float]:
    return {
        s.labels["quantile"]: s.value
        for s in families[0].samples
        if "quantile" in s.labels and s.labels["m"] == "a"
    }


def test_summary_gets_quantiles_over_a_sliding_window(monkeypatch) -> None:
    monkeypatch.setattr(metrics_scrape, "_window", metrics_scrape._Window())
    # t=0: 100 fast observations.
    first = _families(100, 0)
    add_summary_quantiles(first, now=0.0)
    assert set(_quantiles(first)) == {"0.5", "0.99", "0.999"}
    assert _quantiles(first)["0.99"] <= 0.1
    # t=WINDOW+1: 100 slow ones since; the window holds only them (the t=0 snapshot is its
    # baseline), so even the median is slow.
    later = _families(100, 100)
    add_summary_quantiles(later, now=WINDOW + 1)
    assert _quantiles(later)["0.5"] > 0.1
    # Nothing new in the next window: NaN, as a Go summary with an empty window.
    idle = _families(100, 100)
    add_summary_quantiles(idle, now=2 * WINDOW + 2)
    assert math.isnan(_quantiles(idle)["0.5"])


def test_live_workers_are_those_with_a_live_gauge_file(tmp_path: Path) -> None:
    for name in ("gauge_livesum_11.db", "gauge_livemax_12.db", "counter_13.db", "gauge_max_14.db"):
        (tmp_path / name).write_bytes(b"")
    assert live_worker_pids(str(tmp_path)) == [11, 12]


def test_process_families_carry_the_pid() -> None:
    families = {f.name: f for f in worker_process_families([os.getpid()])}
    rss = families["process_resident_memory_bytes"].samples
    assert [s.labels for s in rss] == [{"pid": str(os.getpid())}]
    assert rss[0].value > 0
    # A pid that exited: no series, no error.
    assert worker_process_families([2**22 + 1]) == []
