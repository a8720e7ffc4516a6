"""add workspace index: files, chunks, embedding state, full-text and vector columns

Revision ID: 0005
Revises: 0004

The vector column has no fixed dimension, because the dimension is learned from the
embedding model at run time. On PostgreSQL with pgvector the column is an untyped
``vector``; ``shared.retrieval.vectors`` creates one partial HNSW index per dimension
over ``embedding_vector::vector(N)`` when a model of that dimension is first seen. A
PostgreSQL without pgvector gets no vector column, and search there is exact.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import shared.timestamps

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the index tables, their full-text index and, with pgvector, a vector column."""
    op.create_table(
        "index_files",
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("content_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("indexed_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path"),
    )
    op.create_table(
        "index_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("start_line", sa.Integer(), nullable=False),
        sa.Column("end_line", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("content_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("dimension", sa.Integer(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("index_chunks", schema=None) as batch_op:
        batch_op.create_index("ix_index_chunks_path", ["path"], unique=False)
        batch_op.create_index("ix_index_chunks_content_sha256", ["content_sha256"], unique=False)
        batch_op.create_index("ix_index_chunks_model", ["model"], unique=False)
    op.create_table(
        "index_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("dimension", sa.Integer(), nullable=True),
        sa.Column("last_indexed_at", shared.timestamps.UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )

    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgres()
    else:
        _upgrade_sqlite()


def _upgrade_postgres() -> None:
    op.execute(
        "ALTER TABLE index_chunks ADD COLUMN text_search tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english', path || ' ' || text)) STORED"
    )
    op.execute("CREATE INDEX ix_index_chunks_text_search ON index_chunks USING gin (text_search)")
    if _install_pgvector():
        op.execute("ALTER TABLE index_chunks ADD COLUMN embedding_vector vector")


def _install_pgvector() -> bool:
    """Install pgvector when the server has it; return whether it is installed."""
    bind = op.get_bind()
    query = "SELECT installed_version FROM pg_available_extensions WHERE name = 'vector'"
    row = bind.execute(sa.text(query)).first()
    if row is None:
        return False
    if row[0] is not None:
        return True
    # CREATE EXTENSION needs a privileged role; without one the database keeps exact
    # search, and an administrator can install it and rerun this migration.
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION vector"))
    except sa.exc.DBAPIError:
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def _upgrade_sqlite() -> None:
    # An external-content FTS5 table kept in step with index_chunks by triggers.
    op.execute(
        "CREATE VIRTUAL TABLE index_chunks_fts USING fts5("
        "path, text, content='index_chunks', content_rowid='id', "
        "tokenize='porter unicode61')"
    )
    op.execute(
        "CREATE TRIGGER index_chunks_fts_insert AFTER INSERT ON index_chunks BEGIN "
        "INSERT INTO index_chunks_fts(rowid, path, text) VALUES (new.id, new.path, new.text); "
        "END"
    )
    op.execute(
        "CREATE TRIGGER index_chunks_fts_delete AFTER DELETE ON index_chunks BEGIN "
        "INSERT INTO index_chunks_fts(index_chunks_fts, rowid, path, text) "
        "VALUES ('delete', old.id, old.path, old.text); END"
    )
    op.execute(
        "CREATE TRIGGER index_chunks_fts_update AFTER UPDATE OF path, text ON index_chunks "
        "BEGIN "
        "INSERT INTO index_chunks_fts(index_chunks_fts, rowid, path, text) "
        "VALUES ('delete', old.id, old.path, old.text); "
        "INSERT INTO index_chunks_fts(rowid, path, text) VALUES (new.id, new.path, new.text); "
        "END"
    )


def downgrade() -> None:
    """Drop the index tables; the pgvector extension stays installed."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS index_chunks_fts")
    op.drop_table("index_state")
    with op.batch_alter_table("index_chunks", schema=None) as batch_op:
        batch_op.drop_index("ix_index_chunks_model")
        batch_op.drop_index("ix_index_chunks_content_sha256")
        batch_op.drop_index("ix_index_chunks_path")
    op.drop_table("index_chunks")
    op.drop_table("index_files")
