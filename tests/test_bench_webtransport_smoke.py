"""CI smoke of the WebTransport stage: `python -m bench.webtransport` with 20 clients connects
and subscribes them over WebTransport (aioquic) and WebSocket, delivers every publication of
the fan-out on both and writes sane JSON. Nothing here is about speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bench_stage import run_stage


@pytest.mark.timeout(60)
def test_webtransport_stage_writes_sane_json(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "wt.json"
    argv = ["--subs", "20", "--procs", "1", "--duration", "0.5", "--rate", "2000"]
    proc = run_stage("bench.webtransport", *argv, "--out", str(out), timeout=55)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    doc = json.loads(out.read_text())
    assert [r["transport"] for r in doc["summary"]] == ["websocket", "webtransport"]
    for r in doc["summary"]:
        assert r["connect"]["per_s"] > 0, r
        f = r["fanout"]
        assert f["published"] > 0 and f["publish_errors"] == 0, r
        assert f["lost"] == 0 and f["delivered"] == f["published"] * 20, r
        assert f["gaps"] == 0 and f["closed_by_server"] == 0, r
        assert set(f["cpu_s_per_1m"]) == {"app", "redis", "publisher", "loadgen"}
    assert "deliv/s" in proc.stdout
