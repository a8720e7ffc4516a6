"""Alembic environment: run migrations on the engine foxctl's settings describe.

``shared.migrate.upgrade`` passes its engine in ``config.attributes["engine"]``.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import text

from shared.schema import metadata

# A fixed key for PostgreSQL's advisory lock; any value works if nothing else uses it.
MIGRATION_LOCK_KEY = 0x666F78_6D6967  # "fox" "mig"


#: Schema objects that migrations create with raw SQL and the models do not describe:
#: full-text columns and tables, the pgvector column and its per-dimension indexes.
UNMODELLED_PREFIXES = (
    "text_search",
    "embedding_vector",
    "ix_index_chunks_text_search",
    "ix_index_chunks_hnsw_",
    "index_chunks_fts",
)


def include_object(obj: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
    """Leave the unmodelled objects above out of autogenerate comparisons."""
    return not (reflected and compare_to is None and (name or "").startswith(UNMODELLED_PREFIXES))


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        is_sqlite = connection.dialect.name == "sqlite"
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=is_sqlite,
            include_object=include_object,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            # Several pods may run `foxctl migrate` at once. A transaction-scoped lock
            # works through PgBouncer in transaction mode; the second pod waits here and
            # then finds the schema at head. SQLite's BEGIN IMMEDIATE serialises instead.
            if is_sqlite:
                connection.exec_driver_sql("COMMIT")
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            context.run_migrations()


run_migrations_online()
