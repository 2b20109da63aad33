"""`python -m bench.consumers` at a tiny size: both stages drain what they wrote (the
outbox empty, the stream without lag or pending entries) and report a rate; the figures
themselves are the bench's business."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import postgres
from tests.support.bench_stage import run_stage


def test_consumers_bench_drains_outbox_and_stream(
    tmp_path: Path, redis_server_available: None
) -> None:
    postgres.require()
    out = tmp_path / "consumers.json"
    done = run_stage("bench.consumers", "--commands", "300", "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    for name in ("postgresql", "redis_stream"):
        assert stages[name]["commands"] == 300
        assert stages[name]["commands_per_s"] > 0
