"""CI smoke of the bench's 2-worker app target (`app2`, issue 23 target 2).

`python -m bench --smoke` keeps its phases; this runs the smaller part that needs a third
server: the personal scenario on the 1-worker app and on the 2-worker app (its own Redis
prefix), both paths, and the batch stage reusing that 2-worker app. Nothing here is about
speed: the machine may be busy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bench_stage import run_stage

PATHS = ("app/spublish", "app2/spublish", "app/api", "app2/api")


@pytest.mark.timeout(150)
def test_two_worker_app_beside_the_one_worker_app(
    tmp_path: Path, redis_server_available: None
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--smoke", "--no-sio", "--out", str(out)]
    argv += ["--scenarios", "personal,batch", "--paths", ",".join(PATHS), "--batch-workers", "1,2"]
    proc = run_stage("bench", *argv, timeout=140)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())

    rows = {(r["target"], r["path"]): r for r in doc["rows"]}
    assert set(rows) == {(t, p) for t in ("app", "app2") for p in ("spublish", "api-batch")}
    for (target, path), r in rows.items():
        where = f"{target}/{path}"
        # Exactly the expected deliveries: app2's publications (its own prefix) reach only
        # its subscribers, not the 1-worker app's, which are connected meanwhile.
        assert r["published"] > 0 and r["delivered"] == r["expected"], where
        workers = 2 if target == "app2" else 1
        assert len(r["worker_cpu_s"]) == workers, where
        # The server's CPU is the gunicorn master's plus every worker's.
        assert r["cpu_s"]["server"] >= sum(r["worker_cpu_s"]) - 0.01, where
        assert r["worker_cpu_s_per_1M"] > 0, where
        # Every worker's clients as /api/info lists them, once all workers are in it.
        assert len(r["spread_pct"]) == workers, where
        assert sum(r["spread_pct"]) == pytest.approx(100, abs=0.2), where
        # One subscriber per channel: its worker alone reads the channel from Redis.
        assert r["redis_subscriptions"] == 20, where

    pairs = {r["path"]: r for r in doc["two_workers"]}
    assert set(pairs) == {"spublish", "api-batch"}
    for path, r in pairs.items():
        assert r["runs"] == 1 and r["server_ratio"] > 0 and r["worker_ratio"] > 0, path
        a, b = rows[("app", path)], rows[("app2", path)]
        assert r["server_ratio"] == round(b["server_cpu_s_per_1M"] / a["server_cpu_s_per_1M"], 3)
        assert r["met"] == (r["server_ratio"] <= 1.10), path
        assert r["spread_pct"] == b["spread_pct"] and len(r["worker_cpu_s"]) == 2, path
    table = doc["tables"]["two_workers"].splitlines()
    assert len(table) == 2 + 2 and table[0].split()[:3] == ["scenario", "load", "path"]

    # The batch stage's 2-worker figure comes from the same app2 (both its workers serve).
    batch = {r["workers"]: r for r in doc["batch"]}
    assert set(batch) == {1, 2}
    assert batch[2]["errors"] == 0 and batch[2]["ok"] > 0
    assert len(batch[2]["cpu_s"]["workers"]) == 2
    ratio = doc["batch_two_workers"]
    want = round(batch[2]["cpu_s_per_1M"]["workers"] / batch[1]["cpu_s_per_1M"]["workers"], 3)
    assert ratio["runs_ratio"] == [want] and ratio["ratio"] == want
    assert doc["tables"]["batch"].splitlines()[-1].startswith("2 workers / 1 worker")
