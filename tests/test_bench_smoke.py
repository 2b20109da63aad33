"""CI smoke of the benchmark: `python -m bench --smoke` completes and writes sane JSON.

It starts its own redis-server, app and raw peer on free ports and runs every scenario and
path with 20 clients for a second each. Nothing here is about speed: the machine may be busy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

EXPECTED_PHASES = {
    (scenario, target, path)
    for scenario, api in (("fanout", "api"), ("personal", "api-batch"))
    for target, path in (
        ("raw", "hiredis"),
        ("raw", "redispy"),
        ("raw", "local"),
        ("app", "spublish"),
        ("app", api),
    )
}


@pytest.fixture
def redis_server_available() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")


@pytest.mark.timeout(300)
def test_bench_smoke_writes_sane_json(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"

    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert {(r["scenario"], r["target"], r["path"]) for r in rows} == EXPECTED_PHASES
    assert {r["load"] for r in rows} == {"paced"}
    for r in rows:
        where = f"{r['scenario']} {r['target']}/{r['path']}"
        assert r["subs"] == 20, where
        assert r["channels"] == (1 if r["scenario"] == "fanout" else 20), where
        assert r["published"] > 0, where
        # Every publication goes to 20 subscribers (fanout) or one (personal).
        per_pub = 20 if r["scenario"] == "fanout" else 1
        assert r["expected"] == r["published"] * per_pub, where
        assert 0 < r["delivered"] <= r["expected"], where
        assert r["frames"] > 0 and r["msgs_per_frame"] >= 1, where
        assert r["deliveries_per_s"] > 0 and r["window_s"] > 0, where
        assert r["offset_dups"] == 0, where
        assert set(r["cpu_s"]) == {"server", "redis", "loadgen", "publisher"}, where
        assert all(v >= 0 for v in r["cpu_s"].values()), where
        assert r["ratio_to_raw"] is not None and r["ratio_to_raw"] > 0, where
        assert r["latency_ms"]["samples"] > 0, where
    assert doc["meta"]["options"]["smoke"] is True
    # The table is printed and stored: a header plus one line per row.
    assert doc["table"].splitlines()[0].split()[:3] == ["scenario", "load", "target/path"]
    assert len(doc["table"].splitlines()) == len(rows) + 2
    assert doc["table"] in proc.stdout
