"""`python -m bench`: the app against the raw aiohttp ceiling and python-socketio (README)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.runner import ALL, SCENARIOS, Options, log, run


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def _rates(values: list[str]) -> dict[str, dict[str, float]]:
    """`fanout.paced=50000` style overrides -> {"fanout": {"paced": 50000.0}}."""
    out: dict[str, dict[str, float]] = {}
    for item in values:
        key, _, value = item.partition("=")
        scenario, _, load = key.partition(".")
        if scenario not in SCENARIOS or load not in ("paced", "saturate") or not value:
            raise SystemExit(f"bad --rate {item!r}: want SCENARIO.paced|saturate=DELIVERIES_PER_S")
        out.setdefault(scenario, {})[load] = float(value)
    return out


def parse_args(argv: list[str]) -> Options:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Redis -> one app worker -> WebSocket subscribers, next to the raw aiohttp "
        "ceiling and python-socketio; idle memory, connect rate, reconnect storm, batch publish.",
    )
    ap.add_argument("--smoke", action="store_true", help="every stage, 20 clients, briefly (CI)")
    ap.add_argument("--subs", type=int, help="WebSocket subscribers (default 1000)")
    ap.add_argument("--scenarios", help="comma list of (default all): " + ", ".join(ALL))
    ap.add_argument("--loads", default=None, help="comma list of paced,saturate (default both)")
    ap.add_argument(
        "--paths",
        default=None,
        help="comma list of phases (default: "
        + ",".join(Options().paths)
        + "); app2/spublish,app2/api add the 2-worker app beside the 1-worker one",
    )
    ap.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="SCENARIO.LOAD=N",
        help="offered deliveries/s, e.g. fanout.saturate=600000 (repeatable)",
    )
    ap.add_argument("--duration", type=float, help="seconds of publishing per phase (default 3)")
    ap.add_argument("--procs", type=int, help="load-generator processes (default 2)")
    ap.add_argument("--repeat", type=int, help="runs of every phase; the table shows medians")
    ap.add_argument(
        "--sample-every", type=int, help="parse and read eagerly every k-th connection (default 50)"
    )
    ap.add_argument(
        "--read-delay-ms",
        type=float,
        help="non-sampled clients read their socket at most this often (default 50; 0 = eager)",
    )
    ap.add_argument("--raw-send", choices=("frame", "str"), default="frame")
    ap.add_argument("--no-history", action="store_true", help="bench channels without history")
    ap.add_argument("--profile", type=Path, help="py-spy every app phase into this folder")
    ap.add_argument(
        "--profile-native", action="store_true", help="with --profile: C frames too (--native)"
    )
    ap.add_argument("--keep-workdir", action="store_true", help="keep logs and configs")
    ap.add_argument(
        "--app-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the app process only (repeatable)",
    )
    g = ap.add_argument_group("peers")
    g.add_argument("--no-sio", action="store_true", help="skip the python-socketio peer")
    g.add_argument(
        "--sio-max-rate", type=float, help="cap of deliveries/s offered to socketio (50000)"
    )
    g = ap.add_argument_group("latency (b)")
    g.add_argument("--latency-scenario", help="fan-out scenario measured (default fanout)")
    g.add_argument("--latency-fractions", type=_floats, help="of the peak (default 0.1,0.5,0.8)")
    g.add_argument(
        "--latency-peak",
        choices=("single", "step", "saturate"),
        help="peak = highest paced rate with p99 <= 100 ms, no loss and one message per "
        "frame (single, default), the same without the frame condition (step), or the "
        "saturate drain rate",
    )
    g = ap.add_argument_group("idle connections and connect rate (c, d)")
    g.add_argument("--idle-steps", type=_ints, help="ramp (default 1000,2500,5000,10000)")
    g.add_argument("--idle-targets", type=_names, help="default app,raw,sio")
    g.add_argument(
        "--idle-channels", type=int, help="channels shared by idle clients (default: one each)"
    )
    g.add_argument(
        "--connect-concurrency", type=int, help="connects in flight per load process (100)"
    )
    g = ap.add_argument_group("reconnect storm (d)")
    g.add_argument("--storm-clients", type=int, help="default 1000")
    g.add_argument("--storm-pubs", type=int, help="publications to recover per channel (5)")
    g.add_argument("--storm-triggers", type=_names, help="api and/or restart (default both)")
    g = ap.add_argument_group("/api/batch with history")
    g.add_argument("--batch-workers", type=_ints, help="app worker counts (default 1,2)")
    g.add_argument("--batch-duration", type=float, help="seconds (default 5)")
    g.add_argument("--batch-size", type=int, help="publications per request (default 500)")
    g.add_argument("--batch-concurrency", type=int, help="requests in flight (default 8)")
    g = ap.add_argument_group("map subscriptions")
    g.add_argument("--maps-workers", type=_ints, help="app worker counts (default 1,2)")
    g.add_argument("--maps-mode", choices=("persistent", "recoverable", "ephemeral"))
    g.add_argument("--maps-clients", type=int, help="clients syncing the map (default 1000)")
    g.add_argument("--maps-keys", type=int, help="keys seeded into the map (default 10000)")
    g.add_argument("--maps-value-bytes", type=int, help="bytes of JSON per value (default 100)")
    g.add_argument("--maps-page", type=int, help="state page size asked for (default 1000)")
    g.add_argument("--maps-duration", type=float, help="seconds of map_publish (default 10)")
    g.add_argument("--maps-concurrency", type=int, help="map_publish calls in flight (16)")
    ap.add_argument("--out", type=Path, default=Path("bench-results.json"))
    a = ap.parse_args(argv)

    opts = Options.smoke_options(a.out) if a.smoke else Options(out=a.out)
    if a.scenarios:
        opts.scenarios = _names(a.scenarios)
    if a.loads:
        opts.loads = tuple(x for x in a.loads.split(",") if x)
    if a.paths:
        opts.paths = tuple(x for x in a.paths.split(",") if x)
    for scenario, loads in _rates(a.rate).items():
        opts.rates.setdefault(scenario, {}).update(loads)
    if not set(opts.loads) <= {"paced", "saturate"}:
        raise SystemExit(f"bad --loads {a.loads!r}: want paced and/or saturate")
    for attr in (
        "subs",
        "duration",
        "procs",
        "sample_every",
        "repeat",
        "sio_max_rate",
        "latency_scenario",
        "latency_fractions",
        "latency_peak",
        "idle_steps",
        "idle_targets",
        "idle_channels",
        "connect_concurrency",
        "storm_clients",
        "storm_pubs",
        "storm_triggers",
        "batch_workers",
        "batch_duration",
        "batch_size",
        "batch_concurrency",
        "maps_workers",
        "maps_mode",
        "maps_clients",
        "maps_keys",
        "maps_value_bytes",
        "maps_page",
        "maps_duration",
        "maps_concurrency",
    ):
        value = getattr(a, attr)
        if value is not None:
            setattr(opts, attr, value)
    if a.read_delay_ms is not None:
        opts.read_delay = a.read_delay_ms / 1000
    opts.raw_send = a.raw_send
    opts.keep_workdir = a.keep_workdir
    for item in a.app_env:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise SystemExit(f"bad --app-env {item!r}: want KEY=VALUE")
        opts.app_env[key] = value
    opts.history = not a.no_history
    opts.sio = not a.no_sio
    opts.profile_dir = a.profile
    opts.profile_native = a.profile_native
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    doc = run(opts)
    print(doc["table"])
    log(f"results written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
