"""`python -m bench.consumer_jetstream` at a tiny size: the stream is drained by the consumer
and a row with a rate comes out (the figures themselves are the bench's business)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import nats_server
from tests.support.bench_stage import run_stage


def test_jetstream_consumer_bench_drains_the_stream(
    tmp_path: Path, redis_server_available: None
) -> None:
    nats_server.require()
    out = tmp_path / "js.json"
    argv = ["--messages", "2000", "--workers", "1", "--max-ack-pending", "100", "--out", str(out)]
    done = run_stage("bench.consumer_jetstream", *argv, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert (row["workers"], row["max_ack_pending"]) == (1, 100)
    assert 0 < row["commands"] <= 2000 and row["commands_per_s"] > 0
    assert "| 1 | 100 |" in done.stdout
