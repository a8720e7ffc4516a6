"""add agent modes, tool allowlists, message positions

Revision ID: 0002
Revises: 0001

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import shared.timestamps  # noqa: F401

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add execution modes, tool allowlists and turn triggers.

    Existing rows get the defaults of a reactive, active agent.
    """
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tools", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "mode",
                sqlmodel.sql.sqltypes.AutoString(length=20),
                nullable=False,
                server_default="reactive",
            )
        )
        batch_op.add_column(
            sa.Column(
                "status",
                sqlmodel.sql.sqltypes.AutoString(length=20),
                nullable=False,
                server_default="active",
            )
        )
        batch_op.add_column(
            sa.Column("max_auto_turns", sa.Integer(), nullable=False, server_default="5")
        )
        batch_op.add_column(
            sa.Column("think_interval_s", sa.Integer(), nullable=False, server_default="300")
        )
        batch_op.add_column(
            sa.Column("tick_interval_s", sa.Integer(), nullable=False, server_default="60")
        )
        batch_op.add_column(sa.Column("inject_context", sa.Boolean(), nullable=True))

    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("auto_turns", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("next_wake_at", sa.Float(), nullable=True))

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "trigger",
                sqlmodel.sql.sqltypes.AutoString(length=20),
                nullable=False,
                server_default="message",
            )
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index(
            "ix_messages_session_position", ["session_id", "position"], unique=False
        )
    # Number existing messages by the turn they started or answered.
    op.execute(
        "UPDATE messages SET position = COALESCE("
        "(SELECT 2 * t.number - 1 FROM turns t WHERE t.message_id = messages.id), "
        "(SELECT 2 * t.number FROM turns t WHERE t.reply_message_id = messages.id), 0)"
    )

    with op.batch_alter_table("session_leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("woken_at", sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("session_leases", schema=None) as batch_op:
        batch_op.drop_column("woken_at")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_session_position")
        batch_op.drop_column("position")

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("trigger")

    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("next_wake_at")
        batch_op.drop_column("auto_turns")

    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("inject_context")
        batch_op.drop_column("tick_interval_s")
        batch_op.drop_column("think_interval_s")
        batch_op.drop_column("max_auto_turns")
        batch_op.drop_column("status")
        batch_op.drop_column("mode")
        batch_op.drop_column("tools")
