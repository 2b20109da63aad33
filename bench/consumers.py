"""Consumer throughput (issue 20): `python -m bench.consumers`.

One stage per consumer type, each on an app of its own (`python -m app`, Redis engine, one
gunicorn worker running the consumer):

- **postgresql**: `--commands` publish commands are written into Centrifugo's outbox table
  (`--partitions` partitions, rows spread round-robin, one transaction, `pg_notify` per
  partition), then the stage waits until the table is empty (rows are deleted only after
  their publish succeeded). `partition_select_limit` is Centrifugo's default, 100.
- **redis_stream**: the same commands `XADD`ed (pipelined) to one stream, then the stage waits
  until the consumer group has neither lag nor pending entries (`XINFO GROUPS`): every entry
  delivered, published and acknowledged.

Each command publishes `{"n": i}` into one of 100 channels with history (so each is the
Redis engine's history script, as an API publish). Reported per stage: commands/s from the
first write to the last command done, and CPU seconds per 1000 commands of the app's workers,
the backend (PostgreSQL's processes, or the stream's redis-server) and the engine's
redis-server. The machine is shared: read the ratios of one run, not absolute rates.

PostgreSQL comes from initdb/postgres on PATH or the `pgserver` wheel (as the tests find it;
bench does not import tests), run as `nobody` under root. Redis: bench.runner.start_redis.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.app_process import AppProcess, start_app_process
from bench.ports import free_port
from bench.runner import Service, cpu_seconds, start_redis

TABLE = "centrifugo_outbox"
NOTIFY = "centrifugo_partition_change"
STREAM = "centrifugo_bench"
GROUP = "centrifugo"


def _pg_bin() -> Path:
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(os.path.realpath(found)).parent
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        pg_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (pg_bin / "postgres").exists():
            return pg_bin
    raise SystemExit("no PostgreSQL binaries (initdb/postgres on PATH or the pgserver wheel)")


def _runnable_by(user: pwd.struct_passwd, bindir: Path) -> Path:
    """`bindir`, or a copy of the pgserver install under /tmp that `user` can run (a wheel
    under root's home is closed to nobody); the tests' helper does the same."""
    probe = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        + [str(bindir / "postgres"), "--version"],
        capture_output=True,
    )
    if probe.returncode == 0:
        return bindir
    site = bindir.parent.parent.parent
    copy = Path(tempfile.gettempdir()) / f"centrifugo-py-pgserver-{os.getuid()}"
    if not (copy / "pgserver" / "pginstall" / "bin" / "postgres").exists():
        shutil.copytree(site / "pgserver" / "pginstall", copy / "pgserver" / "pginstall")
        shutil.copytree(site / "pgserver.libs", copy / "pgserver.libs")
        for path in (copy, *copy.rglob("*")):
            path.chmod(path.stat().st_mode | (0o055 if path.is_dir() else 0o044))
    return copy / "pgserver" / "pginstall" / "bin"


def start_postgres(workdir: Path) -> tuple[Service, int]:
    """A throwaway cluster on a free port (trust auth, fsync off), ready."""
    bindir = _pg_bin()
    data = workdir / "pgdata"
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    # PostgreSQL refuses root: run it as nobody through setpriv.
    as_user: list[str] = []
    if user is not None:
        bindir = _runnable_by(user, bindir)
        as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}"]
        as_user.append("--clear-groups")
    data.mkdir()
    if user is not None:
        os.chown(workdir, user.pw_uid, user.pw_gid)
        os.chown(data, user.pw_uid, user.pw_gid)
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        + ["--no-sync"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    cmd = [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
    cmd += ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]
    cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
    svc = Service("postgres", cmd, workdir / "postgres.log")
    deadline = time.monotonic() + 30

    async def ping() -> None:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
        await conn.close()

    while True:
        try:
            asyncio.run(ping())
            return svc, port
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline or svc.proc.poll() is not None:
                svc.stop()
                raise RuntimeError(f"postgres did not start: {svc.log.read_text()}") from None
            time.sleep(0.1)


def _app_config(redis_port: int, consumer: dict[str, Any]) -> dict[str, Any]:
    return {
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": "cfbenchcons"},
        },
        "channel": {"without_namespace": {"history_size": 10, "history_ttl": "300s"}},
        "log": {"level": "error"},
        "consumers": [{"name": "bench", "enabled": True, **consumer}],
    }


def _command(i: int) -> str:
    return json.dumps({"channel": f"bench{i % 100}", "data": {"n": i}})


async def _pg_write(dsn: str, commands: int, partitions: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {TABLE} (method, payload, partition) VALUES ('publish', $1, $2)",
                [(_command(i), i % partitions) for i in range(commands)],
            )
            for p in range(partitions):
                await conn.execute("SELECT pg_notify($1, $2)", NOTIFY, str(p))
    finally:
        await conn.close()


async def _pg_wait_empty(dsn: str, timeout: float) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(f"SELECT count(*) FROM {TABLE}"):
            if time.monotonic() > deadline:
                raise RuntimeError("outbox not drained in time")
            await asyncio.sleep(0.02)  # no event tells when another process deleted rows
    finally:
        await conn.close()


async def _rs_write(port: int, commands: int) -> None:
    client = aioredis.Redis(port=port)
    try:
        for start in range(0, commands, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 1000, commands)):
                pipe.xadd(STREAM, {"method": "publish", "payload": _command(i)})
            await pipe.execute()
    finally:
        await client.aclose()


async def _rs_wait_done(port: int, timeout: float) -> None:
    client = aioredis.Redis(port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            groups = await client.xinfo_groups(STREAM)
            group = next(g for g in groups if g["name"] == GROUP)
            if group["lag"] == 0 and group["pending"] == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream not consumed in time: {group}")
            await asyncio.sleep(0.02)  # polled: XINFO has no notification
    finally:
        await client.aclose()


def _measure(
    app: AppProcess, backend: list[int], engine: list[int], write: Any, wait: Any, n: int
) -> dict[str, Any]:
    procs = {"workers": app.service.workers(), "backend": backend, "engine": engine}
    before = {k: cpu_seconds(v) for k, v in procs.items()}
    started = time.monotonic()
    asyncio.run(write())
    asyncio.run(wait())
    elapsed = time.monotonic() - started
    cpu = {k: cpu_seconds(v) - before[k] for k, v in procs.items()}
    return {
        "commands": n,
        "seconds": round(elapsed, 3),
        "commands_per_s": round(n / elapsed),
        "cpu_s_per_1000": {k: round(v * 1000 / n, 4) for k, v in cpu.items()},
    }


def run(commands: int, partitions: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-bench-consumers-"))
    results: dict[str, Any] = {}
    engine, engine_port = start_redis(workdir)
    services = [engine]
    try:
        pg, pg_port = start_postgres(workdir)
        services.append(pg)
        dsn = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"

        async def schema() -> None:
            conn = await asyncpg.connect(dsn)
            await conn.execute(
                f"CREATE TABLE {TABLE} (id BIGSERIAL PRIMARY KEY, method text NOT NULL, "
                "payload JSONB NOT NULL, partition INTEGER NOT NULL default 0)"
            )
            await conn.close()

        asyncio.run(schema())
        pg_consumer = {
            "type": "postgresql",
            "postgresql": {
                "dsn": dsn,
                "outbox_table_name": TABLE,
                "num_partitions": partitions,
                "partition_notification_channel": NOTIFY,
            },
        }
        app = start_app_process(_app_config(engine_port, pg_consumer))
        try:
            results["postgresql"] = _measure(
                app,
                pg.pids(),
                engine.pids(),
                lambda: _pg_write(dsn, commands, partitions),
                lambda: _pg_wait_empty(dsn, 600),
                commands,
            )
        finally:
            app.stop()

        (workdir / "streams").mkdir()
        streams, streams_port = start_redis(workdir / "streams")
        services.append(streams)
        rs_consumer = {
            "type": "redis_stream",
            "redis_stream": {
                "address": [f"redis://127.0.0.1:{streams_port}"],
                "streams": [STREAM],
                "consumer_group": GROUP,
            },
        }
        app = start_app_process(_app_config(engine_port, rs_consumer))
        try:
            results["redis_stream"] = _measure(
                app,
                streams.pids(),
                engine.pids(),
                lambda: _rs_write(streams_port, commands),
                lambda: _rs_wait_done(streams_port, 600),
                commands,
            )
        finally:
            app.stop()
    finally:
        for svc in reversed(services):
            svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"workers": 1, "partitions": partitions, "stages": results}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.consumers", description=__doc__)
    ap.add_argument("--commands", type=int, default=20000, help="commands per stage")
    ap.add_argument("--partitions", type=int, default=2, help="outbox partitions")
    ap.add_argument("--out", help="write the JSON result here too")
    opts = ap.parse_args(argv)
    result = run(opts.commands, opts.partitions)
    text = json.dumps(result, indent=2)
    print(text)
    if opts.out:
        Path(opts.out).write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
