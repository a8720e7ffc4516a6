"""add artifacts and artifact references

Revision ID: 0004
Revises: 0003

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import shared.timestamps

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the content-addressed store's metadata and reference tables."""
    op.create_table(
        "artifacts",
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "media_type",
            sqlmodel.sql.sqltypes.AutoString(length=200),
            nullable=False,
            server_default="application/octet-stream",
        ),
        sa.Column("created_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_put_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("digest"),
    )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_artifacts_pinned_last_put", ["pinned", "last_put_at"], unique=False
        )

    op.create_table(
        "artifact_references",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("owner_kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("owner_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["digest"], ["artifacts.digest"]),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest", "owner_kind", "owner_id"),
    )
    with op.batch_alter_table("artifact_references", schema=None) as batch_op:
        batch_op.create_index(
            "ix_artifact_references_owner", ["owner_kind", "owner_id"], unique=False
        )
        batch_op.create_index("ix_artifact_references_session", ["session_id"], unique=False)


def downgrade() -> None:
    """Drop the content-addressed store's tables; stored bytes are left in the store."""
    with op.batch_alter_table("artifact_references", schema=None) as batch_op:
        batch_op.drop_index("ix_artifact_references_session")
        batch_op.drop_index("ix_artifact_references_owner")

    op.drop_table("artifact_references")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index("ix_artifacts_pinned_last_put")

    op.drop_table("artifacts")
