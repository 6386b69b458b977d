"""Stored objects and their shares in the hub's database.

An object is ``pending`` from the moment its put starts until enough of its shares are
on devices (the repair threshold), then ``complete``; only complete objects are listed
or read. A put that dies half-way leaves a pending row, which the next put of the same
name replaces. Its manifest is the codec's (``Manifest.to_json``); its data key is
wrapped with the tenant's key (``roost.storage.keys``), never stored as it is.

A share row is one share index of an object on one device: ``pending`` while the
device fetches it, ``stored`` once the device said it has it, ``corrupt`` when what it
sent back did not match ``hash`` (BLAKE3 of the whole share file), ``failed`` when the
device could not take it.

A quota row is the owner's choice for one tenant: ``quota_bytes`` the most bytes of
objects it may keep, NULL for no limit. A tenant without a row has the hub's
``store_tenant_quota_bytes``. The quota check also locks on this table (``usage.lock``).

A repair lease row says which hub process (``holder``) is rebuilding an object, until
``expires_at``; it is taken, renewed and released by ``roost.storage.lease`` so that hub
replicas on one database never rebuild the same object at once. It has no foreign key:
a lease outlives nothing but its own expiry, whatever happens to the object.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from roost.db import Base, utcnow


class ObjectRow(Base):
    __tablename__ = "store_objects"
    __table_args__ = (Index("ix_store_objects_name", "tenant_id", "bucket", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    bucket: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    # The manifest's code, so listing needs no manifest parsed (one may be ~300 KB).
    k: Mapped[int] = mapped_column(default=0)
    n: Mapped[int] = mapped_column(default=0)
    manifest: Mapped[str] = mapped_column(Text, default="")
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ShareRow(Base):
    __tablename__ = "store_shares"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    object_id: Mapped[str] = mapped_column(
        ForeignKey("store_objects.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column()
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text, default="")


class QuotaRow(Base):
    __tablename__ = "store_quotas"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RepairLeaseRow(Base):
    __tablename__ = "store_repair_leases"

    object_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime] = mapped_column()
