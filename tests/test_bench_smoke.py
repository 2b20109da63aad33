"""CI smoke of the benchmark: `python -m bench --smoke` completes and writes sane JSON.

It starts its own redis-server, app and peers on free ports and runs every scenario and stage
with 20 clients for half a second each. Nothing here is about speed: the machine may be busy.
The python-socketio peer is part of it only where python-socketio is installed (the `bench`
extra); the test does not need it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.bench_stage import run_stage

HAS_SIO = importlib.util.find_spec("socketio") is not None
PEERS = [("raw", "hiredis"), ("raw", "redispy"), ("raw", "local"), ("app", "spublish")]
if HAS_SIO:
    PEERS.append(("sio", "redis"))

FANOUT_PHASES = {
    (scenario, "paced", target, path)
    for scenario, api in (("fanout", "api"), ("personal", "api-batch"))
    for target, path in [*PEERS, ("app", api)]
}
# The latency stage measures the app's peak first (smoke runs no saturate load otherwise),
# then offers half of it to the app's HTTP API path and to the raw peer.
LATENCY_PHASES = {
    ("fanout", "saturate", "app", "api"),
    ("fanout", "p50", "app", "api"),
    ("fanout", "p50", "raw", "hiredis"),
}


@pytest.mark.timeout(300)
def test_bench_smoke_writes_sane_json(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "bench.json"
    proc = run_stage("bench", "--smoke", "--out", str(out), timeout=280)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    assert doc["meta"]["options"]["smoke"] is True
    assert doc["meta"]["options"]["sio"] is HAS_SIO

    rows = doc["rows"]
    assert {(r["scenario"], r["load"], r["target"], r["path"]) for r in rows} == (
        FANOUT_PHASES | LATENCY_PHASES
    )
    for r in rows:
        where = f"{r['scenario']} {r['load']} {r['target']}/{r['path']}"
        assert r["subs"] == 20, where
        assert r["channels"] == (1 if r["scenario"] == "fanout" else 20), where
        assert r["published"] > 0, where
        # Every publication goes to 20 subscribers (fanout) or one (personal).
        per_pub = 20 if r["scenario"] == "fanout" else 1
        assert r["expected"] == r["published"] * per_pub, where
        assert 0 < r["delivered"] <= r["expected"], where
        assert r["frames"] > 0 and r["msgs_per_frame"] >= 1, where
        assert r["deliveries_per_s"] > 0 and r["window_s"] > 0, where
        assert r["offset_dups"] == 0, where
        assert set(r["cpu_s"]) == {"server", "redis", "loadgen", "publisher"}, where
        assert set(r["cpu_s_per_1M"]) == set(r["cpu_s"]), where
        assert all(v >= 0 for v in r["cpu_s"].values()), where
        if r["load"] != "saturate":  # no raw phase next to the latency stage's peak
            assert r["ratio_to_raw"] is not None and r["ratio_to_raw"] > 0, where
        if HAS_SIO and r["load"] == "paced":
            assert r["ratio_to_sio"] is not None and r["ratio_to_sio"] > 0, where
        assert r["latency_ms"]["samples"] > 0, where
    # The peak is searched by paced steps from a quarter of the saturate drain rate: the
    # highest offered rate that lost nothing, kept p99 <= 100 ms and was written one message
    # per frame.
    drain = next(r for r in rows if r["load"] == "saturate")["deliveries_per_s"]
    search = doc["peak_search"]
    assert 1 <= len(search) <= 2 and [s["step"] for s in search] == list(range(1, len(search) + 1))
    assert search[0]["offered_deliveries_per_s"] == pytest.approx(drain / 4, rel=0.05)
    for s in search:
        single = s["msgs_per_frame"] <= 1.1
        assert s["ok"] == (s["lost"] == 0 and s["latency_ms"]["p99"] <= 100 and single), s
    passed = [s["offered_deliveries_per_s"] for s in search if s["ok"]]
    p50 = [r for r in rows if r["load"] == "p50"]
    assert len(p50) == 2
    for r in p50:  # offered half of the app's peak
        peak = r["peak_deliveries_per_s"]
        assert r["peak_method"] == "single"
        assert peak == max(passed) if passed else 0 < peak < drain / 4
        assert r["offered_pubs_per_s"] == pytest.approx(peak * 0.5 / 20, rel=0.01)

    idle = doc["idle"]
    targets = ["app", "raw", "sio"] if HAS_SIO else ["app", "raw"]
    assert [(r["target"], r["conns"]) for r in idle] == [(t, n) for t in targets for n in (10, 20)]
    for r in idle:
        assert r["rss_mb"] > 0 and r["connects_per_s"] > 0, r
        assert r["server_cpu_ms_per_connect"] >= 0, r

    # Every storm client came back with recovered=true and its channel's 3 publications.
    storm = {r["trigger"]: r for r in doc["storm"]}
    assert set(storm) == {"api", "restart"}
    for trigger, r in storm.items():
        assert r["clients"] == 20 and r["lost"] == 20, trigger
        assert r["recovered"] == 20 and r["not_recovered"] == 0 and r["complete"], trigger
        assert r["pubs_recovered"] == 20 * 3, trigger
        assert 0 < r["first_s"] <= r["all_s"], trigger
    assert storm["api"]["server_cpu_s"] > 0

    (batch,) = doc["batch"]
    assert batch["workers"] == 1 and batch["history"] is True
    assert batch["errors"] == 0 and batch["ok"] == batch["published"] > 0
    assert batch["ok_per_s"] > 0 and len(batch["cpu_s"]["workers"]) == 1

    # Issue 7's targets are all listed; those smoke cannot measure have no value.
    names = [t["target"] for t in doc["targets"]]
    assert len(names) == 10 and len(set(names)) == 10
    by_goal = {t["goal"]: t for t in doc["targets"]}
    assert by_goal["<= 15 ms"]["value"] is not None
    per_frame = next(t for t in doc["targets"] if "msg/frame" in t["target"])
    assert per_frame["value"] is not None and per_frame["value"] > 0
    assert by_goal["<= 16 KB RSS"]["value"] == idle[1]["kb_per_conn"]
    assert by_goal[">= 50,000/s"]["value"] is None  # no 2-worker run in smoke

    # The tables are printed and stored: a header, a rule and one line per row each.
    tables = doc["tables"]
    assert len(tables["fanout"].splitlines()) == 2 + len(FANOUT_PHASES) + 1  # + saturate row
    assert len(tables["latency"].splitlines()) == 2 + 2
    assert len(tables["idle"].splitlines()) == 2 + len(idle)
    assert len(tables["storm"].splitlines()) == 2 + 2
    assert len(tables["targets"].splitlines()) == 2 + 10
    assert len(tables["peak"].splitlines()) == 2 + len(search)
    assert tables["fanout"].splitlines()[0].split()[:3] == ["scenario", "load", "target/path"]
    assert doc["table"] in proc.stdout


def test_profile_summary_shares_of_collapsed_stacks() -> None:
    from bench.profile_summary import parse, summarize

    text = (
        "run (asyncio/base_events.py:607);deliver (app/hub.py:10);enqueue (app/writer.py:5) 30\n"
        "run (asyncio/base_events.py:607);deliver (app/hub.py:12) 10\n"
        "run (asyncio/base_events.py:607);write (asyncio/selector_events.py:1057) 60\n"
    )
    stacks = parse(text)
    assert [n for _, n in stacks] == [30, 10, 60]
    assert stacks[0][0][-1] == ("enqueue", "app/writer.py")
    out = summarize(stacks, top=5).splitlines()
    assert out[0] == "100 samples"
    self_fn = out[out.index("self time by function:") + 1 : out.index("self time by module:")]
    assert self_fn == [
        "   60.0%  write (asyncio/selector_events.py)",
        "   30.0%  enqueue (app/writer.py)",
        "   10.0%  deliver (app/hub.py)",
    ]
    # Inclusive: deliver is on 40% of the stacks; the loop's root frame (100%) is left out.
    incl = out[out.index("inclusive time by function:") + 1 :]
    assert "   40.0%  deliver (app/hub.py)" in incl
    assert not any("run (" in line for line in incl)


def test_summary_takes_the_median_latency_of_the_runs() -> None:
    from bench.report import summarize

    def row(run: int, rate: int, p99: float) -> dict[str, Any]:
        return {
            "scenario": "fanout",
            "load": "p50",
            "target": "app",
            "path": "api",
            "run": run,
            "deliveries_per_s": rate,
            "server_cpu_s_per_1M": 9.0,
            "latency_ms": {"p50": p99 / 2, "p99": p99, "max": p99 + 1, "samples": 10},
        }

    # The run with the median rate (run 3) has the highest p99; the row reports the median.
    (out,) = summarize([row(1, 100, 19.4), row(2, 90, 14.2), row(3, 95, 30.3)])
    assert out["deliveries_per_s"] == 95
    assert out["latency_ms"] == {"p50": 9.7, "p99": 19.4, "max": 20.4, "samples": 30}
    assert out["runs_p99"] == [19.4, 14.2, 30.3]


def test_idle_rows_take_the_connect_rate_of_their_own_median_run() -> None:
    from bench.report import median_rows, overlay_median

    def row(run: int, kb: float, rate: int) -> dict[str, Any]:
        return {
            "target": "app",
            "conns": 10,
            "run": run,
            "kb_per_conn": kb,
            "connects_per_s": rate,
            "server_cpu_ms_per_connect": 1000 / rate,
        }

    runs = [row(1, 6.0, 2600), row(2, 6.5, 1100), row(3, 7.0, 2800)]
    (out,) = median_rows(runs, lambda r: (r["target"],), "kb_per_conn")
    assert out["kb_per_conn"] == 6.5 and out["connects_per_s"] == 1100
    overlay_median(
        [out], runs, lambda r: (r["target"],), "connects_per_s", ("server_cpu_ms_per_connect",)
    )
    assert out["kb_per_conn"] == 6.5  # still the median memory
    assert out["connects_per_s"] == 2600
    assert out["server_cpu_ms_per_connect"] == 1000 / 2600
    assert out["runs_connects_per_s"] == [2600, 1100, 2800]


@pytest.mark.timeout(60)
def test_spread_bench_reports_each_design(tmp_path: Path, redis_server_available: None) -> None:
    """`python -m bench.spread` at a tiny size: both listener designs start, every burst
    connection is held by some worker, and the JSON says each design's shares and rate."""
    out = tmp_path / "spread.json"
    proc = run_stage(
        "bench.spread", "--clients", "20", "--runs", "1", "--out", str(out), timeout=55
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    assert doc["clients"] == 20 and doc["workers"] == 2 and doc["runs"] == 1
    assert set(doc["designs"]) == {"reuseport", "shared"}
    for design, d in doc["designs"].items():
        (shares,) = d["shares_runs"]
        assert len(shares) == 2 and sum(shares) == pytest.approx(1.0), design
        assert shares == sorted(shares, reverse=True), design
        assert d["largest_share_median"] == shares[0], design
        assert d["connects_per_s_median"] > 0, design


@pytest.mark.timeout(60)
def test_delta_bench_rebuilds_every_document(tmp_path: Path) -> None:
    """`python -m bench.delta` at a tiny size: both groups get every publication, the sampled
    delta clients rebuild each document from patches (the bench fails otherwise), and patches
    make a delivery several times smaller than the full ~2 KB document."""
    out = tmp_path / "delta.json"
    argv = ["--subscribers", "10", "--publications", "5"]
    argv += ["--rate", "50", "--runs", "2", "--sample-every", "3", "--out", str(out)]
    proc = run_stage("bench.delta", *argv, timeout=55)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    assert 2000 <= doc["document_bytes"] <= 2100
    assert [(r["run"], r["mode"]) for r in doc["runs"]] == [
        (1, "delta"),
        (1, "plain"),
        (2, "delta"),
        (2, "plain"),
    ]
    for r in doc["runs"]:
        assert r["deliveries"] == 50 and r["sampled_clients"] == 4, r
        assert r["sampled_verified"] == 4 * 5, r  # every document rebuilt byte for byte
        assert r["server_cpu_s"] >= 0, r
    # Only the first publication after subscribe goes in full; every later one is a patch.
    assert [r["sampled_patches"] for r in doc["runs"] if r["mode"] == "delta"] == [4 * 4, 4 * 5]
    summary = doc["summary"]
    assert summary["plain"]["payload_bytes_per_delivery"] > doc["document_bytes"]
    assert summary["ratio"]["payload_bytes_per_delivery"] < 0.5
    assert doc["table"] in proc.stdout
