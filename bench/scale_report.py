"""Tables and the 100k-per-node projection of `python -m bench.scale` (bench/scale.py).

`medians(runs)`: one row per (workers, shape, connections), every number the median over the
runs (nested `broadcast` and `paced` figures too); `runs_kb_per_conn` and
`runs_connects_per_s_per_worker` keep each run's. `markdown(rows)`: the README table.
`project(rows)`: 100k connections per node from the measured slopes, and what limits it.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

FD_LIMIT = 20_000  # open files per process on this box (hard limit)
NODE_CONNS = 100_000


def log_line(row: dict[str, Any]) -> str:
    text = (
        f"{row['workers']}w {row['shape']} {row['conns']:,}: {row['kb_per_conn']} KB/conn, "
        f"{row['connects_per_s_per_worker']:,} connect+sub/s per worker, "
        f"per worker {row['per_worker']}, idle {row['idle_worker_cpu_pct']} % CPU"
    )
    b = row.get("broadcast")
    if b:
        text += f", 1xN first->last {b['first_to_last_ms']} ms, pub->last {b['publish_to_last_ms']}"
    for path, p in row["paced"].items():
        text += f", {path} {p['worker_cpu_s_per_1m']} wrk s/1M (lost {p['lost']})"
    return text


def _median(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {k: _median([v[k] for v in values]) for k in values[0]}
    if isinstance(values[0], bool) or not isinstance(values[0], int | float):
        return values[len(values) // 2]
    m = statistics.median(values)
    return round(m, 3) if isinstance(m, float) else m


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["workers"], r["shape"], r["conns"]), []).append(r)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1] != "personal", k[2])):
        group = groups[key]
        row = {
            k: _median([g[k] for g in group]) for k in group[0] if k not in ("run", "per_worker")
        }
        # The spread shown is the run with the median largest share (a list has no median).
        by_share = sorted(group, key=lambda g: g["largest_share"])
        row["per_worker"] = by_share[len(by_share) // 2]["per_worker"]
        row["runs"] = len(group)
        row["runs_kb_per_conn"] = [g["kb_per_conn"] for g in group]
        row["runs_connects_per_s_per_worker"] = [g["connects_per_s_per_worker"] for g in group]
        row["lost"] = sum(
            sum(p["lost"] for p in g["paced"].values()) + g.get("broadcast", {}).get("lost", 0)
            for g in group
        )
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    paths = list(rows[0]["paced"]) if rows else []
    head = (
        "| workers | shape | connections | per worker | KB/conn | connect+sub/s per worker "
        "| worker CPU ms per connect | worker busy % in the burst | idle worker CPU % | paced deliveries/s | "
        + "".join(f"worker CPU s / 1M deliveries, {p} | " for p in paths)
        + "1×N publish→first ms | 1×N first→last ms | 1×N publish→last ms "
        "| worker CPU ms per 1×N |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        b = r.get("broadcast") or {}
        paced = r["paced"]
        spread = " / ".join(f"{n:,}" for n in r["per_worker"])
        shape = "1 × N" if r["shape"] == "broadcast" else "N × 1"
        cells = [
            r["workers"],
            f"{r['shape']} ({shape})",
            f"{r['conns']:,}",
            spread,
            r["kb_per_conn"],
            f"{r['connects_per_s_per_worker']:,}",
            r["worker_cpu_ms_per_connect"],
            r["worker_busy_pct"],
            r["idle_worker_cpu_pct"],
            f"{paced[paths[0]]['offered_deliveries_per_s']:,}",
            *(paced[p]["worker_cpu_s_per_1m"] for p in paths),
            b.get("publish_to_first_ms", "–"),
            b.get("first_to_last_ms", "–"),
            b.get("publish_to_last_ms", "–"),
            b.get("worker_cpu_ms", "–"),
        ]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines)


def _slope_kb(rows: list[dict[str, Any]]) -> float | None:
    """Least-squares KB of worker RSS per added connection over the steps of one ramp."""
    pts = [(r["conns"], r["rss_kb"]) for r in rows]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def project(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """100k connections per node from the one-worker ramps (the last step is the measured
    per-worker figure; the RSS slope is fitted over the steps)."""
    one = [r for r in rows if r["workers"] == 1]
    if not one:
        return {}
    out: dict[str, Any] = {"connections": NODE_CONNS, "fd_limit_per_process": FD_LIMIT}
    cap = max(r["conns_per_worker"] for r in one)
    # fds: each connection is one socket; keep ~5 % for Redis, listeners, logs.
    per_worker = min(cap, int(FD_LIMIT * 0.95))
    workers = math.ceil(NODE_CONNS / per_worker)
    cores = os.cpu_count() or 1
    out |= {"conns_per_worker": per_worker, "workers_needed": workers, "cores_here": cores}
    for shape in ("personal", "broadcast"):
        ramp = sorted((r for r in one if r["shape"] == shape), key=lambda r: r["conns"])
        if not ramp:
            continue
        last = ramp[-1]
        slope = _slope_kb(ramp)
        kb = slope if slope is not None else last["kb_per_conn"]
        fresh_mb = last["rss_fresh_mb"]
        mem_gb = (workers * fresh_mb * 1024 + NODE_CONNS * kb) / 2**20
        idle_core = last["idle_worker_cpu_pct"] / 100 / last["conns"] * NODE_CONNS
        connect_ms = last["worker_cpu_ms_per_connect"]
        p: dict[str, Any] = {
            "rss_slope_kb_per_conn": round(kb, 2),
            "rss_fresh_worker_mb": fresh_mb,
            "memory_gb": round(mem_gb, 2),
            "idle_cores": round(idle_core, 3),
            "connect_cpu_s": round(NODE_CONNS * connect_ms / 1e3, 1),
            "reconnect_all_s": round(NODE_CONNS * connect_ms / 1e3 / min(workers, cores), 1),
            "worker_us_per_delivery": {
                path: p["worker_cpu_s_per_1m"] for path, p in last["paced"].items()
            },
        }
        b = last.get("broadcast")
        if b:
            us = b["worker_cpu_ms"] * 1e3 / last["conns"]
            p |= {
                "broadcast_us_per_delivery": round(us, 2),
                "broadcast_cpu_ms": round(us * NODE_CONNS / 1e3, 1),
                "loop_blocked_ms_per_worker": round(us * per_worker / 1e3, 1),
                "broadcast_min_ms_on_cores": round(us * NODE_CONNS / 1e3 / cores, 1),
                "measured_first_to_last_ms": b["first_to_last_ms"],
                "measured_conns": last["conns"],
            }
        out[shape] = p
    return out


def projection_text(p: dict[str, Any]) -> str:
    if not p:
        return "(no one-worker rows: no projection)"
    n, w = p["connections"], p["workers_needed"]
    lines = [
        f"Projection to {n:,} connections per node (one subscription each):",
        f"- fds: {p['fd_limit_per_process']:,} open files per process -> at most "
        f"{p['conns_per_worker']:,} connections per worker -> {w} workers.",
    ]
    for shape in ("personal", "broadcast"):
        s = p.get(shape)
        if not s:
            continue
        lines.append(
            f"- {shape}: memory {s['memory_gb']} GB ({s['rss_slope_kb_per_conn']} KB/conn slope "
            f"+ {w} x {s['rss_fresh_worker_mb']} MB fresh workers); pings "
            f"{s['idle_cores']} cores idle; reconnecting all costs {s['connect_cpu_s']} CPU s "
            f"(~{s['reconnect_all_s']} s on {min(w, p['cores_here'])} cores); "
            f"worker CPU per paced delivery (us) {s['worker_us_per_delivery']}."
        )
        if "broadcast_us_per_delivery" in s:
            lines.append(
                f"- a 1 x {n:,} broadcast: {s['broadcast_us_per_delivery']} us per delivery -> "
                f"{s['broadcast_cpu_ms']} ms of CPU, each worker's loop blocked "
                f"~{s['loop_blocked_ms_per_worker']} ms ({p['conns_per_worker']:,} connections), "
                f">= {s['broadcast_min_ms_on_cores']} ms first->last on {p['cores_here']} cores "
                f"(measured at {s['measured_conns']:,}: {s['measured_first_to_last_ms']} ms)."
            )
    return "\n".join(lines)
