"""What asyncpg raises when PostgreSQL is away or a connection dies under a query: the one
list every PostgreSQL part (the map, stream and controller brokers, their outbox reader, the
PostgreSQL consumer) treats as "the database is unavailable" (a ClientError 100, unhealthy,
retry) rather than as a bug.

InternalClientError is among them: asyncpg raises it ("cannot switch to state N; another
operation (2) is in progress") for a query begun on a connection whose server has just
terminated it (the FATAL 57P01 puts the protocol in its error-consuming state before the close
arrives). Seen when PostgreSQL restarted under the outbox's LISTEN set-up: the listen loop,
which did not expect it, ended for good and the node fell back to polling alone.
"""

from __future__ import annotations

import asyncpg

DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
