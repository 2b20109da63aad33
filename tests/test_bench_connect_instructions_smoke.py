"""CI smoke of `python -m bench.connect_instructions` in its native mode (no valgrind): its
clients upgrade, connect with a JWT and subscribe through the worker's server on the Redis
engine, every subscribe is answered without an error (the stage fails otherwise) and the JSON
is sane. Nothing about speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_connect_instructions_stage_runs_natively(redis_server_available: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    argv = ["--native", "--connections", "150"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.connect_instructions", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["engine"] == "redis"
    assert result["cpu_us_per_connect"] > 0
