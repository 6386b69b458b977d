"""The fleet's tables: devices, their certificates, join tokens and commands."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class JoinTokenRow(Base):
    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # None: any number of devices may join with it until it expires. No column default:
    # the ORM would put it in place of an explicit None and make the token single-use.
    uses_left: Mapped[int | None] = mapped_column()
    expires_at: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # "active" or "revoked"
    state: Mapped[str] = mapped_column(String(16), default="active")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    online: Mapped[bool] = mapped_column(default=False)
    # Orders the connections of one device, so a late last will cannot mark a fresh
    # connection offline.
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seen: Mapped[dt.datetime | None] = mapped_column(default=None)
    enrolled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    cert_pem: Mapped[str] = mapped_column(Text)
    cert_not_after: Mapped[dt.datetime]
    desired: Mapped[dict[str, Any]] = mapped_column(default=dict)
    desired_version: Mapped[int] = mapped_column(default=1)
    # The heartbeat interval in the desired state, when one is set there: the presence
    # check reads it without decoding every device's desired state.
    heartbeat_s: Mapped[float | None] = mapped_column(default=None)
    reported: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reported_version: Mapped[int] = mapped_column(default=0)
    reported_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class DeviceCert(Base):
    """Every certificate ever issued to a device, so revocation can name them all."""

    __tablename__ = "device_certs"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    not_after: Mapped[dt.datetime]
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class CommandRow(Base):
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_status_deadline", "status", "deadline"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # "pending", "ok", "error" or "timeout"
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result: Mapped[Any] = mapped_column(JSON, default=None, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deadline: Mapped[dt.datetime]
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
