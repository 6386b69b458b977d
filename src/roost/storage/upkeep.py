"""Keeping the store's data alive by itself: the hub's repair loop.

Devices scrub their own shares and report the bad ones (``share-*`` in
``roost.agent.shares``, ``POST /v1/store/shares/ID/problem``), which marks them
``missing`` or ``corrupt``. Every ``store_repair_interval_s`` the hub looks at every
complete object's shares; an object needs repair when

- a share is known bad (``missing``, ``corrupt``, or ``failed`` when a put or repair
  placed it): it is gone for good, and its device is online to take the replacement;
- a share is on a device that is revoked, draining (``storage.drain``), or offline for
  longer than ``store_repair_grace_s``;
- fewer shares than ``repair_threshold(k, n)`` are healthy (stored on an online device),
  even within the grace.

Each such object goes through ``rebuild`` (the on-demand repair's steps), with the
revoked, draining and long-gone devices leaving. After each object the loop waits as long
as moving its rebuilt shares takes at ``store_repair_bytes_per_s``, so repair never
floods the hub's or the devices' links. A device offline for less than the grace is
left alone: a reboot does not move its shares.

With several hub replicas on one database every replica runs this loop; an object whose
repair lease another hub holds (``roost.storage.lease``) is skipped, without waiting and
without counting as a failure: the other hub is repairing it, and the next pass sees
what it left.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from roost.api import HubContext
from roost.db import Database, utcnow
from roost.errors import RepairBusyError, RoostError
from roost.fleet.models import Device
from roost.storage import lease
from roost.storage.manifest import Manifest
from roost.storage.models import ObjectRow, ShareRow
from roost.storage.objects import shares_of
from roost.storage.placement import repair_threshold
from roost.storage.repair import rebuild
from roost.storage.transfer import DRAIN_LABEL

log = logging.getLogger("roost.storage.upkeep")

BAD_STATES = ("missing", "corrupt", "failed")


@dataclass(frozen=True)
class Due:
    """An object the loop should repair, the devices its shares must leave, and why."""

    object_id: str
    tenant_id: str
    leaving: frozenset[str]
    why: str


def due_for_repair(db: Database, grace_s: float, now: dt.datetime | None = None) -> list[Due]:
    """Every complete object that needs repair (see the module's doc), oldest first."""
    now = now or utcnow()
    grace = dt.timedelta(seconds=grace_s)
    with db.session() as session:
        rows = session.execute(
            select(
                ObjectRow.id,
                ObjectRow.tenant_id,
                ObjectRow.k,
                ObjectRow.n,
                ShareRow.device_id,
                ShareRow.state,
                ShareRow.index,
            )
            .join(ShareRow, ShareRow.object_id == ObjectRow.id)
            .where(ObjectRow.state == "complete")
            .order_by(ObjectRow.completed_at, ObjectRow.id)
        ).all()
        ids = {row.device_id for row in rows}
        devices = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(ids))).all()}
        gone: set[str] = set()  # revoked, draining, or offline past the grace
        up: set[str] = set()
        for device in devices.values():
            if device.online and device.state == "active":
                up.add(device.id)
            last = device.last_seen
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=dt.UTC)
            if (
                device.state != "active"
                or DRAIN_LABEL in device.labels
                or (not device.online and (last is None or now - last > grace))
            ):
                gone.add(device.id)
    objects: dict[str, tuple[str, int, int, list[tuple[str, str, int]]]] = {}
    for object_id, tenant_id, k, n, device_id, state, index in rows:
        entry = objects.setdefault(object_id, (tenant_id, k, n, []))
        entry[3].append((device_id, state, index))
    due = []
    for object_id, (tenant_id, k, n, shares) in objects.items():
        healthy = sum(1 for d, state, _ in shares if state == "stored" and d in up - gone)
        reasons = [f"share {index} is {state}" for _, state, index in shares if state in BAD_STATES]
        reasons += [f"share {index} is on device {d}, gone" for d, _, index in shares if d in gone]
        if healthy < repair_threshold(k, n):
            reasons.append(f"{healthy} of {n} shares healthy")
        if reasons:
            leaving = frozenset(d for d, _, _ in shares if d in gone)
            due.append(Due(object_id, tenant_id, leaving, "; ".join(reasons)))
    return due


def _load(hub: HubContext, object_id: str) -> tuple[ObjectRow, Manifest, list[ShareRow]] | None:
    with hub.db.session() as session:
        obj = session.get(ObjectRow, object_id)
        if obj is None or obj.state != "complete":
            return None  # deleted or replaced since it was found
        shares = shares_of(session, object_id)
        session.expunge_all()
    return obj, Manifest.from_json(obj.manifest), shares


class Backoff:
    """Objects that could not be repaired wait before the next try: the loop's interval
    doubled at each failure, at most ``cap_s`` (each try collects k shares)."""

    def __init__(self, base_s: float, cap_s: float = 3600.0) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self._next: dict[str, tuple[int, float]] = {}  # object id: (failures, next try)

    def ready(self, object_id: str, now: float) -> bool:
        return self._next.get(object_id, (0, 0.0))[1] <= now

    def failed(self, object_id: str, now: float) -> float:
        """Record a failure; answers the seconds until the next try."""
        failures = self._next.get(object_id, (0, 0.0))[0] + 1
        wait: float = min(self.cap_s, self.base_s * 2.0**failures)
        self._next[object_id] = (failures, now + wait)
        return wait

    def keep_only(self, object_ids: set[str]) -> None:
        """Forget objects that no longer need repair (repaired, deleted)."""
        self._next = {k: v for k, v in self._next.items() if k in object_ids}


def _sweep_leases(db: Database) -> None:
    with db.session() as session:
        lease.sweep(session, lease.db_now(session))


async def repair_pass(hub: HubContext, backoff: Backoff | None = None) -> int:
    """Repair every object that needs it, one at a time at the configured rate; answers
    how many shares were moved. An object that cannot be repaired now (fewer than k of
    its shares reachable, no device to take a share) is logged and, with ``backoff``,
    tried again later, else at the next pass."""
    moved = 0
    grace = hub.settings.store_repair_grace_s
    await run_in_threadpool(_sweep_leases, hub.db)
    found = await run_in_threadpool(due_for_repair, hub.db, grace)
    if backoff is not None:
        backoff.keep_only({due.object_id for due in found})
        found = [due for due in found if backoff.ready(due.object_id, time.monotonic())]
    for due in found:
        loaded = await run_in_threadpool(_load, hub, due.object_id)
        if loaded is None:
            continue
        obj, manifest, shares = loaded
        what = f"{obj.bucket}/{obj.name}"
        try:
            count = await rebuild(hub, due.tenant_id, obj, manifest, due.leaving, wait_s=0)
        except RepairBusyError as err:  # another hub holds its lease: it is being repaired
            log.info("skipping %s (%s) in this pass: %s", what, due.why, err)
            continue
        except RoostError as err:
            wait = backoff.failed(due.object_id, time.monotonic()) if backoff else 0.0
            log.warning("cannot repair %s (%s) now (next try in %gs): %s", what, due.why, wait, err)
            continue
        log.info("repaired %s (%s): %d share(s) rebuilt and placed", what, due.why, count)
        moved += count
        share_bytes = max((s.size for s in shares), default=0)
        await asyncio.sleep(count * share_bytes / hub.settings.store_repair_bytes_per_s)
    return moved


async def repair_loop(hub: HubContext) -> None:
    """``repair_pass`` every ``store_repair_interval_s``, for the hub's life."""
    backoff = Backoff(hub.settings.store_repair_interval_s)
    while True:
        await asyncio.sleep(hub.settings.store_repair_interval_s)
        try:
            await repair_pass(hub, backoff)
        except Exception:
            log.exception("the store's repair pass failed")
