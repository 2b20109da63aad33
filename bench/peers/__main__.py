"""`python -m bench.peers`: this server against Node.js socket.io, Django Channels,
python-socketio and the raw ceiling, personal and broadcast shapes (bench/peers/stage.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.peers.stage import SHAPES, TARGETS, Options, run
from bench.runner import log


def _names(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def parse_args(argv: list[str]) -> Options:
    d = Options()
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    ap.add_argument("--targets", type=_names, default=d.targets, help=",".join(TARGETS))
    ap.add_argument("--shapes", type=_names, default=d.shapes, help=",".join(SHAPES))
    ap.add_argument("--subs", type=int, default=d.subs, help="connections per target (1000)")
    ap.add_argument("--duration", type=float, default=d.duration, help="s of publishing (3)")
    ap.add_argument("--repeat", type=int, default=d.repeat, help="runs; tables show medians")
    ap.add_argument("--procs", type=int, default=d.procs, help="load-generator processes (2)")
    ap.add_argument("--sample-every", type=int, default=d.sample_every)
    ap.add_argument("--rate-personal", type=float, default=d.rate_personal)
    ap.add_argument("--rate-broadcast", type=float, default=d.rate_broadcast)
    ap.add_argument(
        "--slow-max-rate",
        type=float,
        default=d.slow_max_rate,
        help="deliveries/s offered at most to channels and sio (50000)",
    )
    ap.add_argument("--slow-max-deliveries", type=int, default=d.slow_max_deliveries)
    ap.add_argument("--history-size", type=int, default=0, help="app channels' history_size")
    ap.add_argument("--no-npm-install", action="store_true", help="never run npm ci")
    ap.add_argument(
        "--app-env", action="append", default=[], metavar="KEY=VALUE", help="app environment"
    )
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--out", type=Path, default=d.out)
    a = ap.parse_args(argv)
    env = {}
    for item in a.app_env:
        k, sep, v = item.partition("=")
        if not k or not sep:
            raise SystemExit(f"bad --app-env {item!r}: want KEY=VALUE")
        env[k] = v
    return Options(
        targets=a.targets,
        shapes=a.shapes,
        subs=a.subs,
        duration=a.duration,
        repeat=a.repeat,
        procs=a.procs,
        sample_every=a.sample_every,
        rate_personal=a.rate_personal,
        rate_broadcast=a.rate_broadcast,
        slow_max_rate=a.slow_max_rate,
        slow_max_deliveries=a.slow_max_deliveries,
        history_size=a.history_size,
        npm_install=not a.no_npm_install,
        app_env=env,
        keep_workdir=a.keep_workdir,
        out=a.out,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    doc = run(opts)
    print(doc["table"])
    log(f"results written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
