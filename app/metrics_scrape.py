"""The body of a /metrics scrape: every worker's series merged, plus what
prometheus-client's multiprocess mode leaves out and Centrifugo's dashboard reads.

- **Summary quantiles.** prometheus-client's Summary has no quantiles at all (only
  `_count` and `_sum`), and a quantile of one worker's observations could not be merged
  with another's anyway. Every Summary here has a `_histogram` companion fed with the
  same observations (Centrifugo's own design since v6.8.1), and histogram buckets do sum
  across workers exactly. So each Summary gets Centrifugo's objectives (0.5, 0.99,
  0.999) computed from its companion's merged buckets, by the interpolation
  `histogram_quantile()` uses, over a sliding window like Go's summary MaxAge (10
  minutes): the delta against the newest remembered snapshot at least that old (since
  the start while there is none). No observation in the window gives NaN, as in Go.
  The dashboard in deploy/grafana/ reads the `_histogram` series directly, as
  Centrifugo's current dashboard does; the quantiles serve older dashboards and alerts
  that select `{quantile="0.99"}`.
- **Process metrics.** Multiprocess mode has no `process_*` series (one process's
  values are not a sum of anything). Each live worker's are read from /proc at scrape
  time and exposed with a `pid` label (the label prometheus-client's `liveall` gauges
  use), so `sum(rate(process_cpu_seconds_total[1m]))` is the deployment's CPU and
  `by (pid)` each worker's. A worker is live while its live-gauge file exists, the
  same rule the `livesum` gauges follow (the master removes it when the worker exits).
"""

from __future__ import annotations

import glob
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Centrifugo's Summary objectives (internal/metrics, centrifuge metrics.go).
OBJECTIVES = (0.5, 0.99, 0.999)
# Go's prometheus.DefMaxAge: a summary's quantiles cover the last 10 minutes.
WINDOW = 600.0
# Snapshots kept for the window at most this often: ~20 per window whatever the
# scrape interval, and quantiles cover between WINDOW and WINDOW + this.
SNAPSHOT_EVERY = WINDOW / 20
HISTOGRAM_SUFFIX = "_histogram"

_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")

# (histogram family name, labels without `le`) -> cumulative bucket counts.
_Counts = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, ...]]


def quantile(q: float, bounds: tuple[float, ...], cumulative: tuple[float, ...]) -> float:
    """Prometheus's histogram_quantile over one series' cumulative bucket counts
    (`bounds` ascending, the last +Inf): linear interpolation within the bucket that
    holds the rank; the highest finite bound when the rank falls in +Inf."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    i = next(i for i, c in enumerate(cumulative) if c >= rank)
    upper = bounds[i]
    if math.isinf(upper):
        return bounds[-2] if len(bounds) > 1 else math.nan
    lower = bounds[i - 1] if i else 0.0
    below = cumulative[i - 1] if i else 0.0
    if i == 0 and upper <= 0:
        return upper
    in_bucket = cumulative[i] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


class _Window:
    """Snapshots of the histograms' counts, to take a WINDOW-old baseline from."""

    def __init__(self) -> None:
        self._snaps: deque[tuple[float, _Counts]] = deque()
        self._lock = threading.Lock()  # scrapes render in threads (metrics.render_async)

    def baseline(self, now: float, current: _Counts) -> _Counts:
        with self._lock:
            snaps = self._snaps
            # Keep the newest snapshot that is at least WINDOW old, and all newer ones.
            while len(snaps) >= 2 and now - snaps[1][0] >= WINDOW:
                snaps.popleft()
            base = snaps[0][1] if snaps and now - snaps[0][0] >= WINDOW else {}
            if not snaps or now - snaps[-1][0] >= SNAPSHOT_EVERY:
                snaps.append((now, current))
            return base


_window = _Window()


def _histogram_counts(families: list[Metric]) -> tuple[_Counts, dict[str, tuple[float, ...]]]:
    counts: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
    for family in families:
        if family.type != "histogram" or not family.name.endswith(HISTOGRAM_SUFFIX):
            continue
        bucket = family.name + "_bucket"
        for s in family.samples:
            if s.name != bucket:
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            counts.setdefault((family.name, labels), []).append((float(s.labels["le"]), s.value))
    flat: _Counts = {}
    bounds: dict[str, tuple[float, ...]] = {}
    for key, pairs in counts.items():
        pairs.sort()
        flat[key] = tuple(c for _, c in pairs)
        bounds[key[0]] = tuple(b for b, _ in pairs)
    return flat, bounds


def add_summary_quantiles(families: list[Metric], now: float | None = None) -> None:
    """Give every Summary with a `_histogram` companion its quantile samples."""
    current, bounds = _histogram_counts(families)
    if not current:
        return
    base = _window.baseline(time.monotonic() if now is None else now, current)
    for family in families:
        if family.type != "summary":
            continue
        companion = family.name + HISTOGRAM_SUFFIX
        if companion not in bounds:
            continue
        series = {
            tuple(sorted(s.labels.items())) for s in family.samples if s.name.endswith("_count")
        }
        for labels in sorted(series):
            now_counts = current.get((companion, labels))
            if now_counts is None:
                continue
            then = base.get((companion, labels))
            window = (
                tuple(a - b for a, b in zip(now_counts, then, strict=True))
                if then is not None and len(then) == len(now_counts)
                else now_counts
            )
            for q in OBJECTIVES:
                value = quantile(q, bounds[companion], window)
                family.add_sample(family.name, {**dict(labels), "quantile": str(q)}, value)


def live_worker_pids(path: str) -> list[int]:
    pids = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        m = _LIVE_FILE.search(name)
        if m:
            pids.add(int(m.group(1)))
    return sorted(pids)


def _pid_of(pid: int) -> Callable[[], int]:
    return lambda: pid


def worker_process_families(pids: Iterable[int]) -> list[Metric]:
    """`process_*` of each pid, labelled `pid`; a pid that exited meanwhile has none."""
    merged: dict[str, Metric] = {}
    for pid in pids:
        for family in ProcessCollector(pid=_pid_of(pid), registry=None).collect():
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value)
    return list(merged.values())


class _Scrape(Collector):
    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        families = list(multiprocess.MultiProcessCollector(None, self._path).collect())
        add_summary_quantiles(families)
        families += worker_process_families(live_worker_pids(self._path))
        return families


class _Single(Collector):
    """One process (no gunicorn): the default registry, process metrics included."""

    def collect(self) -> Iterable[Metric]:
        families = list(REGISTRY.collect())
        add_summary_quantiles(families)
        return families


def scrape_body(multiproc_dir: str | None) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Scrape(multiproc_dir) if multiproc_dir else _Single())
    return generate_latest(registry)
