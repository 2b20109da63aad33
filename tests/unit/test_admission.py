"""The connection rate bucket (app/transports/admission.py) across forked processes: one
bucket per node when the master shares it before forking its workers, one per process
otherwise. Real processes (os.fork), as gunicorn's workers are."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CAPACITY = 8
WORKERS = 4
TRIES = 4  # per worker: 16 requests at once against 8 tokens

_SCRIPT = f"""
import os, sys
from app.transports import admission
if sys.argv[1] == "shared":
    admission.share_across_workers()
go_r, go_w = os.pipe()
out_r, out_w = os.pipe()
pids = []
for _ in range({WORKERS}):
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)  # all children start together
        n = sum(admission._bucket.allow({CAPACITY}) for _ in range({TRIES}))
        os.write(out_w, bytes([n]))
        os._exit(0)
    pids.append(pid)
os.write(go_w, b"x" * {WORKERS})
total = sum(os.read(out_r, 1)[0] for _ in range({WORKERS}))
for pid in pids:
    os.waitpid(pid, 0)
print(total)
"""


def _admitted(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        check=True,
    )
    return int(out.stdout)


@pytest.mark.parametrize(("mode", "expected"), [("shared", CAPACITY), ("private", 16)])
def test_workers_share_one_bucket_when_the_master_made_it(mode: str, expected: int) -> None:
    # 16 requests within milliseconds; a token comes back every 1/8 s.
    assert _admitted(mode) == expected
