"""bench/ports.py `free_port()`: a port handed out once is not handed out again while its
reservation lasts, in this process or another (the race that once gave the app and the
Django Channels peer of bench.peers one port)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from pathlib import Path

import pytest

from bench import ports


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(ports, "_DIR", tmp_path)
    monkeypatch.setattr(ports, "_swept", False)
    return tmp_path


def test_no_port_twice_in_one_process(registry: Path) -> None:
    # 2,000 random picks among ~23,000 ports repeat one almost surely (birthday).
    got = [ports.free_port() for _ in range(2000)]
    assert len(set(got)) == len(got)
    assert {p.name for p in registry.iterdir()} == {str(p) for p in got}
    # Below the ephemeral range: no outgoing connection holds them.
    low = ports._ephemeral_low()
    assert all(ports.LOWEST <= p < low for p in got)


def test_a_port_in_use_is_not_handed_out(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ports._random.randrange
    picked: list[int] = []

    def pick(lo: int, hi: int) -> int:  # the listener's port first, then random ones
        picked.append(taken if not picked else real(lo, hi))
        return picked[-1]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        monkeypatch.setattr(ports._random, "randrange", pick)
        port = ports.free_port()
    assert picked[0] == taken and port == picked[-1] != taken


def _pick(directory: str, n: int) -> list[int]:
    ports._DIR = Path(directory)
    return [ports.free_port() for _ in range(n)]


def test_no_port_twice_across_processes(registry: Path) -> None:
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.starmap(_pick, [(str(registry), 1000), (str(registry), 1000)])
    assert len(set(a) | set(b)) == 2000


def test_an_expired_reservation_is_taken_over_and_swept(registry: Path) -> None:
    old = time.time() - ports.RESERVED_FOR - 1
    live = registry / "1"
    live.touch()
    expired = registry / "2"
    expired.touch()
    os.utime(expired, (old, old))
    assert not ports._reserve(live)
    assert ports._reserve(expired)
    assert time.time() - expired.stat().st_mtime < ports.RESERVED_FOR
    os.utime(expired, (old, old))
    ports.free_port()  # the first call of a process sweeps
    assert not expired.exists() and live.exists()
