"""function triggers and edge functions: where a function runs, what starts it, and
invocations reported by devices (their device and idempotency key)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("functions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("placement", sa.String(length=255), nullable=False, server_default="hub")
        )
        batch_op.add_column(sa.Column("trigger", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("cron", sa.String(length=128), nullable=False, server_default="")
        )
    with op.batch_alter_table("function_invocations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("key", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint(
            "uq_function_invocations_key", ["function_id", "device_id", "key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("function_invocations", schema=None) as batch_op:
        batch_op.drop_constraint("uq_function_invocations_key", type_="unique")
        batch_op.drop_column("key")
        batch_op.drop_column("device_id")
    with op.batch_alter_table("functions", schema=None) as batch_op:
        batch_op.drop_column("cron")
        batch_op.drop_column("trigger")
        batch_op.drop_column("placement")
