"""store: objects and their shares on devices

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 16:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import roost.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_objects",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", roost.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", roost.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_store_objects_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_objects")),
    )
    with op.batch_alter_table("store_objects", schema=None) as batch_op:
        batch_op.create_index("ix_store_objects_name", ["tenant_id", "bucket", "name"])
    op.create_table(
        "store_shares",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_store_shares_device_id_devices")
        ),
        sa.ForeignKeyConstraint(
            ["object_id"],
            ["store_objects.id"],
            name=op.f("fk_store_shares_object_id_store_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_shares")),
    )
    with op.batch_alter_table("store_shares", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_store_shares_device_id"), ["device_id"])
        batch_op.create_index(batch_op.f("ix_store_shares_object_id"), ["object_id"])


def downgrade() -> None:
    op.drop_table("store_shares")
    op.drop_table("store_objects")
