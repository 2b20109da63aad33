"""A bench stage run as its smoke tests run one: `python -m <module> <argv>` from the
repository root, with no CENTRIFUGO_* from the caller's shell, output captured as text. A run
past `timeout` fails the test with the tail of the stage's log (bench/runner.py `log` lines
say which phase it was in) instead of a TimeoutExpired that shows none of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_stage(module: str, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CENTRIFUGO_")}
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *argv],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        log = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        pytest.fail(f"{module} ran past {timeout:g} s; its log:\n{(log or '')[-5000:]}")
