"""Hypothesis profiles for the fuzz tests (loaded by this folder's conftest).

In the suite ("ci", the default) every run draws the same examples (`derandomize=True`, no
example database), so a fuzz test cannot flake: it fails on every run or on none.
`FUZZ_EXAMPLES=5000` runs the same properties longer and with a random draw (pytest's
`--hypothesis-seed=N` replays one):

    FUZZ_EXAMPLES=5000 python -m pytest tests/fuzz -q -p no:cacheprovider --timeout 0
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, suppress_health_check=_SLOW_OK
)
settings.register_profile("long", database=None, deadline=None, suppress_health_check=_SLOW_OK)
LONG = bool(os.environ.get("FUZZ_EXAMPLES"))
settings.load_profile("long" if LONG else "ci")


def examples(ci: int) -> int:
    """How many examples a property runs: `ci` in the suite, FUZZ_EXAMPLES when set."""
    return int(os.environ.get("FUZZ_EXAMPLES") or ci)
