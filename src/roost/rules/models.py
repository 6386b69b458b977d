"""Rules on the hub, in the database: the rules, the engine's place in the event store,
its window state, and the durable outbox of actions to deliver.

- ``RuleRow``: one rule of a tenant, as the YAML the user wrote (``roost rules apply``);
  ``parse_rules`` turns it back into a ``Rule``.
- ``RuleCursor``: per tenant, the ``seq`` of the last stored event the engine has
  evaluated and the engine's window state (``Engine.dump()``), written in the same
  transaction as the outbox rows of the firings up to that event, so a hub restarted
  anywhere neither loses nor repeats a firing.
- ``ActionRow``: one action of a firing (``RenderedAction``), delivered at least once:
  ``pending`` until delivered, retried at ``next_at`` with backoff, ``dead`` after the
  last retry (a dead letter), ``delivered`` when done. ``key`` is the idempotency key,
  unique per tenant, sent along with the action.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class RuleRow(Base):
    __tablename__ = "rules"
    __table_args__ = (UniqueConstraint("tenant_id", "rule_id", name="uq_rules_rule_id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The rule's own id, as written in its YAML.
    rule_id: Mapped[str] = mapped_column(String(64))
    # The rule alone, as YAML (one mapping), the way the user wrote it.
    source: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(default=True)
    version: Mapped[int] = mapped_column(default=1)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RuleCursor(Base):
    __tablename__ = "rule_cursors"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    # The last event (EventRow.seq) the engine evaluated.
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    windows: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ActionRow(Base):
    __tablename__ = "actions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key", name="uq_actions_key"),
        Index("ix_actions_status_next_at", "status", "next_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    # The rendered action's fields (RenderedAction.fields).
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending, delivered or dead
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)
