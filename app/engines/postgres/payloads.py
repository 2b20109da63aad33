"""Publication data in and out of the PostgreSQL brokers' data columns: BYTEA with
`binary_data` (byte-exact), otherwise JSONB (JSON text in; PostgreSQL's normalized JSON out).
Shared by the map broker and the stream broker, whose tables have the same two variants."""

from __future__ import annotations

import logging

from app.errors import ERROR_INTERNAL, ClientError

log = logging.getLogger("centrifugo.postgres")


def data_in(data: bytes | None, binary: bool, who: str) -> bytes | str | None:
    """A payload as the data columns take it; a payload that is not UTF-8 text cannot be
    JSONB: one log line naming `who` (the broker) and error 100 to the caller."""
    if not data:
        return None
    if binary:
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        log.warning("postgres %s: payload is not JSON (set binary_data)", who)
        raise ClientError(ERROR_INTERNAL) from None


def data_out(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()
