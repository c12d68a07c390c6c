"""PostgreSQL adapter: a small thread-safe connection pool with retried checkout.

Connections that fail with a connection-level error are discarded, not returned to the pool, so
a database failover heals on the next attempt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from service.retry import db_retry, is_transient_db_error


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(
        self, url: str, *, max_connections: int = 8, read_only: bool = False, statement_timeout_s: int = 120
    ) -> None:
        self._url = url
        self._read_only = read_only
        self._pool = _open_pool(url, max_connections, statement_timeout_s)

    @contextmanager
    def transaction(self) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor in one transaction: committed on success, rolled back on any exception."""
        conn = self._checkout()
        broken = False
        try:
            with conn, conn.cursor() as cursor:
                yield cursor
        except BaseException as exc:
            broken = is_transient_db_error(exc) or conn.closed != 0
            raise
        finally:
            self._pool.putconn(conn, close=broken)

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.closeall()

    @db_retry
    def _checkout(self) -> psycopg2.extensions.connection:
        conn = self._pool.getconn()
        if conn.closed:
            self._pool.putconn(conn, close=True)
            conn = self._pool.getconn()
        if self._read_only and not conn.readonly:
            conn.set_session(readonly=True)
        return conn


def _open_pool(
    url: str, max_connections: int, statement_timeout_s: int
) -> psycopg2.pool.ThreadedConnectionPool:
    # A dead socket or a blocked query must end in an error, not hold a worker thread forever.
    pool = psycopg2.pool.ThreadedConnectionPool(
        minconn=0,  # nothing opened yet: a database down at start-up is an outage like any other
        maxconn=max_connections,
        dsn=url,
        connect_timeout=10,
        application_name="edc-image-pipeline",
        options=f"-c statement_timeout={statement_timeout_s * 1000}",
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
    )
    # psycopg2 closes a returned connection when ``minconn`` are already idle: with 1, every job
    # thread beyond the first reconnected per statement (a TCP and auth handshake each). Each
    # connection is opened when first needed and kept once open.
    pool.minconn = max_connections
    return pool
