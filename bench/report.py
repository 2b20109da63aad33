"""Medians, ratios, tables and the issue-7 target check of a benchmark run (pure functions)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

# Raw peer paths that read Redis: the ceiling every row is compared with.
RAW_REDIS_PATHS = ("hiredis", "redispy")
LOAD_ORDER = ["paced", "saturate", "p10", "p50", "p80"]
PATH_RANK = {
    ("raw", "hiredis"): 0,
    ("raw", "redispy"): 1,
    ("raw", "local"): 2,
    ("sio", "redis"): 3,
    ("app", "spublish"): 4,
    ("app2", "spublish"): 5,
}
# Issue 23 target 2: the 2-worker app's CPU per delivery within 10 % of the 1-worker app's.
TWO_WORKERS_MAX_RATIO = 1.10


def _path_rank(r: dict[str, Any]) -> int:
    """Table order: peers, the Redis paths, then the HTTP API paths, app before app2."""
    default = 10 if r["target"] == "app2" else 9
    return PATH_RANK.get((r["target"], r["path"]), default)


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def per_million(cpu_s: float, n: int) -> float:
    return round(cpu_s / n * 1e6, 2) if n else 0.0


def median_rows(
    runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], tuple[Any, ...]], metric: str
) -> list[dict[str, Any]]:
    """One row per `key`: the run with the median `metric`, plus every run's value of it."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    out = []
    for rs in groups.values():
        ranked = sorted(rs, key=lambda r: r[metric])
        row = dict(ranked[len(ranked) // 2])
        row.pop("run", None)
        row["runs"] = len(rs)
        row[f"runs_{metric}"] = [r[metric] for r in rs]
        out.append(row)
    return out


def overlay_median(
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], tuple[Any, ...]],
    metric: str,
    fields: tuple[str, ...] = (),
) -> None:
    """A second main figure for rows made by median_rows: `metric` and its `fields` come
    from the run with the median `metric` (an idle row's connect rate is not the one of the
    run with the median memory)."""
    for row in rows:
        same = [r for r in runs if key(r) == key(row)]
        if not same:
            continue
        mid = sorted(same, key=lambda r: r[metric])[len(same) // 2]
        for f in (metric, *fields):
            row[f] = mid[f]
        row[f"runs_{metric}"] = [r[metric] for r in same]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fan-out and latency rows: one per (scenario, load, target, path), the run with the
    median deliveries/s, with the median server CPU per 1M deliveries and the median
    latency figures over the runs."""
    rows = median_rows(
        runs, lambda r: (r["scenario"], r["load"], r["target"], r["path"]), "deliveries_per_s"
    )
    for row in rows:
        same = [
            r
            for r in runs
            if (r["scenario"], r["load"], r["target"], r["path"])
            == (row["scenario"], row["load"], row["target"], row["path"])
        ]
        row["server_cpu_s_per_1M"] = round(
            statistics.median(r["server_cpu_s_per_1M"] for r in same), 2
        )
        if all("worker_cpu_s_per_1M" in r for r in same):  # app targets
            row["worker_cpu_s_per_1M"] = round(
                statistics.median(r["worker_cpu_s_per_1M"] for r in same), 2
            )
        lats = [r["latency_ms"] for r in same if r.get("latency_ms", {}).get("samples")]
        if len(lats) > 1:
            # A latency goal is met by the median run's p99, not by the p99 of the run that
            # happened to have the median rate.
            row["latency_ms"] = {
                k: round(statistics.median(lat[k] for lat in lats), 2)
                for k in ("p50", "p99", "max")
            } | {"samples": sum(lat["samples"] for lat in lats)}
            row["runs_p99"] = [lat["p99"] for lat in lats]
    scen = list(dict.fromkeys(r["scenario"] for r in runs))
    rows.sort(
        key=lambda r: (
            scen.index(r["scenario"]),
            LOAD_ORDER.index(r["load"]) if r["load"] in LOAD_ORDER else 99,
            _path_rank(r),
        )
    )
    return rows


def two_workers(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 2-worker app (`app2`) against the 1-worker app, per scenario, load and path: CPU
    per delivery of the server (master + workers) and of the workers alone, as the ratio
    app2 / app of the same run (their phases run back to back) and its median over the runs;
    the median deliveries/s of each, and app2's connection spread and worker CPU split of
    the run with the median ratio."""
    pairs: dict[tuple[str, str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    one = {
        (r["scenario"], r["load"], r["path"], r.get("run")): r
        for r in runs
        if r["target"] == "app" and r["load"] in ("paced", "saturate")
    }
    for r in runs:
        if r["target"] != "app2" or r["load"] not in ("paced", "saturate"):
            continue
        a = one.get((r["scenario"], r["load"], r["path"], r.get("run")))
        if a is not None:
            pairs.setdefault((r["scenario"], r["load"], r["path"]), []).append((a, r))
    out = []
    for (scenario, load, path), ps in pairs.items():

        def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
            return round(b[key] / a[key], 3) if a.get(key) and b.get(key) is not None else None

        srv = [ratio(a, b, "server_cpu_s_per_1M") for a, b in ps]
        wrk = [ratio(a, b, "worker_cpu_s_per_1M") for a, b in ps]
        ranked = sorted(range(len(ps)), key=lambda i: srv[i] or 0.0)
        mid_a, mid_b = ps[ranked[len(ps) // 2]]
        srv_ok = [x for x in srv if x is not None]
        wrk_ok = [x for x in wrk if x is not None]
        srv_med = round(statistics.median(srv_ok), 3) if srv_ok else None
        out.append(
            {
                "scenario": scenario,
                "load": load,
                "path": path,
                "runs": len(ps),
                "deliveries_per_s": {
                    "app": round(statistics.median(a["deliveries_per_s"] for a, _ in ps)),
                    "app2": round(statistics.median(b["deliveries_per_s"] for _, b in ps)),
                },
                "server_cpu_s_per_1M": {
                    "app": round(statistics.median(a["server_cpu_s_per_1M"] for a, _ in ps), 2),
                    "app2": round(statistics.median(b["server_cpu_s_per_1M"] for _, b in ps), 2),
                },
                "server_ratio": srv_med,
                "runs_server_ratio": srv,
                "worker_ratio": round(statistics.median(wrk_ok), 3) if wrk_ok else None,
                "runs_worker_ratio": wrk,
                "met": None if srv_med is None else srv_med <= TWO_WORKERS_MAX_RATIO,
                "spread_pct": mid_b.get("spread_pct", []),
                "redis_subscriptions": {
                    "app": mid_a.get("redis_subscriptions"),
                    "app2": mid_b.get("redis_subscriptions"),
                },
                "worker_cpu_s": mid_b.get("worker_cpu_s", []),
                "cpu_s_per_1M": {"app": mid_a["cpu_s_per_1M"], "app2": mid_b["cpu_s_per_1M"]},
                "lost": {"app": mid_a["lost"], "app2": mid_b["lost"]},
            }
        )
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the peers of the same scenario and load: deliveries/s over the best raw Redis
    path (`ratio_to_raw`) and over python-socketio (`ratio_to_sio`); server CPU per delivery
    over the cheapest raw Redis path (`cpu_vs_raw`)."""
    best: dict[tuple[str, str], tuple[float, float]] = {}
    sio: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["scenario"], r["load"])
        if r["target"] == "raw" and r["path"] in RAW_REDIS_PATHS and r["deliveries_per_s"]:
            rate, cpu = best.get(key, (0.0, float("inf")))
            best[key] = (max(rate, r["deliveries_per_s"]), min(cpu, r["server_cpu_s_per_1M"]))
        if r["target"] == "sio" and r["deliveries_per_s"]:
            sio[key] = r["deliveries_per_s"]
    for r in rows:
        key = (r["scenario"], r["load"])
        rate, cpu = best.get(key, (0.0, 0.0))
        if cpu == float("inf"):
            cpu = 0.0
        r["ratio_to_raw"] = round(r["deliveries_per_s"] / rate, 3) if rate else None
        r["cpu_vs_raw"] = round(r["server_cpu_s_per_1M"] / cpu, 2) if cpu else None
        s = sio.get(key)
        r["ratio_to_sio"] = round(r["deliveries_per_s"] / s, 2) if s else None


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _lines(head: str, body: Iterable[str]) -> str:
    return "\n".join([head, "-" * len(head), *body])


def fanout_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<9} {'load':<8} {'target/path':<14} {'offered/s':>10} {'deliveries/s':>12} "
        f"{'xraw':>5} {'xsio':>6} {'msg/frm':>7} {'srv s/1M':>8} {'xcpu':>5} {'lg':>6} "
        f"{'pub':>6} {'redis':>6} {'p50 ms':>7} {'p99 ms':>7} {'lost':>6}"
    )
    body = []
    for r in rows:
        c = r["cpu_s_per_1M"]
        body.append(
            f"{r['scenario']:<9} {r['load']:<8} {r['target'] + '/' + r['path']:<14} "
            f"{r['offered_deliveries_per_s']:>10,} {r['deliveries_per_s']:>12,} "
            f"{_fmt(r['ratio_to_raw']):>5} {_fmt(r['ratio_to_sio'], '.1f'):>6} "
            f"{r['msgs_per_frame']:>7} {r['server_cpu_s_per_1M']:>8} {_fmt(r['cpu_vs_raw']):>5} "
            f"{c['loadgen']:>6} {c['publisher']:>6} {c['redis']:>6} "
            f"{r['latency_ms']['p50']:>7} {r['latency_ms']['p99']:>7} {r['lost']:>6}"
        )
    return _lines(head, body)


def latency_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<9} {'of peak':<7} {'target/path':<14} {'offered/s':>10} "
        f"{'deliveries/s':>12} {'msg/frm':>7} {'srv s/1M':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'samples':>8} {'lost':>6}"
    )
    body = []
    for r in rows:
        lat = r["latency_ms"]
        body.append(
            f"{r['scenario']:<9} {r['load'][1:] + '%':<7} {r['target'] + '/' + r['path']:<14} "
            f"{r['offered_deliveries_per_s']:>10,} {r['deliveries_per_s']:>12,} "
            f"{r['msgs_per_frame']:>7} {r['server_cpu_s_per_1M']:>8} {lat['p50']:>7} "
            f"{lat['p99']:>7} {lat['max']:>7} {lat['samples']:>8} {r['lost']:>6}"
        )
    return _lines(head, body)


def peak_table(rows: list[dict[str, Any]]) -> str:
    """The latency stage's search for the app's peak, every step of every run."""
    head = (
        f"{'scenario':<9} {'run':>3} {'step':>4} {'offered/s':>10} {'deliveries/s':>12} "
        f"{'msg/frm':>7} {'srv s/1M':>8} {'p99 ms':>8} {'lost':>6} {'ok':>3}"
    )
    body = [
        f"{r['scenario']:<9} {r['run']:>3} {r['step']:>4} {r['offered_deliveries_per_s']:>10,} "
        f"{r['deliveries_per_s']:>12,} {r['msgs_per_frame']:>7} {r['server_cpu_s_per_1M']:>8} "
        f"{r['latency_ms']['p99']:>8} {r['lost']:>6} {'yes' if r['ok'] else 'no':>3}"
        for r in rows
    ]
    return _lines(head, body)


def idle_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'target':<7} {'conns':>6} {'RSS MB':>8} {'KB/conn':>8} {'connect+sub/s':>13} "
        f"{'srv ms/conn':>11} {'lg ms/conn':>10}"
    )
    body = [
        f"{r['target']:<7} {r['conns']:>6,} {r['rss_mb']:>8} {r['kb_per_conn']:>8} "
        f"{r['connects_per_s']:>13,} {r['server_cpu_ms_per_connect']:>11} "
        f"{r['loadgen_cpu_ms_per_connect']:>10}"
        for r in rows
    ]
    return _lines(head, body)


def storm_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'trigger':<8} {'clients':>7} {'recovered':>9} {'not rec':>7} {'pubs':>6} "
        f"{'first s':>7} {'all s':>6} {'per s':>7} {'attempts':>8} {'srv CPU s':>9}"
    )
    body = [
        f"{r['trigger']:<8} {r['clients']:>7,} {r['recovered']:>9,} {r['not_recovered']:>7,} "
        f"{r['pubs_recovered']:>6,} {r['first_s']:>7} {r['all_s']:>6} "
        f"{r['resubscribes_per_s']:>7,} {r['attempts']:>8,} {_fmt(r['server_cpu_s']):>9}"
        for r in rows
    ]
    return _lines(head, body)


def batch_table(rows: list[dict[str, Any]], ratio: dict[str, Any] | None = None) -> str:
    head = (
        f"{'workers':>7} {'history':<7} {'publishes/s':>11} {'ok':>9} {'errors':>6} "
        f"{'workers s/1M':>12} {'redis s/1M':>10} {'pub s/1M':>8} {'worker split':<14}"
    )
    body = []
    for r in rows:
        c = r["cpu_s_per_1M"]
        split = "/".join(f"{x:.1f}" for x in r["cpu_s"]["workers"])
        body.append(
            f"{r['workers']:>7} {'yes' if r['history'] else 'no':<7} {r['ok_per_s']:>11,} "
            f"{r['ok']:>9,} {r['errors']:>6,} {c['workers']:>12} {c['redis']:>10} "
            f"{c['publisher']:>8} {split:<14}"
        )
    out = _lines(head, body)
    if ratio is not None and ratio["ratio"] is not None:
        runs = "/".join(_fmt(x) for x in ratio["runs_ratio"])
        met = "yes" if ratio["met"] else "NO"
        out += (
            f"\n2 workers / 1 worker, workers s/1M of the same run: {runs}, median "
            f"{ratio['ratio']:.3f} (<= {TWO_WORKERS_MAX_RATIO}: {met})"
        )
    return out


def batch_two_workers(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The batch stage's 2-worker CPU per publication over the 1-worker one of the same run
    (their phases run back to back), each run's and the median; None without both."""
    by_run: dict[Any, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_run.setdefault(r.get("run"), {})[r["workers"]] = r
    ratios = []
    for pair in by_run.values():
        one, two = pair.get(1), pair.get(2)
        if one and two and one["cpu_s_per_1M"]["workers"]:
            ratios.append(round(two["cpu_s_per_1M"]["workers"] / one["cpu_s_per_1M"]["workers"], 3))
    if not ratios:
        return None
    ratio = round(statistics.median(ratios), 3)
    return {"runs_ratio": ratios, "ratio": ratio, "met": ratio <= TWO_WORKERS_MAX_RATIO}


def two_workers_table(rows: list[dict[str, Any]]) -> str:
    """app2 (2 workers) vs app (1 worker): one line per scenario, load and path. PUB/SUB
    subscriptions and CPU s per 1M deliveries of the load generator, publisher and Redis:
    app's / app2's, of the run with the median ratio."""
    head = (
        f"{'scenario':<9} {'load':<8} {'path':<10} {'app dlv/s':>10} {'app2 dlv/s':>10} "
        f"{'app s/1M':>8} {'app2 s/1M':>9} {'srv x':>6} {'wrk x':>6} {'met':<4} "
        f"{'srv x of each run':<20} {'spread %':<9} {'app2 wrk CPU s':<14} {'subs 1w/2w':>11} "
        f"{'lg 1w/2w':>11} {'pub 1w/2w':>11} {'redis 1w/2w':>11}"
    )
    body = []
    for r in rows:
        c = r["cpu_s_per_1M"]
        lg, pub, redis = (
            f"{c['app'][k]}/{c['app2'][k]}" for k in ("loadgen", "publisher", "redis")
        )
        subs = r.get("redis_subscriptions") or {}
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        body.append(
            f"{r['scenario']:<9} {r['load']:<8} {r['path']:<10} "
            f"{r['deliveries_per_s']['app']:>10,} {r['deliveries_per_s']['app2']:>10,} "
            f"{r['server_cpu_s_per_1M']['app']:>8} {r['server_cpu_s_per_1M']['app2']:>9} "
            f"{_fmt(r['server_ratio'], '.3f'):>6} {_fmt(r['worker_ratio'], '.3f'):>6} {met:<4} "
            f"{'/'.join(_fmt(x) for x in r['runs_server_ratio']):<20} "
            f"{'/'.join(f'{x:.0f}' for x in r['spread_pct']) or '-':<9} "
            f"{'/'.join(f'{x:.2f}' for x in r['worker_cpu_s']) or '-':<14} "
            f"{'/'.join(_fmt(subs.get(t), 'd') for t in ('app', 'app2')):>11} "
            f"{lg:>11} {pub:>11} {redis:>11}"
        )
    return _lines(head, body)


def maps_table(rows: list[dict[str, Any]]) -> str:
    """The maps table: one line per scenario and worker count."""
    if not rows:
        return ""
    head = (
        "scenario workers clients  seconds  keys/s or calls/s  deliveries/s  "
        "wrk CPU s  redis CPU s  wrk:redis  wrk us/unit  lost"
    )
    lines = [head]
    for x in rows:
        cpu = x["cpu_s"]
        if x["scenario"] == "sync":
            rate, dl = f"{x['keys_per_s']:,} keys/s", f"{x['keys_delivered']:,} keys"
            unit, lost = x["worker_cpu_us_per_key"], "-"
            secs = x["seconds"]
        else:
            rate, dl = f"{x['calls_per_s']:,} calls/s", f"{x['deliveries_per_s']:,}"
            unit, lost = x["worker_cpu_us_per_delivery"], str(x["lost"])
            secs = x["window_s"]
        lines.append(
            f"{x['scenario']:<8} {x['workers']:>7} {x['clients']:>7} {secs:>8.2f}  {rate:>17}  "
            f"{dl:>12}  {cpu['workers']:>9.2f}  {cpu['redis']:>11.2f}  "
            f"{str(x['worker_vs_redis_cpu']):>9}  {str(unit):>11}  {lost:>4}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ targets


def _find(rows: list[dict[str, Any]], **kv: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kv.items()):
            return r
    return None


def targets(doc: dict[str, Any], subs: int) -> list[dict[str, Any]]:
    """Issue 7's targets against this run's results (None when the run did not measure it)."""
    rows = doc["rows"]
    out: list[dict[str, Any]] = []
    calib = doc.get("meta", {}).get("machine", {}).get("calibration") or {}

    def add(
        name: str,
        goal: str,
        value: float | None,
        ok: bool | None,
        source: str,
        floor: float | None = None,
        factor: float | None = None,
    ) -> None:
        """`floor` (a throughput goal) times `factor` (this machine's speed against the
        anchors' machine, bench/calibrate.py) is the same goal scaled to this machine."""
        scaled = round(floor * factor) if floor and factor else None
        met_scaled = None if scaled is None or value is None else value >= scaled
        out.append(
            {
                "target": name,
                "goal": goal,
                "value": value,
                "met": ok,
                "from": source,
                "scaled_goal": scaled,
                "met_scaled": met_scaled,
            }
        )

    for path in ("api", "spublish"):
        app = _find(rows, scenario="fanout", load="saturate", target="app", path=path)
        ratio = app["ratio_to_raw"] if app else None
        add(
            f"broadcast 1x{subs} vs raw aiohttp (app/{path})",
            ">= 0.85",
            ratio,
            None if ratio is None else ratio >= 0.85,
            f"fanout saturate: app/{path} deliveries/s / best raw Redis path"
            + (f"; app {app['msgs_per_frame']} msgs/frame" if app else ""),
        )
    # The raw peer sends one message per frame; under saturate the app batches. Near one
    # message per frame (the lowest latency load) both keep up, so compare the CPU each
    # spends per delivery: if both were CPU-bound, that is the ratio of their ceilings.
    low = sorted(
        {r["load"] for r in rows if r["load"][1:].isdigit() and r["scenario"] == "fanout"},
        key=lambda x: int(x[1:]),
    )
    app = _find(rows, scenario="fanout", load=low[0], target="app") if low else None
    raw = _find(rows, scenario="fanout", load=low[0], target="raw") if low else None
    v = None
    if app and raw and app["server_cpu_s_per_1M"]:
        v = round(raw["server_cpu_s_per_1M"] / app["server_cpu_s_per_1M"], 2)
    add(
        f"broadcast 1x{subs}, ~1 msg/frame: CPU per delivery, raw / app",
        ">= 0.85",
        v,
        None if v is None else v >= 0.85,
        f"latency {low[0][1:]}% of peak: app {app['msgs_per_frame']} msgs/frame"
        if app
        else "latency stage",
    )
    app = _find(rows, scenario="fanout", load="saturate", target="app", path="api")
    sio = app["ratio_to_sio"] if app else None
    add(
        f"broadcast 1x{subs} vs python-socketio",
        ">= 6",
        sio,
        None if sio is None else sio >= 6,
        "fanout saturate: app/api deliveries/s / sio/redis",
    )
    pers = _find(rows, scenario="personal", load="saturate", target="app", path="spublish")
    v = pers["deliveries_per_s"] if pers else None
    add(
        f"{subs} personal channels x 1 (Redis -> worker -> sockets)",
        ">= 80,000 deliveries/s",
        v,
        None if v is None else v >= 80_000,
        "personal saturate: app/spublish",
        80_000,
        calib.get("factor"),
    )
    b2 = _find(doc.get("batch", []), workers=2, history=True)
    v = b2["ok_per_s"] if b2 else None
    add(
        "/api/batch publishes with history, 2 workers",
        ">= 50,000/s",
        v,
        None if v is None else v >= 50_000,
        "batch stage"
        + (
            f"; {v / calib['hist_add_p16_per_s']:.2f}x redis-benchmark's history-add ceiling"
            if v and calib.get("hist_add_p16_per_s")
            else ""
        ),
        50_000,
        calib.get("vs_anchors", {}).get("hist_add"),
    )
    lat = _find(rows, load="p50", target="app")
    v = lat["latency_ms"]["p99"] if lat else None
    add(
        "p99 publish->deliver at 50% of peak",
        "<= 15 ms",
        v,
        None if v is None else v <= 15,
        f"latency stage: {lat['scenario']} app/{lat['path']}, peak "
        f"{lat.get('peak_deliveries_per_s', 0):,}/s ({lat.get('peak_method', 'saturate')})"
        if lat
        else "latency stage",
    )
    raw = _find(rows, load="p50", target="raw")
    v = raw["latency_ms"]["p99"] if raw else None
    add(
        "  same rate, raw aiohttp peer (reference, not a target)",
        "-",
        v,
        None,
        "latency stage: raw/hiredis at the app's 50% rate",
    )
    idle = [r for r in doc.get("idle", []) if r["target"] == "app"]
    top = max(idle, key=lambda r: r["conns"]) if idle else None
    v = top["kb_per_conn"] if top else None
    add(
        "idle connection with one subscription",
        "<= 16 KB RSS",
        v,
        None if v is None else v <= 16,
        f"idle stage: app worker at {top['conns']:,} connections" if top else "idle stage",
    )
    v = top["connects_per_s"] if top else None
    add(
        "connect + subscribe with JWT, 1 worker",
        ">= 3,000/s",
        v,
        None if v is None else v >= 3000,
        f"idle stage: last ramp step to {top['conns']:,}" if top else "idle stage",
        3000,
        calib.get("factor"),
    )
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    """`scaled` is the goal times this machine's speed against the anchors' machine."""

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "NO")

    head = f"{'target':<60} {'goal':<22} {'measured':>10} {'met':<4} {'scaled':>8} {'met':<4}"
    body = []
    for t in rows:
        v = t["value"]
        shown = "-" if v is None else (f"{v:,.0f}" if v >= 1000 else f"{v:.2f}")
        scaled = t.get("scaled_goal")
        scaled_s = "-" if scaled is None else f"{scaled:,}"
        body.append(
            f"{t['target']:<60} {t['goal']:<22} {shown:>10} {verdict(t['met']):<4}"
            f" {scaled_s:>8} {verdict(t.get('met_scaled')):<4}"
        )
    return _lines(head, body)


def render(doc: dict[str, Any]) -> dict[str, str]:
    """The tables of a result document (`targets` recomputed from its rows)."""
    rows = doc["rows"]
    doc["targets"] = targets(doc, doc["meta"]["options"]["subs"])
    # per-run pairs: the runs when --repeat kept them, else the rows are the runs
    doc["two_workers"] = two_workers((doc.get("runs") or {}).get("rows") or rows)
    doc["batch_two_workers"] = batch_two_workers(
        (doc.get("runs") or {}).get("batch") or doc.get("batch", [])
    )
    fan = [x for x in rows if x["load"] in ("paced", "saturate")]
    lat = [x for x in rows if x["load"] not in ("paced", "saturate")]
    return {
        "fanout": fanout_table(fan) if fan else "",
        "two_workers": two_workers_table(doc["two_workers"]) if doc["two_workers"] else "",
        "peak": peak_table(doc["peak_search"]) if doc.get("peak_search") else "",
        "latency": latency_table(lat) if lat else "",
        "idle": idle_table(doc["idle"]) if doc.get("idle") else "",
        "storm": storm_table(doc["storm"]) if doc.get("storm") else "",
        "batch": batch_table(doc["batch"], doc["batch_two_workers"]) if doc.get("batch") else "",
        "maps": maps_table(doc["maps"]) if doc.get("maps") else "",
        "targets": targets_table(doc["targets"]),
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.report RESULTS.json`: prints the tables of a finished run again."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    ap.add_argument("results", type=Path)
    doc = json.loads(ap.parse_args(argv).results.read_text())
    print("\n\n".join(t for t in render(doc).values() if t))


if __name__ == "__main__":
    main()
