r"""channel_regex cost: RE2 (app/goregex.py) against Python's backtracking `re`, one run.

    python -m bench.regex [--lengths 16,24,28,1000,10000] [--budget 1.0]

For each pattern and channel length, the CPU time of one unanchored search (Go's
MatchString) of the channel part after `ns:`, through app/goregex.py (RE2, what the server
runs) and through `re` (what it ran before issue 15). Texts are the worst case for
backtracking: `^(a+)+$` gets n-1 `a`s and a `!`, the other patterns a channel that
matches except for its last character. Fast searches are repeated until they add up to
50 ms and averaged. `re` is skipped at a length where the growth measured so far predicts
more than --budget seconds for one search (exponential patterns: 28 characters would take
about 8 s when 24 take 0.5 s), so the run ends in seconds.

Prints a table: pattern, length, RE2 µs per search, re µs per search, re / RE2.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

from app.goregex import compile_go_regexp

# (pattern, a text of length n that fails on its last character)
PATTERNS: list[tuple[str, Callable[[int], str]]] = [
    (r"^(a+)+$", lambda n: "a" * (n - 1) + "!"),
    # Realistic: an id-like channel, and a user channel with an optional sub-topic.
    (r"^[a-z0-9_-]+$", lambda n: "a" * (n - 1) + "!"),
    (r"^user_[0-9]+(\.[a-z]+)*$", lambda n: "user_" + "1" * max(n - 6, 0) + "!"),
]

REPEAT_FOR = 0.05  # seconds of CPU a fast search is repeated for


def per_search(search: Callable[[str], object], text: str) -> float:
    """CPU seconds of one search of `text`."""
    start = time.process_time()
    search(text)
    first = time.process_time() - start
    if first >= REPEAT_FOR:
        return first
    runs = 0
    start = time.process_time()
    while True:
        for _ in range(100):
            search(text)
        runs += 100
        spent = time.process_time() - start
        if spent >= REPEAT_FOR:
            return spent / runs


def predicted(history: list[tuple[int, float]], n: int) -> float:
    """Time at length n extrapolated from the last two measurements (exponential growth
    when it grows faster than linear), 0 when too few or too small to tell."""
    if len(history) < 2 or history[-1][1] < 1e-3:
        return 0.0
    (n1, t1), (n2, t2) = history[-2:]
    if t1 <= 0 or n2 <= n1:
        return 0.0
    per_char = (t2 / t1) ** (1 / (n2 - n1))
    linear = t2 * n / n2
    if per_char ** (n2 - n1) <= n2 / n1 * 1.5:  # about linear
        return linear
    return t2 * per_char ** (n - n2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="16,24,28,1000,10000")
    parser.add_argument("--budget", type=float, default=1.0)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",") if x]

    print(f"{'pattern':28} {'length':>6} {'RE2 µs':>10} {'re µs':>14} {'re / RE2':>10}")
    for pattern, text_of in PATTERNS:
        go = compile_go_regexp(pattern)
        py = re.compile(pattern)
        history: list[tuple[int, float]] = []
        for n in lengths:
            text = text_of(n)
            t_re2 = per_search(go.matches, text)
            if predicted(history, n) > args.budget:
                py_cell, ratio_cell = "skipped", "-"
                history.append((n, float("inf")))
            elif history and history[-1][1] == float("inf"):
                py_cell, ratio_cell = "skipped", "-"
            else:
                t_py = per_search(py.search, text)
                history.append((n, t_py))
                py_cell = f"{t_py * 1e6:14.1f}"
                ratio_cell = f"{t_py / t_re2:10.1f}"
            print(f"{pattern:28} {n:>6} {t_re2 * 1e6:10.2f} {py_cell:>14} {ratio_cell:>10}")


if __name__ == "__main__":
    main()
