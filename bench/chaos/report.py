"""The soak's report: a JSON document and the tables printed from it, and the verdict.

The verdict fails on any lost or duplicated publication, on a fault the system did not heal
from within the bound, on a fatal end (the master exited, the start-up failed), and, with
Redis on AOF, on a resubscribe answered `recovered=false` (nothing was lost in Redis, so the
server had everything it needed to recover).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.chaos.accounting import ClientResult
from bench.chaos.clients import SdkErrors

if TYPE_CHECKING:
    from bench.chaos.run import FaultRow, Soak

_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[chaos {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def heal_line(row: FaultRow) -> str:
    if row.healed:
        return f"         healed in {row.heal_s:.2f}s ({row.resubscribes} resubscribes)"
    return f"         NOT HEALED: {row.waiting_for}"


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def build(
    soak: Soak,
    results: list[ClientResult],
    *,
    drain_s: float,
    wall_s: float,
    soak_cpu_s: float,
    soak_peak_rss: int,
    app_log: str,
    sdk_errors: SdkErrors,
    error: str,
) -> dict[str, Any]:
    opts = soak.opts
    pub = soak.publisher
    usage = soak.usage
    workers = sorted(soak.workers_seen)
    redis_pids = soak.redis.pids
    master = soak.app.proc.pid if soak.app.proc is not None else 0

    def cpu(pids: list[int]) -> float:
        return round(sum(usage.last[p].cpu_s for p in pids if p in usage.last), 2)

    def hwm(pids: list[int]) -> int:
        return max((usage.last[p].hwm for p in pids if p in usage.last), default=0)

    faults: list[dict[str, Any]] = [
        {
            "at_s": round(r.at_s, 1),
            "kind": r.fault.kind,
            "down_s": round(r.fault.down_s, 2),
            "healed": r.healed,
            "heal_s": None if r.heal_s is None else round(r.heal_s, 2),
            "waiting_for": r.waiting_for,
            "resubscribes": r.resubscribes,
            "detail": r.fault.detail,
            "info": r.fault.info,
        }
        for r in soak.rows
    ]
    clients: list[dict[str, Any]] = [
        {
            "name": r.name,
            "channel": r.channel,
            "received": r.received,
            "required": r.required,
            "lost": len(r.lost),
            "lost_ids": r.lost[:20],
            "duplicates": r.duplicates,
            "excused": r.excused,
            "resubscribes": r.resubscribes,
            "unrecovered": r.unrecovered,
            "reordered": r.reordered,
            "unknown": r.unknown,
            "recovered_epoch_change": r.recovered_epoch_change,
        }
        for r in results
    ]
    corrupted = sum(s.corrupted for s in soak.subs)
    example = next((s.corrupted_example for s in soak.subs if s.corrupted), "")
    lost = sum(c["lost"] for c in clients)
    dups = sum(c["duplicates"] for c in clients)
    unrecovered = sum(c["unrecovered"] for c in clients)
    unhealed = [f for f in faults if not f["healed"]]
    failures = []
    if error:
        failures.append(f"run error: {error}")
    if soak.fatal:
        failures.append(soak.fatal)
    if not error and not soak.fatal and not results:
        failures.append("no accounting")
    if lost:
        failures.append(f"{lost} publications lost")
    if dups:
        failures.append(f"{dups} publications delivered twice")
    if corrupted:
        failures.append(f"{corrupted} deliveries with data not as published, e.g. {example}")
    if unhealed:
        failures += [
            f"{f['kind']} at {f['at_s']}s not healed: {f['waiting_for']}" for f in unhealed
        ]
    if opts.aof and unrecovered:
        failures.append(f"{unrecovered} resubscribes answered recovered=false although Redis kept")
    kinds = Counter(f["kind"] for f in faults)
    doc: dict[str, Any] = {
        "options": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
        "ok": not failures,
        "failures": failures,
        "wall_s": round(wall_s, 1),
        "faults": faults,
        "fault_counts": dict(kinds),
        "clients": clients,
        "totals": {
            "clients": len(soak.subs),
            "channels": len(soak.channels),
            "published": pub.published if pub else 0,
            "acknowledged": len(pub.acks) if pub else 0,
            "gave_up": len(pub.gave_up) if pub else 0,
            "publish_attempts": pub.attempts if pub else 0,
            "publish_errors": dict(pub.errors) if pub else {},
            "delivered": sum(c["received"] for c in clients),
            "required": sum(c["required"] for c in clients),
            "lost": lost,
            "duplicates": dups,
            "excused": sum(c["excused"] for c in clients),
            "resubscribes": sum(c["resubscribes"] for c in clients),
            "unrecovered_resubscribes": unrecovered,
            "reordered": sum(c["reordered"] for c in clients),
            "corrupted": corrupted,
            "drain_s": round(drain_s, 1),
            "worker_restarts": len(set(workers) - soak.initial_workers),
            "redis_restarts": max(len(redis_pids) - 1, 0),
            "app_log_tracebacks": app_log.count("Traceback"),
            "app_log_errors": app_log.count('"level":"error"'),
            "sdk_log_errors": sdk_errors.count,
            "sdk_log_errors_first": sdk_errors.first,
        },
        "resources": {
            "server_peak_rss_mb": {
                "master": _mb(hwm([master])),
                "worker_max": _mb(hwm(workers)),
                "all_processes_sampled_max": _mb(usage.server_total_peak),
            },
            "redis_peak_rss_mb": _mb(hwm(redis_pids)),
            "soak_peak_rss_mb": _mb(soak_peak_rss),
            "cpu_s": {
                "server": cpu([master, *workers]),
                "redis": cpu(redis_pids),
                "soak": round(soak_cpu_s, 2),
            },
        },
    }
    doc["tables"] = render(doc)
    return doc


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[("-" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    res = doc["resources"]
    wall = doc["wall_s"] or 1.0
    out = []
    out.append("== faults ==")
    out.append(
        _table(
            ["#", "at_s", "fault", "down_s", "heal_s", "resubs", "detail / still missing"],
            [
                [
                    i + 1,
                    f["at_s"],
                    f["kind"],
                    f["down_s"],
                    f["heal_s"] if f["healed"] else "NOT HEALED",
                    f["resubscribes"],
                    f["detail"] if f["healed"] else f"{f['detail']} | {f['waiting_for']}",
                ]
                for i, f in enumerate(doc["faults"])
            ],
        )
    )
    heal = [f["heal_s"] for f in doc["faults"] if f["healed"]]
    by_kind: dict[str, list[float]] = {}
    for f in doc["faults"]:
        if f["healed"]:
            by_kind.setdefault(f["kind"], []).append(f["heal_s"])
    out.append("\n== time to heal by fault (s) ==")
    out.append(
        _table(
            ["fault", "count", "healed", "median", "max"],
            [
                [
                    k,
                    n,
                    len(by_kind.get(k, [])),
                    _median(by_kind.get(k, [])),
                    max(by_kind.get(k, []), default=None),
                ]
                for k, n in doc["fault_counts"].items()
            ],
        )
    )
    out.append("\n== per client (only those with anything to report) ==")
    bad = [
        c
        for c in doc["clients"]
        if c["lost"] or c["duplicates"] or c["reordered"] or c["recovered_epoch_change"]
    ]
    if not doc["clients"]:
        out.append("no accounting: the run ended before the drain")
    elif bad:
        out.append(
            _table(
                [
                    "client",
                    "channel",
                    "recv",
                    "required",
                    "lost",
                    "dups",
                    "reord",
                    "unrec",
                    "lost ids",
                ],
                [
                    [
                        c["name"],
                        c["channel"],
                        c["received"],
                        c["required"],
                        c["lost"],
                        c["duplicates"],
                        c["reordered"],
                        c["unrecovered"],
                        c["lost_ids"],
                    ]
                    for c in bad
                ],
            )
        )
    else:
        n = len(doc["clients"])
        out.append(f"all {n} clients: 0 lost, 0 duplicates, 0 reordered")
    out.append("\n== per channel ==")
    per_ch: dict[str, Counter[str]] = {}
    for c in doc["clients"]:
        agg = per_ch.setdefault(c["channel"], Counter())
        agg["clients"] += 1
        for k in (
            "received",
            "required",
            "lost",
            "duplicates",
            "excused",
            "resubscribes",
            "unrecovered",
        ):
            agg[k] += c[k]
    out.append(
        _table(
            [
                "channel",
                "clients",
                "required",
                "received",
                "lost",
                "dups",
                "excused",
                "resubs",
                "unrec",
            ],
            [
                [
                    ch,
                    a["clients"],
                    a["required"],
                    a["received"],
                    a["lost"],
                    a["duplicates"],
                    a["excused"],
                    a["resubscribes"],
                    a["unrecovered"],
                ]
                for ch, a in sorted(per_ch.items(), key=lambda kv: int(kv[0].rsplit("ch", 1)[-1]))
            ],
        )
    )
    out.append("\n== summary ==")
    cpu = res["cpu_s"]
    rss = res["server_peak_rss_mb"]
    rows = [
        ["clients / channels", f"{t['clients']} / {t['channels']}"],
        [
            "publications acked / published",
            f"{t['acknowledged']} / {t['published']} (gave up {t['gave_up']})",
        ],
        ["publish attempts / errors", f"{t['publish_attempts']} / {t['publish_errors']}"],
        ["deliveries required / received", f"{t['required']} / {t['delivered']}"],
        ["LOST", t["lost"]],
        ["DUPLICATES", t["duplicates"]],
        ["excused (recovered=false windows)", t["excused"]],
        [
            "resubscribes (recovered=false)",
            f"{t['resubscribes']} ({t['unrecovered_resubscribes']})",
        ],
        ["reordered deliveries", t["reordered"]],
        ["deliveries with data not byte-exact", t["corrupted"]],
        ["faults injected / healed", f"{len(doc['faults'])} / {len(heal)}"],
        ["heal time median / max (s)", f"{_median(heal)} / {max(heal, default=None)}"],
        ["worker restarts / Redis restarts", f"{t['worker_restarts']} / {t['redis_restarts']}"],
        [
            "peak RSS MB: master / worker max / server total",
            f"{rss['master']} / {rss['worker_max']} / {rss['all_processes_sampled_max']}",
        ],
        ["peak RSS MB: redis / soak", f"{res['redis_peak_rss_mb']} / {res['soak_peak_rss_mb']}"],
        ["CPU s: server / redis / soak", f"{cpu['server']} / {cpu['redis']} / {cpu['soak']}"],
        [
            "CPU % of a core: server / soak",
            f"{100 * cpu['server'] / wall:.0f} / {100 * cpu['soak'] / wall:.0f}",
        ],
        [
            "app log tracebacks / error lines; SDK errors",
            f"{t['app_log_tracebacks']} / {t['app_log_errors']}; {t['sdk_log_errors']}",
        ],
        ["drain / wall (s)", f"{t['drain_s']} / {doc['wall_s']}"],
        ["RESULT", "PASS" if doc["ok"] else "FAIL"],
    ]
    out.append(_table(["", ""], rows))
    for f in doc["failures"]:
        out.append(f"FAIL: {f}")
    return "\n".join(out)


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return round(s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2, 2)
