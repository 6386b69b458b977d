"""Deployments and their rollouts in the database.

A *deployment* is "app NAME runs on the devices SELECTOR picks", for good: devices that
join or are relabelled into the selector later get it too. Each ``roost deploy`` of a
version makes a *rollout* of the deployment; a newer rollout supersedes the older one.
The rollout's ``state`` is the pure state machine's ``RolloutState`` as JSON
(``roost.rollouts.serial``); ``status`` repeats its status (plus the hub's own
``waiting``: no device matched yet, and ``superseded``) so it can be queried.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("tenant_id", "app", "selector", name="uq_deployments_target"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    app: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(String(512))
    version: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RolloutRow(Base):
    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_status", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    app: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    # waiting, running, paused, halted, aborted, done or superseded
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None, nullable=True)
    # Bumped on every write (the ORM's version counter): two hub replicas stepping the
    # same rollout cannot both win; the loser's write fails and it steps again.
    revision: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __mapper_args__ = {"version_id_col": revision}  # noqa: RUF012  (SQLAlchemy declares it)
