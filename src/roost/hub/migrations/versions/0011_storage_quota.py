"""store: a storage quota per tenant

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 15:35:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import roost.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_quotas",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", roost.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_store_quotas_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_store_quotas")),
    )


def downgrade() -> None:
    op.drop_table("store_quotas")
