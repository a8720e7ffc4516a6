"""Engines and transactions for SQLite and PostgreSQL.

One engine per process. Callers open a transaction with ``Database.write()`` or
``Database.read()`` at the boundary (a request, an actor call) and services work inside
it without committing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, OperationalError
from sqlmodel import Session, create_engine

from shared.errors import InvalidInputError, UnavailableError
from shared.settings import Settings
from shared.telemetry import instrument_engine

_WRITE_OPTION = "foxctl_write"


def make_engine(settings: Settings) -> Engine:
    """Create the process's engine for ``FOXCTL_DB_DRIVER``, traced when tracing is on."""
    if settings.db_driver == "sqlite":
        engine = _make_sqlite_engine(settings)
    else:
        engine = _make_postgres_engine(settings)
    instrument_engine(engine)
    return engine


def _make_postgres_engine(settings: Settings) -> Engine:
    connect_args: dict[str, Any] = {"connect_timeout": 5}
    if settings.postgres_pgbouncer:
        connect_args["prepare_threshold"] = None
    # No pre-ping: it costs a round trip per transaction. A connection that died (a
    # database restart) fails one unit of work with UnavailableError, which requests
    # report as 503 and actors retry; recycling bounds how old a connection gets.
    return create_engine(
        settings.database_url,
        pool_size=settings.postgres_max_conns,
        max_overflow=0,
        pool_recycle=1800,
        pool_timeout=10,
        connect_args=connect_args,
        # Statement parameters hold message text and tokens; keep them out of errors.
        hide_parameters=True,
    )


def _make_sqlite_engine(settings: Settings) -> Engine:
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        settings.database_url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=16,
        max_overflow=16,
        hide_parameters=True,
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Manage transactions ourselves so that writers can start with BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # A writer takes the write lock up front. A deferred transaction that reads and
        # then writes can fail with "database is locked" without waiting for busy_timeout.
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

    return engine


class Database:
    """Transactions over one engine; commit or roll back at the end of each block."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """Open a read-write transaction; commit when the block ends without error."""
        with self._session(self._write_engine) as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Open a transaction for reads; it is rolled back at the end."""
        with self._session(self.engine, commit=False) as session:
            yield session

    @contextmanager
    def _session(self, engine: Engine, *, commit: bool = True) -> Iterator[Session]:
        session = Session(engine, expire_on_commit=False)
        try:
            yield session
            if commit:
                session.commit()
        except OperationalError as error:
            session.rollback()
            raise UnavailableError(f"database error: {error.orig}") from error
        except DataError as error:
            session.rollback()
            raise InvalidInputError(f"the database rejected a value: {error.orig}") from error
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
