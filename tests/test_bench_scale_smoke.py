"""CI smoke of the scale stage: `python -m bench.scale`, tiny (150 connections per worker, one
and two workers, both shapes, clients from two source addresses, one run) completes, every
connection subscribed and got what was published to it, and the JSON has its shape. Nothing
here is about speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bench_stage import run_stage


@pytest.mark.timeout(120)
def test_scale_stage_writes_sane_json(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "scale.json"
    argv = ["--steps", "150", "--workers", "1,2", "--repeat", "1", "--sources", "2"]
    argv += ["--paths", "spublish", "--duration", "0.3", "--settle", "0.1"]
    argv += ["--idle-window", "0.1", "--broadcasts", "1", "--rate-personal", "3000"]
    argv += ["--rate-broadcast", "3000"]
    proc = run_stage("bench.scale", *argv, "--out", str(out), timeout=110)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    meta = doc["meta"]
    assert meta["sources"] == ["127.0.0.2", "127.0.0.3"]
    assert len(meta["loadavg_at_start"]) == 3 and len(meta["loadavg_at_end"]) == 3
    rows = doc["rows"]
    assert [(r["workers"], r["shape"], r["conns"]) for r in rows] == [
        (1, "personal", 150),
        (1, "broadcast", 150),
        (2, "personal", 300),
        (2, "broadcast", 300),
    ]
    for r in rows:
        # Every client got its subscribe reply, and the workers hold every connection.
        assert r["subscribed"] == r["conns"], r
        assert sum(r["per_worker"]) == r["conns"] and len(r["per_worker"]) == r["workers"], r
        assert r["kb_per_conn"] > 0 and r["connects_per_s_per_worker"] > 0, r
        paced = r["paced"]["spublish"]
        assert paced["published"] > 0 and paced["publish_errors"] == 0, r
        assert paced["lost"] == 0 and paced["delivered"] > 0, r
        if r["shape"] == "personal":
            # Publication s goes to channel s % conns: every subscription had one to deliver.
            assert paced["published"] >= r["conns"], r
        assert paced["worker_cpu_s_per_1m"] > 0, r
        if r["shape"] == "broadcast":
            b = r["broadcast"]
            assert b["lost"] == 0, r
            assert 0 < b["publish_to_first_ms"] <= b["publish_to_last_ms"], r
    assert len(doc["runs"]) == 4
    proj = doc["projection"]
    assert proj["workers_needed"] >= 1 and proj["personal"]["memory_gb"] > 0
    assert "broadcast_us_per_delivery" in proj["broadcast"]
    assert doc["table"].startswith("| workers | shape |")
    assert "Projection to 100,000 connections" in proc.stdout
