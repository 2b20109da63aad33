"""gunicorn: its settings for a config, the worker class, and the application whose every
worker runs `build_server(cfg)` (app/hosting/server.py)."""

from __future__ import annotations

import contextlib
import importlib.util
import queue
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from app.config import Config
from app.hosting.server import DrainingRunner, ServerSettings, bind_addresses
from app.logs import logging_dict

_GUNICORN_LEVELS = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "error": "error",
    "fatal": "critical",
    "none": "critical",
}


def _bind(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def gunicorn_options(
    cfg: Config, workers: int, settings: ServerSettings | None = None
) -> dict[str, Any]:
    """Gunicorn settings for running ``cfg`` with ``workers`` processes (`settings` default to
    those of `cfg` without TLS: gunicorn never sees the certificates)."""
    if settings is None:
        settings = ServerSettings.for_config(cfg, tls={})
    options: dict[str, Any] = {
        "bind": [_bind(host, port) for host, port in bind_addresses(cfg)],
        "workers": workers,
        "worker_class": "aiohttp.GunicornWebWorker",
        "graceful_timeout": settings.graceful_timeout,
        "keepalive": settings.keepalive_timeout,
        "backlog": settings.backlog,
        "accesslog": None,
        "errorlog": cfg.log.file or "-",
        "loglevel": _GUNICORN_LEVELS.get(cfg.log.level, "info"),
        # gunicorn's own lines in the same JSON shape as ours.
        "logconfig_dict": logging_dict(cfg.log.level, cfg.log.file),
        "proc_name": "centrifugo",
        # gunicorn >= 24 opens a control socket at a fixed per-user path; several servers on
        # one machine (tests, side-by-side nodes) would fight over it.
        "control_socket_disable": True,
    }
    if cfg.pid_file:
        options["pidfile"] = cfg.pid_file
    return options


def make_gunicorn_app(cfg: Config, options: dict[str, Any], settings: ServerSettings) -> Any:
    """gunicorn's application: `options` as its settings, `build_server(cfg, settings)` in
    every worker."""
    from gunicorn.app.base import BaseApplication

    class CentrifugoApplication(BaseApplication):
        def __init__(self) -> None:
            self.options = options
            super().__init__()

        def load_config(self) -> None:
            for key, value in self.options.items():
                if key in self.cfg.settings:  # tolerate settings older gunicorns lack
                    self.cfg.set(key, value)

        def load(self) -> Callable[[], Awaitable[DrainingRunner]]:
            # Runs in each worker after fork: one event loop, one node per worker.
            from app.hosting.server import build_server

            async def factory() -> DrainingRunner:
                return build_server(cfg, settings)

            return factory

    return CentrifugoApplication()


def worker_class() -> type:
    """aiohttp's gunicorn worker, starting its drain as soon as SIGTERM arrives.

    On uvloop where it is installed (a dependency on CPython/POSIX): its C transports
    cut the worker's CPU per delivered message by ~30% (issue 7, `python -m bench`)."""
    from aiohttp.worker import GunicornUVLoopWebWorker, GunicornWebWorker

    base: type[GunicornWebWorker] = GunicornWebWorker
    if importlib.util.find_spec("uvloop") is not None:
        base = GunicornUVLoopWebWorker

    class CentrifugoWorker(base):  # type: ignore[valid-type,misc]
        master_signals: Any = None  # set by remember_master_signals (post_fork)
        listener_slot = 0  # set by app.hosting.listeners (pre_fork): which listeners it serves

        def handle_exit(self, sig: int, frame: Any) -> None:
            # aiohttp's worker notices SIGTERM only at its next 1 s tick (SIGQUIT and SIGINT
            # wake it at once): clients would wait up to a second longer for their 3001.
            super().handle_exit(sig, frame)
            self._notify_waiter_done()

        def init_signals(self) -> None:
            super().init_signals()
            # The loop's own SIGTERM dispatch (uvloop's) was seen to drop a SIGTERM that
            # arrived while a WebSocket was closing, leaving the worker up until SIGKILL.
            # A plain Python handler runs on the main thread at the next bytecode whatever
            # the loop does (the loop still wakes through the signal wakeup fd), and hands
            # the exit to the loop.
            loop = self.loop

            def on_term(sig: int, frame: Any) -> None:
                loop.call_soon_threadsafe(self.handle_exit, sig, None)

            signal.signal(signal.SIGTERM, on_term)
            # A SIGTERM that arrived between the fork and here went to the master's handler,
            # inherited by this process, which only queues it in the master's (copied) queue:
            # the worker would miss it and stay up until the master's SIGKILL (a server
            # stopped right after it started, its second worker still booting).
            if signal.SIGTERM in drain_signals(self.master_signals):
                loop.call_soon(self.handle_exit, signal.SIGTERM, None)

    return CentrifugoWorker


def remember_master_signals(server: Any, worker: Any) -> None:
    """gunicorn's post_fork hook (in the new worker): keep the master's signal queue, as
    copied by the fork, for CentrifugoWorker.init_signals."""
    worker.master_signals = server.SIG_QUEUE


def drain_signals(signals: Any) -> list[int]:
    """What a gunicorn master's SIG_QUEUE holds (a SimpleQueue; a list before gunicorn 23)."""
    if signals is None:
        return []
    if isinstance(signals, list):
        return list(signals)
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(signals.get_nowait())
    return out
