"""Functions on the hub, in the database.

- ``FunctionRow``: one function of a tenant, its current version, its limits, where it runs
  (``placement``: ``hub``, or a label selector of the devices that run it) and what starts
  it besides ``roost fn invoke`` and (on the hub) ``POST /v1/fn/{name}``: an event
  ``trigger`` (``{"type": [...], "source": [...], "subject": [...]}``) and a ``cron``.
- ``FunctionVersion``: the code of each version deployed (the files as JSON, the module
  holding ``handle``), kept after newer ones.
- ``Invocation``: one run of a function: when, which version, what started it (``cli``,
  ``http``, ``rule``), how long it took, ok or not, the result or the error, and the tail
  of what it printed. The newest ``KEEP_INVOCATIONS`` of a function are kept. A device
  reports the invocations of its edge functions with its ``device_id`` and the
  invocation's idempotency key (the event's id and the function): one row per key, however
  often the device sends it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class FunctionRow(Base):
    __tablename__ = "functions"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_functions_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(default=1)
    timeout_s: Mapped[float] = mapped_column()
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    concurrency: Mapped[int] = mapped_column()
    network: Mapped[bool] = mapped_column(default=False)
    placement: Mapped[str] = mapped_column(String(255), default="hub")
    trigger: Mapped[Any] = mapped_column(JSON, default=None, nullable=True)
    cron: Mapped[str] = mapped_column(String(128), default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class FunctionVersion(Base):
    __tablename__ = "function_versions"
    __table_args__ = (
        UniqueConstraint("function_id", "version", name="uq_function_versions_version"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    function_id: Mapped[str] = mapped_column(ForeignKey("functions.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    # {relative path: source} as JSON; ``entry`` is the module that defines handle().
    files: Mapped[str] = mapped_column(Text)
    entry: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column()
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Invocation(Base):
    __tablename__ = "function_invocations"
    __table_args__ = (
        Index("ix_function_invocations_function", "function_id", "id"),
        UniqueConstraint("function_id", "device_id", "key", name="uq_function_invocations_key"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    function_id: Mapped[str] = mapped_column(ForeignKey("functions.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    trigger: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column()
    ok: Mapped[bool] = mapped_column()
    cold: Mapped[bool] = mapped_column(default=False)
    # The result as JSON (its first RESULT_CHARS), or the error; the output's tail.
    result: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    device_id: Mapped[str | None] = mapped_column(String(64), default=None, nullable=True)
    key: Mapped[str | None] = mapped_column(String(255), default=None, nullable=True)
