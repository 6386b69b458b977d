"""The event store: CloudEvents 1.0, one row each, unique by (source, id)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        # A device's outbox delivers at least once; this makes the second copy a no-op.
        # Per tenant: one tenant's events can never shadow another's.
        UniqueConstraint("tenant_id", "source", "event_id", name="uq_events_tenant_source_id"),
        Index("ix_events_tenant_type_time", "tenant_id", "type", "time"),
    )

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    event_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(String(256), default="")
    device_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    time: Mapped[dt.datetime]
    data: Mapped[Any] = mapped_column(JSON, default=None, nullable=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ScheduleRow(Base):
    """A cron expression that emits an event each time it comes round (UTC)."""

    __tablename__ = "schedules"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_schedules_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    cron: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(256))
    subject: Mapped[str] = mapped_column(String(256), default="")
    data: Mapped[Any] = mapped_column(JSON, default=None, nullable=True)
    # The next time it fires; the hub's loop picks schedules whose time has come.
    next_at: Mapped[dt.datetime] = mapped_column(index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
