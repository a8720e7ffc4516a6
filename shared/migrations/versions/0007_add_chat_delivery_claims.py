"""add chat delivery claims and indexes for reconciling and pruning

Revision ID: 0007
Revises: 0006

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the claim columns of chat deliveries and the indexes their scans use.

    Existing deliveries start unclaimed.
    """
    with op.batch_alter_table("chat_deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("claim_token", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("claimed_until", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.create_index(
            "ix_chat_deliveries_status_updated_at", ["status", "updated_at"], unique=False
        )

    with op.batch_alter_table("chat_updates", schema=None) as batch_op:
        batch_op.create_index("ix_chat_updates_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    """Drop the claim columns and the indexes."""
    with op.batch_alter_table("chat_updates", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_updates_received_at")

    with op.batch_alter_table("chat_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_deliveries_status_updated_at")
        batch_op.drop_column("claimed_until")
        batch_op.drop_column("claim_token")
