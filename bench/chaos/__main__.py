"""`python -m bench.chaos --minutes N`: the chaos soak (bench/README.md, "Chaos soak")."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench.chaos.faults import KINDS
from bench.chaos.run import Options, run


def parse(argv: list[str]) -> tuple[Options, Path | None]:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--minutes", type=float, default=d.minutes, help="fault schedule length")
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--channels", type=int, default=d.channels)
    p.add_argument("--rate", type=float, default=d.rate, help="publications/s, all channels")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument(
        "--redis-persistence",
        choices=("aof", "none"),
        default="aof" if d.aof else "none",
        help="aof: appendfsync always, acknowledged publications survive kill -9 (default); "
        "none: a Redis restart loses history and clients must see recovered=false",
    )
    p.add_argument(
        "--faults",
        default=",".join(d.faults),
        help=f"comma-separated, injected in this order, repeated (default: all of {KINDS})",
    )
    p.add_argument("--gap", type=float, default=d.gap_s, help="quiet seconds after each heal")
    p.add_argument("--heal-timeout", type=float, default=d.heal_timeout_s)
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s)
    p.add_argument("--redis-outage", type=float, default=d.redis_outage_s)
    p.add_argument("--freeze", type=float, default=d.freeze_s, help="SIGSTOP length, s")
    p.add_argument("--slow-release", type=float, default=d.slow_release_s)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log-level", default=d.log_level, help="the app's log level")
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument(
        "--app-root",
        type=Path,
        default=d.app_root,
        help="run `python -m app` from this checkout (e.g. an older commit, to compare)",
    )
    p.add_argument("--out", type=Path, help="write the JSON report here")
    a = p.parse_args(argv)
    faults = tuple(x for x in a.faults.split(",") if x)
    unknown = set(faults) - set(KINDS)
    if unknown or not faults:
        p.error(f"unknown faults {sorted(unknown)}; known: {', '.join(KINDS)}")
    if a.clients < 1 or a.channels < 1 or a.rate <= 0 or a.workers < 1:
        p.error("--clients, --channels, --workers must be >= 1 and --rate > 0")
    opts = Options(
        minutes=a.minutes,
        clients=a.clients,
        channels=a.channels,
        rate=a.rate,
        workers=a.workers,
        aof=a.redis_persistence == "aof",
        faults=faults,
        gap_s=a.gap,
        heal_timeout_s=a.heal_timeout,
        drain_timeout_s=a.drain_timeout,
        redis_outage_s=a.redis_outage,
        freeze_s=a.freeze,
        slow_release_s=a.slow_release,
        seed=a.seed,
        log_level=a.log_level,
        keep_workdir=a.keep_workdir,
        app_root=a.app_root,
    )
    return opts, a.out


async def _main(opts: Options) -> dict[str, Any]:
    # SIGTERM (a CI timeout) cancels the soak like Ctrl-C does, so its cleanup runs and no
    # server or redis-server outlives it (they run in sessions of their own).
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(opts)


def main(argv: list[str] | None = None) -> int:
    opts, out = parse(sys.argv[1:] if argv is None else argv)
    try:
        doc = asyncio.run(_main(opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if out is not None:
        out.write_text(json.dumps(doc, indent=2, default=str))
    print(doc["tables"])
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
