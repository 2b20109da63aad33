"""Structured logs: one JSON object per line, with node and worker ids.

Field names follow Centrifugo's zerolog output (`level`, `time`, `message`) so the
same log pipelines parse both. Client mistakes are logged as one info line each;
tracebacks appear only for server faults.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import orjson

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "none": logging.CRITICAL + 10,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}

_node_id = ""


def set_node(node_id: str) -> None:
    """Called once per worker when its node exists."""
    global _node_id
    _node_id = node_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
            "message": record.getMessage(),
            "worker": record.process or os.getpid(),
        }
        if _node_id:
            out["node"] = _node_id
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def logging_dict(level: str, file: str = "") -> dict[str, Any]:
    """A logging.config dict for the server and gunicorn's own loggers."""
    lvl = logging.getLevelName(LEVELS.get(level, logging.INFO))
    handler: dict[str, Any] = {"formatter": "json"}
    if file:
        handler.update({"class": "logging.FileHandler", "filename": file})
    else:
        handler.update({"class": "logging.StreamHandler", "stream": "ext://sys.stderr"})
    quiet = {"level": "WARNING" if lvl != "DEBUG" else "DEBUG"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"main": handler},
        "root": {"level": lvl, "handlers": ["main"]},
        "loggers": {
            "gunicorn.error": {"level": lvl, "handlers": ["main"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["main"], "propagate": False},
            # One line per request is noise for a messaging server; Centrifugo logs none.
            "aiohttp.access": quiet,
        },
    }
