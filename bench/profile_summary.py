"""Summary of a py-spy profile in raw (collapsed stack) format, as `--profile` writes them.

    python -m bench.profile_summary FILE [FILE ...] [--top 20]

For each file: the share of samples by the function on top of the stack (self time), by
function anywhere on the stack (inclusive time; a function counted once per stack), and self
time by module (`app/writer.py`, `aiohttp/_websocket/writer.py`, `asyncio/selector_events.py`,
...). py-spy records only while the worker's thread is running (no `--idle`), so the shares are
of the CPU the worker used.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """Collapsed stacks -> [(frames root-first as (function, file)), samples)]."""
    out = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        stack, _, count = raw.rpartition(" ")
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part)
            frames.append((m["func"], m["file"]) if m else (part, ""))
        out.append((frames, int(count)))
    return out


def module_of(file: str) -> str:
    """A short module label: the path from the package root (app/, aiohttp/, asyncio/...)."""
    for root in ("app/", "bench/", "aiohttp/", "asyncio/", "redis/", "orjson", "socketio/"):
        i = file.find(root)
        if i >= 0:
            return file[i:]
    return file.rsplit("/", 1)[-1] or "?"


def summarize(stacks: list[tuple[list[tuple[str, str]], int]], top: int) -> str:
    total = sum(n for _, n in stacks)
    if not total:
        return "no samples"
    self_fn: Counter[str] = Counter()
    self_mod: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in stacks:
        func, file = frames[-1]
        self_fn[f"{func} ({module_of(file)})"] += n
        self_mod[module_of(file)] += n
        for name in {f"{f} ({module_of(p)})" for f, p in frames}:
            incl[name] += n

    def block(title: str, counts: Counter[str], skip_roots: bool = False) -> list[str]:
        lines = [f"{title}:"]
        shown = 0
        for name, n in counts.most_common():
            # Inclusive view: the event loop's own frames are ~100% and say nothing.
            if skip_roots and n >= total * 0.97:
                continue
            lines.append(f"  {100 * n / total:5.1f}%  {name}")
            shown += 1
            if shown >= top:
                break
        return lines

    out = [f"{total} samples"]
    out += block("self time by function", self_fn)
    out += block("self time by module", self_mod)
    out += block("inclusive time by function", incl, skip_roots=True)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    for path in args.files:
        print(f"== {path}")
        print(summarize(parse(path.read_text()), args.top))
        print()


if __name__ == "__main__":
    main()
