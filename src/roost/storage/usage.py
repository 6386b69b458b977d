"""A tenant's storage usage and quota in the database, and their routes:
``GET /v1/store/usage`` (the caller's tenant; the owner may name another) and
``PUT|DELETE /v1/store/quota`` (the owner only: a tenant's admin must not lift its own).

The decision itself (which quota holds, whether a put fits) is pure, in ``quota.py``;
here are the reads it needs and the lock that makes them safe: a put reads the tenant's
usage and records its own reservation in one transaction holding the tenant's lock
(``lock``), so two puts at once see each other and cannot both take the same room.

Usage counts complete objects and the reservations of puts in progress (pending objects:
the size a put declared, then the size it spooled). A pending object left by a hub that
died mid-put keeps its reservation until a put of the same name replaces it, or for
``STALE_PENDING_S`` at most.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, func, not_, select, update
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.access.models import Tenant
from roost.api import HubContext, HubDep, PrincipalDep
from roost.db import utcnow
from roost.errors import NotFoundError, ValidationError
from roost.fleet.models import Device
from roost.settings import HubSettings
from roost.storage.models import ObjectRow, QuotaRow, ShareRow
from roost.storage.quota import Override, Usage, effective_quota, room

router = APIRouter(tags=["store"])  # under /v1, through roost.storage.routes

# A pending object older than this belongs to no put still running: its reservation lapses.
STALE_PENDING_S = 24 * 3600
# pg_advisory_xact_lock class of the quota locks ("roqt"); the tenant's hash is the key.
_LOCK_CLASS = 0x726F7174
MAX_QUOTA = 1 << 60


def lock(session: Session, tenant_id: str) -> None:
    """Hold the tenant's quota lock until the transaction ends; call it first, before any
    read of usage, so the reads see every put that held the lock before."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_LOCK_CLASS, func.hashtext(tenant_id))))
        return
    # SQLite has one writer, and pysqlite begins a transaction only at its first write: a
    # write that changes nothing makes this transaction the writer before it reads.
    session.execute(
        update(QuotaRow)
        .where(QuotaRow.tenant_id == tenant_id)
        .values(tenant_id=QuotaRow.tenant_id)
        .execution_options(synchronize_session=False)
    )


def quota_of(session: Session, settings: HubSettings, tenant_id: str) -> tuple[int | None, bool]:
    """The tenant's quota (None: no limit), and whether the owner set it for this tenant."""
    row = session.get(QuotaRow, tenant_id)
    override = Override(row.quota_bytes) if row is not None else None
    return effective_quota(settings.store_tenant_quota_bytes, override), row is not None


def _counted(tenant_id: str, now: dt.datetime) -> ColumnElement[bool]:
    fresh = now - dt.timedelta(seconds=STALE_PENDING_S)
    return and_(
        ObjectRow.tenant_id == tenant_id,
        (ObjectRow.state == "complete")
        | ((ObjectRow.state == "pending") & (ObjectRow.created_at > fresh)),
    )


def usage_of(
    session: Session, tenant_id: str, now: dt.datetime, replacing: tuple[str, str] | None = None
) -> Usage:
    """What counts against the tenant's quota; ``replacing`` (bucket, name) leaves out the
    objects of that name, which the put being decided replaces if it completes."""
    return _usage_and_counts(session, tenant_id, now, replacing)[0]


def _usage_and_counts(
    session: Session, tenant_id: str, now: dt.datetime, replacing: tuple[str, str] | None = None
) -> tuple[Usage, dict[str, int]]:
    """``usage_of``, and how many objects count, by state (``complete``, ``pending``)."""
    size = func.coalesce(func.sum(ObjectRow.size), 0)
    query = select(ObjectRow.state, func.count(), size).where(_counted(tenant_id, now))
    if replacing is not None:
        query = query.where(
            not_(and_(ObjectRow.bucket == replacing[0], ObjectRow.name == replacing[1]))
        )
    rows = session.execute(query.group_by(ObjectRow.state)).all()
    sums = {state: int(total) for state, _, total in rows}
    usage = Usage(stored=sums.get("complete", 0), pending=sums.get("pending", 0))
    return usage, {state: int(count) for state, count, _ in rows}


# -- routes -------------------------------------------------------------------------------


class DeviceUsage(BaseModel):
    device_id: str
    online: bool
    shares: int
    # Bytes of this tenant's shares the hub counts as stored on the device.
    bytes: int
    # As the device last reported them (``storage_quota``, ``storage_free``); None: never.
    offered_bytes: int | None
    free_bytes: int | None


class TenantUsage(BaseModel):
    tenant: str
    objects: int
    bytes: int
    pending_objects: int
    pending_bytes: int
    raw_bytes: int
    quota_bytes: int | None
    # "tenant": the owner set it for this tenant; "hub": the hub's default.
    quota_from: str
    room_bytes: int | None
    devices: list[DeviceUsage]


class QuotaRequest(BaseModel):
    tenant: str = ""
    # None: no limit.
    quota_bytes: int | None


def _metric(metrics: dict[str, object], name: str) -> int | None:
    value = metrics.get(name)
    return int(value) if isinstance(value, int | float) else None


def tenant_usage(session: Session, settings: HubSettings, tenant_id: str) -> TenantUsage:
    usage, counts = _usage_and_counts(session, tenant_id, utcnow())
    per_device = {
        device_id: (int(shares), int(size))
        for device_id, shares, size in session.execute(
            select(ShareRow.device_id, func.count(), func.coalesce(func.sum(ShareRow.size), 0))
            .join(ObjectRow, ObjectRow.id == ShareRow.object_id)
            .where(ObjectRow.tenant_id == tenant_id, ShareRow.state == "stored")
            .group_by(ShareRow.device_id)
        )
    }
    devices = []
    for device in session.scalars(
        select(Device).where(Device.tenant_id == tenant_id).order_by(Device.id)
    ):
        offered = _metric(device.metrics, "storage_quota")
        shares, size = per_device.get(device.id, (0, 0))
        if offered or shares:
            free = _metric(device.metrics, "storage_free")
            devices.append(
                DeviceUsage(
                    device_id=device.id,
                    online=device.online,
                    shares=shares,
                    bytes=size,
                    offered_bytes=offered,
                    free_bytes=free,
                )
            )
    quota, own = quota_of(session, settings, tenant_id)
    return TenantUsage(
        tenant=tenant_id,
        objects=counts.get("complete", 0),
        bytes=usage.stored,
        pending_objects=counts.get("pending", 0),
        pending_bytes=usage.pending,
        raw_bytes=sum(size for _, size in per_device.values()),
        quota_bytes=quota,
        quota_from="tenant" if own else "hub",
        room_bytes=room(quota, usage),
        devices=devices,
    )


def _tenant(session: Session, principal: Principal, tenant: str) -> str:
    """The tenant named (the caller's own if none); another tenant's only for the owner."""
    if not tenant or tenant == principal.tenant_id:
        return principal.tenant_id
    principal.require_owner()
    if session.get(Tenant, tenant) is None:
        raise NotFoundError(f"no tenant {tenant}")
    return tenant


@router.get("/store/usage")
async def get_usage(principal: PrincipalDep, hub: HubDep, tenant: str = "") -> TenantUsage:
    """The tenant's objects, their bytes and their shares' bytes on each device, and its
    quota."""

    def run() -> TenantUsage:
        with hub.db.session() as session:
            return tenant_usage(session, hub.settings, _tenant(session, principal, tenant))

    return await run_in_threadpool(run)


@router.put("/store/quota")
async def set_quota(body: QuotaRequest, principal: PrincipalDep, hub: HubDep) -> TenantUsage:
    """Set a tenant's quota (``quota_bytes`` None: no limit). The hub's owner only."""
    principal.require_owner()
    if body.quota_bytes is not None and not 0 <= body.quota_bytes <= MAX_QUOTA:
        raise ValidationError(f"a quota is 0 to {MAX_QUOTA} bytes, not {body.quota_bytes}")
    return await run_in_threadpool(_set_quota, hub, principal, body.tenant, body.quota_bytes, True)


@router.delete("/store/quota")
async def unset_quota(principal: PrincipalDep, hub: HubDep, tenant: str = "") -> TenantUsage:
    """Give a tenant the hub's default quota again. The hub's owner only."""
    principal.require_owner()
    return await run_in_threadpool(_set_quota, hub, principal, tenant, None, False)


def _set_quota(
    hub: HubContext, principal: Principal, tenant: str, quota_bytes: int | None, own: bool
) -> TenantUsage:
    with hub.db.session() as session:
        tenant_id = _tenant(session, principal, tenant)
        row = session.get(QuotaRow, tenant_id)
        if not own:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(QuotaRow(tenant_id=tenant_id, quota_bytes=quota_bytes))
        else:
            row.quota_bytes, row.updated_at = quota_bytes, utcnow()
        session.flush()
        return tenant_usage(session, hub.settings, tenant_id)
