"""Database engines: SQLite in WAL mode (the embedded default) or PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool


def make_engine(url: str, *, writer: bool = True) -> Engine:
    """An engine for ``url``.

    SQLite gets WAL and a busy timeout; a *writer* engine opens every transaction with
    ``BEGIN IMMEDIATE`` so a read-then-write transaction never fails to upgrade its lock, while a
    reader engine keeps deferred transactions so reads run beside writes.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=QueuePool,
            # One writer connection: writers queue in the pool (woken at once) instead of
            # sleeping in SQLite's busy handler, which backs off in steps of up to 100 ms.
            pool_size=1 if writer else 8,
            max_overflow=0 if writer else 16,
            pool_timeout=60,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate if writer else _sqlite_begin)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (see below)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def aware(value: datetime | None) -> datetime | None:
    """A datetime read back from the database, as UTC-aware (SQLite drops the zone)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
