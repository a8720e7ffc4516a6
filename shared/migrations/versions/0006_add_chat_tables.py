"""add chat conversations, updates and deliveries

Revision ID: 0006
Revises: 0005

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import shared.timestamps

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the chat adapters' tables."""
    op.create_table(
        "chat_conversations",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("platform", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("chat_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("thread_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.JSON(), nullable=False),
        sa.Column("created_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "platform", "tenant", "chat_id", "thread_id", name="uq_chat_conversations_key"
        ),
    )
    op.create_table(
        "chat_updates",
        sa.Column("platform", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("delivery_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("turn_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("received_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform", "delivery_id"),
    )
    op.create_table(
        "chat_deliveries",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("platform", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("turn_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("placeholder", sa.JSON(), nullable=True),
        sa.Column("chunks_sent", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("created_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.timestamps.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("chat_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_chat_deliveries_turn_id", ["turn_id"], unique=False)


def downgrade() -> None:
    """Drop the chat adapters' tables; the sessions they opened stay."""
    with op.batch_alter_table("chat_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_deliveries_turn_id")

    op.drop_table("chat_deliveries")
    op.drop_table("chat_updates")
    op.drop_table("chat_conversations")
