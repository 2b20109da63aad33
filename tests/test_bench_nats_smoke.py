"""CI smoke of the NATS fan-out stage: `python -m bench.nats_fanout` with 20 clients completes,
delivers everything through both brokers and writes sane JSON. Nothing here is about speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import nats_server
from tests.support.bench_stage import run_stage


@pytest.mark.timeout(180)
def test_nats_fanout_stage_writes_sane_json(tmp_path: Path, redis_server_available: None) -> None:
    nats_server.require()
    out = tmp_path / "nats.json"
    argv = ["--subs", "20", "--duration", "0.5", "--rate-fanout", "2000", "--rate-personal", "400"]
    proc = run_stage("bench.nats_fanout", *argv, "--out", str(out), timeout=170)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    rows = json.loads(out.read_text())["rows"]
    assert {(r["broker"], r["scenario"]) for r in rows} == {
        (b, s) for b in ("redis", "nats") for s in ("1x1000", "1000x1")
    }
    for r in rows:
        assert r["published"] > 0 and r["publish_errors"] == 0, r
        assert r["lost"] == 0 and r["delivered"] > 0, r
        assert set(r["cpu_s_per_1m"]) == {"app", "broker_server", "publisher", "loadgen"}
    assert "deliv/s" in proc.stdout
