"""CI smoke of `python -m bench.connect_instructions` in its native mode (no valgrind): its
clients upgrade, connect with a JWT and subscribe through the worker's server on the Redis
engine, every subscribe is answered without an error (the stage fails otherwise) and the JSON
is sane. Nothing about speed."""

from __future__ import annotations

import json

import pytest

from tests.support.bench_stage import run_stage


@pytest.mark.timeout(120)
def test_connect_instructions_stage_runs_natively(redis_server_available: None) -> None:
    argv = ["--native", "--connections", "150"]
    proc = run_stage("bench.connect_instructions", *argv, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["engine"] == "redis"
    assert result["cpu_us_per_connect"] > 0
