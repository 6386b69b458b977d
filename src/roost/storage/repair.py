"""Repair on demand: rebuild the shares an object lacks and give them new homes.

``POST /v1/store/{bucket}/{name}/repair`` (``roost store repair``) collects k good shares
as a get does, rebuilds every share that is not stored on an online device with
``rebuild_shares`` (from shares, never sealing again: the rebuilt files are byte for byte
the first ones, so the manifest and the hashes stay), places them with
``place(..., keep=...)`` on devices that hold none of the object's shares, and asks those
devices to fetch them. The shares they replace are deleted on their old devices (best
effort). Nothing runs it by itself yet: a repair loop would call the same steps for
objects whose healthy shares fall below the repair threshold.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from roost.api import HubDep, PrincipalDep
from roost.storage.codec import Share, rebuild_shares
from roost.storage.exchange import Spool, collect, delete_shares, need_k
from roost.storage.manifest import Manifest
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
from roost.storage.transfer import ask_all, online, storage_nodes, timeout_for

router = APIRouter()  # under /v1, through roost.storage.routes


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


@router.post("/store/{bucket}/{name}/repair", tags=["store"])
async def repair_object(bucket: str, name: str, principal: PrincipalDep, hub: HubDep) -> ObjectView:
    """Rebuild and re-place every share not stored on an online device; then the stat."""
    tenant = principal.tenant_id
    obj, manifest, _, shares = await run_in_threadpool(to_read, hub, principal, bucket, name)
    up = await run_in_threadpool(online, hub, [s.device_id for s in shares])
    keep = {s.index: s.device_id for s in shares if s.state == "stored" and s.device_id in up}
    if len(keep) < manifest.n:
        token = secrets.token_hex(8)
        inbox, root = store_dir(hub) / "in" / token, store_dir(hub) / "out" / obj.id
        await run_in_threadpool(lambda: inbox.mkdir(parents=True))
        await run_in_threadpool(shutil.rmtree, root, True)
        try:
            arrived, problems = await collect(hub, tenant, manifest.k, shares, token)
            need_k(f"{bucket}/{name}", manifest.k, arrived, problems)
            # A share found bad while collecting has no healthy home either.
            keep = {i: d for i, d in keep.items() if i not in problems}
            wanted = [i for i in range(manifest.n) if i not in keep]
            spool = await run_in_threadpool(_rebuild, manifest, arrived, wanted, root)
            nodes = await run_in_threadpool(storage_nodes, hub, tenant)
            size = max(spool.sizes[i] for i in wanted)
            placement = place(obj.id, nodes, manifest.n, size, keep=keep)
            hashes = [h.hexdigest() for h in spool.hashes]
            moved = {i: placement[i] for i in wanted}
            rows, gone = await run_in_threadpool(
                replace_shares, hub, obj.id, moved, spool.sizes, hashes
            )
            asks = [
                (
                    r.device_id,
                    "share-fetch",
                    {"share": r.id, "size": r.size, "hash": r.hash},
                    timeout_for(hub, r.size),
                )
                for r in rows
            ]
            answers = await ask_all(hub, tenant, asks)
            await run_in_threadpool(
                settle_shares, hub, {r.id: a for r, a in zip(rows, answers, strict=True)}
            )
            await delete_shares(hub, tenant, gone)
        finally:
            await run_in_threadpool(shutil.rmtree, inbox, True)
            await run_in_threadpool(shutil.rmtree, root, True)

    def stat() -> ObjectView:
        with hub.db.session() as session:
            current = complete_object(session, principal, bucket, name)
            now = shares_of(session, current.id)
            return view(current, now, online(hub, [s.device_id for s in now]))

    return await run_in_threadpool(stat)
