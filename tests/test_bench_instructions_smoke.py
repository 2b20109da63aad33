"""CI smoke of `python -m bench.instructions` in its native mode (no valgrind): both shapes
run their batches through the executor, Redis and the hub, every publication reaches its
subscriber (the e2e shape waits for all of them) and the JSON is sane. Nothing about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_instructions_stage_runs_natively(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "instr.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--native", "--iters", "3", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert [r["shape"] for r in results] == ["api", "e2e"]
    assert all(r["cpu_us_per_publication"] > 0 for r in results)
