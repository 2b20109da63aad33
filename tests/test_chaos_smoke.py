"""The chaos soak (`python -m bench.chaos`): its accounting, and a 2-minute run in CI.

The accounting tests feed hand-made timelines to `bench.chaos.accounting` and check that it
finds what it must (a hole behind a later delivery, a missing tail, a publication delivered
twice, a client stuck on an old epoch) and excuses only what a `recovered=false` reply
announced. The smoke test runs the real soak: 2 gunicorn workers on a redis-server with AOF,
200 centrifuge-python clients on 20 channels, every fault kind at least twice, and requires
0 lost, 0 duplicates and every fault healed. It is light on purpose (5 publications/s; a
few % of a core for the soak and the server) so `pytest -n 2` on 2 cores is not starved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# `bench` is not an installed package: found from the checkout, as `python -m pytest` does
# (plain `pytest` would otherwise fail the whole collection here).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.chaos.accounting import (  # noqa: E402
    Ack,
    ClientResult,
    Event,
    Received,
    Subscribed,
    account_all,
)
from bench.chaos.faults import KINDS  # noqa: E402

CH = "chaos:ch0"


def acks(epoch: str, offsets: range, first_id: int = 0, at: float = 10.0) -> dict[int, Ack]:
    """Publication id first_id+i at offset offsets[i], acknowledged one per second."""
    return {first_id + i: Ack(CH, epoch, o, at + i) for i, o in enumerate(offsets)}


def sub(epoch: str, offset: int, recovered: bool, at: float) -> Subscribed:
    return Subscribed(epoch, offset, recovered, was_recovering=recovered, at=at)


def one(timeline: list[Event], table: dict[int, Ack]) -> ClientResult:
    (res,) = account_all([("c0", CH, timeline)], table)
    return res


def test_live_client_that_got_everything_after_its_start() -> None:
    table = acks("E", range(1, 11))  # ids 0..9 at offsets 1..10
    # Subscribed when the top was 3: ids 3..9 (offsets 4..10) are its due.
    tl: list[Event] = [sub("E", 3, False, 12.5), *(Received(i, i + 1) for i in range(3, 10))]
    res = one(tl, table)
    assert (res.required, res.lost, res.duplicates, res.excused) == (7, [], 0, 0)


def test_hole_behind_a_later_delivery_is_lost_even_across_a_recovered_resubscribe() -> None:
    table = acks("E", range(1, 11))
    tl: list[Event] = [
        sub("E", 0, False, 1.0),
        *(Received(i, i + 1) for i in (0, 1, 2, 4)),  # id 3 (offset 4) never came
        sub("E", 5, True, 15.0),
        *(Received(i, i + 1) for i in range(5, 10)),
    ]
    res = one(tl, table)
    assert res.lost == [3]
    assert res.resubscribes == 1 and res.unrecovered == 0


def test_missing_tail_of_the_last_segment_is_lost() -> None:
    table = acks("E", range(1, 11))
    tl: list[Event] = [sub("E", 0, False, 1.0), *(Received(i, i + 1) for i in range(8))]
    assert one(tl, table).lost == [8, 9]


def test_recovered_false_excuses_only_its_window() -> None:
    table = acks("E", range(1, 21))  # ids 0..19, offsets 1..20
    tl: list[Event] = [
        sub("E", 0, False, 1.0),
        *(Received(i, i + 1) for i in (0, 1, 3, 4)),  # id 2 missing behind id 3: lost
        # Gone for a while; the server could not recover: ids 5..11 are the window.
        sub("E", 12, False, 25.0),
        *(Received(i, i + 1) for i in range(12, 20)),
    ]
    res = one(tl, table)
    assert res.lost == [2]
    assert res.excused == 7
    assert res.unrecovered == 1


def test_a_publication_delivered_twice_is_a_duplicate() -> None:
    table = acks("E", range(1, 6))
    tl: list[Event] = [
        sub("E", 0, False, 1.0),
        *(Received(i, i + 1) for i in range(4)),
        # Resubscribed with recovery and got id 3 again although it had it.
        sub("E", 5, True, 16.0),
        Received(3, 4),
        Received(4, 5),
    ]
    res = one(tl, table)
    assert (res.duplicates, res.lost, res.reordered) == (1, [], 0)


def test_redis_restart_without_persistence() -> None:
    """Epoch A is lost with Redis; epoch B starts. A client told recovered=false in B owes
    nothing of A after its last delivery; one that stays on A misses all of B."""
    table = acks("A", range(1, 6), 0, at=10.0) | acks("B", range(1, 4), 100, at=30.0)
    told: list[Event] = [
        sub("A", 0, False, 1.0),
        *(Received(i, i + 1) for i in range(3)),  # ids 3, 4 died with Redis unseen
        sub("B", 1, False, 31.5),  # id 100 (B offset 1) was before its new start
        Received(101, 2),
        Received(102, 3),
    ]
    stuck: list[Event] = [sub("A", 0, False, 1.0), *(Received(i, i + 1) for i in range(5))]
    told_res, stuck_res = account_all([("t", CH, told), ("s", CH, stuck)], table)
    assert (told_res.lost, told_res.excused) == ([], 3)
    assert stuck_res.lost == [100, 101, 102]


def test_subscribed_before_the_stream_existed() -> None:
    """An empty epoch in the reply: everything of the epoch that appeared later is due."""
    table = acks("E", range(1, 4), at=10.0)
    tl: list[Event] = [sub("", 0, False, 5.0), Received(0, 1), Received(2, 3)]
    assert one(tl, table).lost == [1]


def test_recovered_true_with_another_epoch_is_flagged() -> None:
    table = acks("A", range(1, 3), 0, at=10.0) | acks("B", range(1, 3), 100, at=30.0)
    tl: list[Event] = [
        sub("A", 0, False, 1.0),
        Received(0, 1),
        Received(1, 2),
        sub("B", 2, True, 40.0),
    ]
    res = one(tl, table)
    assert res.recovered_epoch_change == 1
    assert res.lost == [100, 101]


# ------------------------------------------------------------------------------ the soak


@pytest.mark.timeout(200)
def test_chaos_soak_two_minutes(tmp_path: Path, redis_server_available: None) -> None:
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    cmd = [sys.executable, "-m", "bench.chaos", "--minutes", "2", "--rate", "5"]
    cmd += ["--heal-timeout", "20", "--drain-timeout", "15", "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=185)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the soak stop its server and redis-server (own sessions) first.
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=12)
        pytest.fail(f"soak did not finish in 185 s\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"stdout:\n{stdout[-6000:]}\nstderr:\n{stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["failures"] == []
    t = doc["totals"]
    assert (t["clients"], t["channels"]) == (200, 20)
    assert t["lost"] == 0 and t["duplicates"] == 0
    assert t["acknowledged"] == t["published"] > 0 and t["gave_up"] == 0
    assert t["delivered"] >= t["required"] > 0
    assert len(doc["clients"]) == 200
    assert all(c["lost"] == 0 and c["duplicates"] == 0 for c in doc["clients"])
    # Every fault kind ran at least twice and each time the system healed.
    assert all(doc["fault_counts"].get(k, 0) >= 2 for k in KINDS), doc["fault_counts"]
    assert all(f["healed"] and f["heal_s"] is not None for f in doc["faults"])
    # Each worker SIGKILL was a restart; the master stayed up through Redis outages.
    kills = doc["fault_counts"]["worker-kill"] + doc["fault_counts"]["worker-kill-redis-down"]
    assert t["worker_restarts"] == kills
    assert t["redis_restarts"] == (
        doc["fault_counts"]["redis-kill"] + doc["fault_counts"]["worker-kill-redis-down"]
    )
    res = doc["resources"]
    assert res["server_peak_rss_mb"]["worker_max"] > 0 and res["cpu_s"]["server"] > 0
    assert "== faults ==" in stdout and "RESULT" in stdout
