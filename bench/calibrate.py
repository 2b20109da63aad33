"""How fast is this machine, against the one issue 7's targets were set on?

The absolute targets (80k personal deliveries/s, 50k batch publishes/s, 3k connects/s)
come from ceilings measured on a 2-vCPU AMD EPYC (research/perf-anchors.md §3). Runs land on
other 2-core VMs too, several times slower at the same work. Before the servers get busy,
`redis-benchmark` measures two of those ceilings again on this run's Redis: bare
pipelined commands and the anchors' own history-add stand-in script (Appendix A,
`hist_add.lua`), both with `-c 50 -P 16` as there. Their ratio to the anchors' figures
scales each throughput goal to this machine.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from typing import Any

# perf-anchors §3.1, medians of 3 (requests/s, -c 50 -P 16).
ANCHOR_PING = 1_691_094
ANCHOR_HIST_ADD = 160_514

# The anchors' stand-in "publish with history" script (perf-anchors Appendix A).
HIST_ADD = """
local off = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[3])
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], '*', 'o', off, 'd', ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
redis.call('publish', ARGV[4], ARGV[1])
return off
"""
PAYLOAD = "d" * 100


def _rps(port: int, n: int, *command: str) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(n), "-P", "16", "--csv"]
        + list(command),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    # CSV: a header, then `"<test>","<rps>",...`
    last = [line for line in out.splitlines() if line.strip()][-1]
    return float(last.split('","')[1].strip('"'))


def calibrate(port: int, smoke: bool = False) -> dict[str, Any]:
    """Measures the ceilings on Redis at `port`; {} without redis-benchmark/redis-cli."""
    if shutil.which("redis-benchmark") is None or shutil.which("redis-cli") is None:
        return {}
    sha = subprocess.run(
        ["redis-cli", "-p", str(port), "SCRIPT", "LOAD", HIST_ADD],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    scale = 10 if smoke else 1
    ping = _rps(port, 1_000_000 // scale, "PING")
    hist = _rps(
        port,
        200_000 // scale,
        "-r", "1000",
        "EVALSHA", sha, "2", "calib:st:__rand_int__", "calib:m:__rand_int__",
        PAYLOAD, "100", "300", "calib:ch",
    )  # fmt: skip
    subprocess.run(
        ["redis-cli", "-p", str(port), "EVAL",
         "for _, k in ipairs(redis.call('keys', 'calib:*')) do redis.call('del', k) end",
         "0"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    vs_ping = ping / ANCHOR_PING
    vs_hist = hist / ANCHOR_HIST_ADD
    return {
        "ping_p16_per_s": round(ping),
        "hist_add_p16_per_s": round(hist),
        "vs_anchors": {"ping": round(vs_ping, 3), "hist_add": round(vs_hist, 3)},
        # One figure for "this machine vs the anchors'": the geometric mean of both.
        "factor": round(math.sqrt(vs_ping * vs_hist), 3),
    }
