"""Starting the server: what the gunicorn master checks and prepares before it forks the
workers (app/hosting/gunicorn.py), then `run` hands over to gunicorn until it stops."""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from collections.abc import Callable
from typing import Any

from app.config import Config
from app.engines.build import engine_choice, uses_memory_engine, uses_memory_map_broker
from app.hosting import listeners
from app.hosting.gunicorn import (
    gunicorn_options,
    make_gunicorn_app,
    remember_master_signals,
    worker_class,
)
from app.hosting.server import ServerSettings
from app.logs import logging_dict

MEMORY_WORKERS_ERROR = "more than one worker needs the redis engine (engine.type: redis)"
MEMORY_MAP_WORKERS_ERROR = (
    "more than one worker needs the redis map broker (map_broker.type: redis) when a namespace "
    "is a map"
)


class StartupError(Exception):
    """A config or setting the server can not start with: one line for the operator."""


def check_resources(cfg: Config) -> None:
    """What start-up checks beyond the schema: Redis addresses and settings, and the
    listeners' certificates (so checkconfig passes only a config that can start)."""
    check_redis(cfg)
    from app.tls import listener_contexts

    listener_contexts(cfg)


def http3_address(cfg: Config) -> tuple[str, int] | None:
    """The UDP address HTTP/3 listens on (the main port's), None when it is off."""
    if not cfg.http_server.http3.enabled:
        return None
    return (cfg.http_server.address or "0.0.0.0", cfg.http_server.port)


def check_redis(cfg: Config) -> None:
    """Refuse a malformed Redis address with one line. Reachability is not checked: workers
    boot and serve while Redis is down (/health 500) and heal when it answers, so an outage
    at start-up is no different from one later (Centrifugo exits here instead)."""
    parts = engine_choice(cfg).redis_parts()
    if not parts:
        return
    from app.engines.redis.address import RedisConfigError, specs_from_config

    for part in parts:
        try:
            # Builds the TLS contexts too: a bad certificate stops start-up here.
            specs_from_config(part.redis, f"{part.section}.redis")
        except RedisConfigError as e:
            raise StartupError(str(e)) from None


def prepare_multiprocess_metrics() -> Callable[[Any, Any], None]:
    """Workers write metrics to files in a fresh directory; a scrape on any worker
    sums them. Must run before prometheus_client is first imported in this process
    (it picks its value class at import; the Redis reachability check imports it)
    so forked workers inherit multiprocess mode. Returns gunicorn's child_exit hook."""
    import atexit
    import shutil
    import tempfile

    if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # A programming error, not an operator's: serve anyway, scrapes will be incomplete.
        logging.getLogger("centrifugo").warning(
            "prometheus_client imported before multiprocess setup: metrics of workers are lost"
        )
    path = tempfile.mkdtemp(prefix="centrifugo-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    master = os.getpid()

    def remove_dir() -> None:
        # Workers exit through sys.exit and run inherited atexit hooks too: a rotated worker
        # must not take the live workers' files (and its replacement's boot) with it.
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove_dir)

    def child_exit(server: Any, worker: Any) -> None:
        # A dead worker's live gauges (connections, subscriptions...) must vanish.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)

    return child_exit


def run(cfg: Config, workers: int, max_requests: int = 0, max_requests_jitter: int = 0) -> None:
    """Serve `cfg` with `workers` gunicorn worker processes until gunicorn stops.

    Raises StartupError (or listeners.ListenError, one of them) for what can not start."""
    if workers < 1:
        raise StartupError(f"invalid number of workers: {workers}")
    if workers > 1 and uses_memory_engine(cfg):
        raise StartupError(MEMORY_WORKERS_ERROR)
    if workers > 1 and uses_memory_map_broker(cfg):
        raise StartupError(MEMORY_MAP_WORKERS_ERROR)
    if max_requests < 0 or max_requests_jitter < 0:
        raise StartupError("--max-requests and --max-requests-jitter must not be negative")
    child_exit = prepare_multiprocess_metrics() if cfg.prometheus.enabled else None
    if cfg.client.connection_rate_limit > 0 and workers > 1:
        # One bucket for the node (Centrifugo's limit is per node), in a page the workers share.
        from app.transports.admission import share_across_workers

        share_across_workers()
    check_redis(cfg)
    # Loads the certificates: a bad one stops start-up here.
    settings = ServerSettings.for_config(cfg)

    logging.config.dictConfig(logging_dict(cfg.log.level, cfg.log.file))
    for port, ctx in settings.tls.items():
        if ctx is not None:  # gunicorn's "Listening at: http://" line does not know
            logging.getLogger("centrifugo").info("TLS on port %d: serving HTTPS and WSS", port)
    options = gunicorn_options(cfg, workers, settings)
    if child_exit is not None:
        options["child_exit"] = child_exit
    # Worker rotation: a worker past the limit drains (clients get 3001) and is replaced.
    options["max_requests"] = max_requests
    options["max_requests_jitter"] = max_requests_jitter
    options["worker_class"] = worker_class()
    options["post_fork"] = remember_master_signals
    # One SO_REUSEPORT listener per worker slot, so a burst of connects spreads evenly.
    listeners.configure(options, workers, settings.backlog, udp=http3_address(cfg))
    make_gunicorn_app(cfg, options, settings).run()
