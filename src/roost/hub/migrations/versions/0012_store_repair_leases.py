"""store: a repair lease per object, so hub replicas never rebuild one object at once

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import roost.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_repair_leases",
        sa.Column("object_id", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", roost.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("object_id", name=op.f("pk_store_repair_leases")),
    )


def downgrade() -> None:
    op.drop_table("store_repair_leases")
