"""The catalog's index in the database: every release a tenant published.

The signed truth is the tenant's TUF repository (``roost.catalog.repository``); this
table answers the questions a person asks — which versions, who published them, how
big — without reading metadata files.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class AppRelease(Base):
    __tablename__ = "app_releases"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version", name="uq_app_releases_release"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    # "app" or "system"
    kind: Mapped[str] = mapped_column(String(16))
    # The file's path in the tenant's TUF repository: apps/<name>/<name>-<version>.tar.gz
    target_path: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column()
    published_by: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
