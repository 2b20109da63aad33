"""CI smoke of `python -m bench.instructions` in its native mode (no valgrind): both shapes
run their batches through the executor, Redis and the hub, every publication reaches its
subscriber (the e2e shape waits for all of them) and the JSON is sane. Nothing about speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bench_stage import run_stage


@pytest.mark.timeout(120)
def test_instructions_stage_runs_natively(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "instr.json"
    proc = run_stage(
        "bench.instructions", "--native", "--iters", "3", "--out", str(out), timeout=110
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert [r["shape"] for r in results] == ["api", "e2e"]
    assert all(r["cpu_us_per_publication"] > 0 for r in results)
