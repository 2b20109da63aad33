"""CI smoke of `python -m bench.read_instructions` in its native mode (no valgrind), metrics
off and on: the fed messages reach every subscriber (the child checks the delivery count)
and the JSON is sane. Nothing about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("metrics", [False, True])
def test_read_path_stage_runs_natively(metrics: bool, redis_server_available: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    cmd = [sys.executable, "-m", "bench.read_instructions", "--native"]
    proc = subprocess.run(
        cmd + (["--metrics"] if metrics else []),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["shape"] == "read" and result["metrics"] is metrics
    assert result["cpu_us_per_publication"] > 0
