"""Repair on demand: rebuild the shares an object lacks and give them new homes.

``POST /v1/store/{bucket}/{name}/repair`` (``roost store repair``) collects k good shares
as a get does, rebuilds every share that is not stored on an online device with
``rebuild_shares`` (from shares, never sealing again: the rebuilt files are byte for byte
the first ones, so the manifest and the hashes stay), places them with
``place(..., keep=...)`` on devices that hold none of the object's shares, and asks those
devices to fetch them. The shares they replace are deleted on their old devices (best
effort). ``POST /v1/store/drain/DEVICE`` (``roost store drain``) does the same for every
object with a share on a device, counting that device's shares as gone and placing
nothing on it, and marks it draining so it takes no new shares. ``roost.storage.upkeep``
runs ``rebuild`` by itself for objects that need it.

One rebuild of an object runs at a time, in a hub and across hubs on one database: a
lock per object in this process (a drain, a repair on demand and the loop may meet, and
wait for each other without a database round trip), then the object's repair lease in
the database (``roost.storage.lease``), which keeps other hub replicas out.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import weakref
from collections.abc import Collection
from pathlib import Path

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy import select

from roost.api import HubContext, HubDep, PrincipalDep
from roost.errors import RoostError
from roost.fleet.service import desired_message, set_labels
from roost.storage.codec import Share, rebuild_shares
from roost.storage.exchange import Spool, collect, delete_shares, need_k
from roost.storage.lease import HOLDER, holding
from roost.storage.manifest import Manifest
from roost.storage.models import ObjectRow, ShareRow
from roost.storage.objects import (
    ObjectView,
    complete_object,
    replace_shares,
    settle_shares,
    shares_of,
    store_dir,
    to_read,
    view,
)
from roost.storage.placement import place
from roost.storage.transfer import (
    DRAIN_LABEL,
    fetch_all,
    online,
    storage_nodes,
)
from roost.wire import Desired

router = APIRouter()  # under /v1, through roost.storage.routes

# How long a repair on demand or a drain waits for another hub's rebuild of an object to
# end before it gives up with one line (the repair loop does not wait: it skips).
REPAIR_WAIT_S = 60.0


def _rebuild(manifest: Manifest, arrived: dict[int, Path], wanted: list[int], root: Path) -> Spool:
    """The share files ``wanted``, rebuilt segment by segment from k arrived ones."""
    spool = Spool(root, manifest.n)
    files = {index: path.open("rb") for index, path in sorted(arrived.items())[: manifest.k]}
    try:
        for number, entry in enumerate(manifest.segments):
            pieces = [Share(number, i, f.read(entry.share_size)) for i, f in files.items()]
            spool.add(rebuild_shares(manifest, number, pieces, wanted))
    finally:
        for f in files.values():
            f.close()
        spool.close()
    return spool


async def rebuild(
    hub: HubContext,
    tenant: str,
    obj: ObjectRow,
    manifest: Manifest,
    leaving: Collection[str] = (),
    *,
    wait_s: float = REPAIR_WAIT_S,
    holder: str = HOLDER,
) -> int:
    """Rebuild and re-place every share of ``obj`` not stored on an online device (or on
    the devices ``leaving``, which get none); answers how many shares were moved.

    One rebuild of an object at a time (see the module's doc): another in this hub is
    waited for; another hub's for up to ``wait_s``, then ``RepairBusyError``. The next one
    starts from the shares the first left. ``holder`` is this hub process in the lease
    (tests play two hubs in one process with two holders)."""

    async def now() -> int:
        current = await run_in_threadpool(_shares_now, hub, obj.id)
        return await _rebuild_locked(hub, tenant, obj, manifest, current, leaving)

    what = f"{obj.bucket}/{obj.name}"
    async with _rebuilding.setdefault((holder, obj.id), asyncio.Lock()):
        return await holding(hub.db, obj.id, what, now, holder=holder, wait_s=wait_s)


# Locks of the objects being rebuilt, by holder and object; each goes when no rebuild
# holds it any more. One holder's rebuilds share its lease, so this lock is what keeps
# two of them (a drain and the loop in one hub) apart.
_rebuilding: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def _shares_now(hub: HubContext, object_id: str) -> list[ShareRow]:
    with hub.db.session() as session:
        shares = shares_of(session, object_id)
        session.expunge_all()
        return shares


async def _rebuild_locked(
    hub: HubContext,
    tenant: str,
    obj: ObjectRow,
    manifest: Manifest,
    shares: list[ShareRow],
    leaving: Collection[str],
) -> int:
    up = await run_in_threadpool(online, hub, [s.device_id for s in shares])
    # Those on online devices first, stored first: the ones to ask (as in ``to_read``).
    shares.sort(key=lambda s: (s.device_id not in up, s.state != "stored", s.index))
    keep = {
        s.index: s.device_id
        for s in shares
        if s.state == "stored" and s.device_id in up and s.device_id not in leaving
    }
    if len(keep) == manifest.n:
        return 0
    token = secrets.token_hex(8)
    inbox, root = store_dir(hub) / "in" / token, store_dir(hub) / "out" / obj.id
    await run_in_threadpool(lambda: inbox.mkdir(parents=True))
    await run_in_threadpool(shutil.rmtree, root, True)
    try:
        arrived, problems = await collect(hub, tenant, manifest.k, shares, token)
        need_k(f"{obj.bucket}/{obj.name}", manifest.k, arrived, problems)
        # A share found bad while collecting has no healthy home either.
        keep = {i: d for i, d in keep.items() if i not in problems}
        wanted = [i for i in range(manifest.n) if i not in keep]
        nodes = await run_in_threadpool(storage_nodes, hub, tenant)
        nodes = [node for node in nodes if node.device_id not in leaving]
        spool = await run_in_threadpool(_rebuild, manifest, arrived, wanted, root)
        size = max(spool.sizes[i] for i in wanted)
        placement = place(obj.id, nodes, manifest.n, size, keep=keep)
        hashes = [h.hexdigest() for h in spool.hashes]
        moved = {i: placement[i] for i in wanted}
        rows, gone = await run_in_threadpool(
            replace_shares, hub, obj.id, moved, spool.sizes, hashes
        )
        answers = await fetch_all(hub, tenant, rows)
        await run_in_threadpool(
            settle_shares, hub, {r.id: a for r, a in zip(rows, answers, strict=True)}
        )
        await delete_shares(hub, tenant, gone)
        return len(rows)
    finally:
        await run_in_threadpool(shutil.rmtree, inbox, True)
        await run_in_threadpool(shutil.rmtree, root, True)


@router.post("/store/{bucket}/{name}/repair", tags=["store"])
async def repair_object(bucket: str, name: str, principal: PrincipalDep, hub: HubDep) -> ObjectView:
    """Rebuild and re-place every share not stored on an online device; then the stat."""
    obj, manifest, _, _ = await run_in_threadpool(to_read, hub, principal, bucket, name)
    await rebuild(hub, principal.tenant_id, obj, manifest)

    def stat() -> ObjectView:
        with hub.db.session() as session:
            current = complete_object(session, principal, bucket, name)
            now = shares_of(session, current.id)
            return view(current, now, online(hub, [s.device_id for s in now]))

    return await run_in_threadpool(stat)


class DrainView(BaseModel):
    device_id: str
    moved: int
    objects: int
    failed: dict[str, str]


@router.post("/store/drain/{device_id}", tags=["store"])
async def drain_device(device_id: str, principal: PrincipalDep, hub: HubDep) -> DrainView:
    """Mark a device draining (the ``storage.drain`` label: it takes no new shares, and the
    repair loop moves whatever it still holds), then move every share it holds to other
    devices, one object at a time, before it is retired."""

    def held() -> tuple[list[tuple[str, str]], Desired]:
        with hub.db.session() as session:
            device = set_labels(session, principal, device_id, {DRAIN_LABEL: "true"})
            rows = session.execute(
                select(ObjectRow.bucket, ObjectRow.name)
                .join(ShareRow, ShareRow.object_id == ObjectRow.id)
                .where(
                    ObjectRow.tenant_id == principal.tenant_id,
                    ObjectRow.state == "complete",
                    ShareRow.device_id == device_id,
                )
                .distinct()
            ).all()
            return [(bucket, name) for bucket, name in rows], desired_message(device)

    objects, desired = await run_in_threadpool(held)
    hub.publish_desired(device_id, desired)
    moved, failed = 0, {}
    for bucket, name in objects:
        try:
            obj, manifest, _, _ = await run_in_threadpool(to_read, hub, principal, bucket, name)
            moved += await rebuild(hub, principal.tenant_id, obj, manifest, {device_id})
        except RoostError as err:
            failed[f"{bucket}/{name}"] = str(err)
    return DrainView(device_id=device_id, moved=moved, objects=len(objects), failed=failed)
