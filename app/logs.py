"""Structured logs: one JSON object per line, with node and worker ids.

Field names follow Centrifugo's zerolog output (`level`, `time`, `message`) so the
same log pipelines parse both. Client mistakes are logged as one info line each;
tracebacks appear only for server faults.

aiohttp logs a client's malformed HTTP request (a request or header line over its limits,
a bad method, bad chunked framing: `HttpProcessingError`) at error level with a traceback
(debug level for a bad method in a connection's first request); `BadRequestFilter` makes
each one info line. aiohttp still answers it (400, or 413/431 as it decides).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

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


# aiohttp's logger for request handling errors (RequestHandler.handle_error).
AIOHTTP_SERVER_LOGGER = "aiohttp.server"
# How much of aiohttp's description of a bad request goes into the line (it quotes up to
# 100 bytes of the offending line).
_DETAIL_MAX = 200


class BadRequestFilter(logging.Filter):
    """On aiohttp's server logger: a record about a client's malformed request becomes one
    info line without its traceback; other records pass when at or above `level` (the
    logger itself is opened to debug, where aiohttp logs a bad first method)."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            detail = " ".join(str(exc.message).split())[:_DETAIL_MAX]
            record.msg = "bad HTTP request from %s: %s (%d %s)"
            record.args = (remote, type(exc).__name__, exc.code, detail)
            record.levelno = logging.INFO
            record.levelname = "INFO"
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return record.levelno >= self.level


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
        "filters": {
            "bad_request": {"()": BadRequestFilter, "level": LEVELS.get(level, logging.INFO)}
        },
        "handlers": {"main": handler},
        "root": {"level": lvl, "handlers": ["main"]},
        "loggers": {
            "gunicorn.error": {"level": lvl, "handlers": ["main"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["main"], "propagate": False},
            # One line per request is noise for a messaging server; Centrifugo logs none.
            "aiohttp.access": quiet,
            AIOHTTP_SERVER_LOGGER: {"level": "DEBUG", "filters": ["bad_request"]},
        },
    }
