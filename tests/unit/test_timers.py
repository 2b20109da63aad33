"""CoarseTimers: per-connection deadlines grouped into ticks (app/timers.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.timers import CoarseTimers

TICK = 0.05


async def test_fires_after_the_deadline_in_the_tick_that_follows_it() -> None:
    loop = asyncio.get_running_loop()
    timers = CoarseTimers(loop, TICK)
    fired: asyncio.Future[float] = loop.create_future()
    start = loop.time()
    timers.call_later(0.12, lambda: fired.set_result(loop.time()))
    # Armed for the first tick at or after the deadline (never more than a tick late).
    (slot,) = timers._buckets
    assert start + 0.12 <= slot * TICK < start + 0.12 + TICK
    at = await asyncio.wait_for(fired, 2)
    # Never early (libuv rounds its timers to whole milliseconds: allow that much).
    assert at - start >= 0.12 - 0.002
    assert timers.pending() == 0


async def test_cancelled_timer_never_fires_and_is_dropped_at_once() -> None:
    loop = asyncio.get_running_loop()
    timers = CoarseTimers(loop, TICK)
    calls: list[str] = []
    t = timers.call_later(0.05, calls.append, "cancelled")
    done: asyncio.Future[None] = loop.create_future()
    timers.call_later(0.05, done.set_result, None)
    t.cancel()
    t.cancel()  # twice is harmless
    assert timers.pending() == 1  # the cancelled one no longer holds its callback
    await asyncio.wait_for(done, 2)
    assert calls == []


async def test_callback_may_cancel_another_timer_of_the_same_tick() -> None:
    loop = asyncio.get_running_loop()
    timers = CoarseTimers(loop, TICK)
    calls: list[str] = []
    handles = {}

    def first(name: str) -> None:
        calls.append(name)
        other = "b" if name == "a" else "a"
        handles[other].cancel()

    handles["a"] = timers.call_later(0.01, first, "a")
    handles["b"] = timers.call_later(0.01, first, "b")
    done: asyncio.Future[None] = loop.create_future()
    timers.call_later(0.2, done.set_result, None)
    await asyncio.wait_for(done, 2)
    assert len(calls) == 1  # whichever ran first cancelled the other


async def test_failing_callback_is_logged_and_others_still_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    timers = CoarseTimers(loop, TICK)

    def boom() -> None:
        raise RuntimeError("boom")

    done: asyncio.Future[None] = loop.create_future()
    with caplog.at_level(logging.ERROR, logger="app.timers"):
        timers.call_later(0.01, boom)
        timers.call_later(0.01, done.set_result, None)
        await asyncio.wait_for(done, 2)
    assert any("boom" in (r.exc_text or "") for r in caplog.records)


async def test_one_loop_timer_per_tick() -> None:
    loop = asyncio.get_running_loop()
    tick = 10.0
    timers = CoarseTimers(loop, tick)
    # Deadlines 1.0-1.1 s past the next tick boundary: all inside one tick.
    boundary = (loop.time() // tick + 1) * tick
    first = boundary + 1 - loop.time()
    handles = [timers.call_later(first + i / 1000, lambda: None) for i in range(100)]
    assert timers.pending() == 100
    assert len(timers._buckets) == 1
    for h in handles:
        h.cancel()
    assert timers.pending() == 0
