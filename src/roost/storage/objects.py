"""The store's objects and shares in the database, for the routes in ``routes.py``.

Each function is one transaction. Only ``complete`` objects are found by name; a put's
object is ``pending`` until ``finish_put`` counts enough stored shares, and the next put
of the same name removes what a put that never finished left (``begin_put``).

A put is checked against the tenant's quota twice, each time holding the tenant's lock
(``usage.lock``): when it begins, with the size it declared, which its pending object
reserves; and before its shares are placed, with the size it has.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.api import HubContext
from roost.db import utcnow
from roost.errors import NotFoundError, StorageError
from roost.storage.codec import Encoder
from roost.storage.keys import KeyRing
from roost.storage.manifest import Manifest
from roost.storage.models import ObjectRow, ShareRow
from roost.storage.placement import repair_threshold
from roost.storage.quota import Usage, check_put
from roost.storage.transfer import Answer, online
from roost.storage.usage import lock, quota_of, usage_of


class ShareView(BaseModel):
    index: int
    device_id: str
    state: str
    online: bool
    size: int
    error: str


class ObjectView(BaseModel):
    bucket: str
    name: str
    id: str
    size: int
    k: int
    n: int
    created_at: str
    health: str = ""
    shares: list[ShareView] | None = None


def store_dir(hub: HubContext) -> Path:
    return hub.settings.data_dir / "store"


def view(
    obj: ObjectRow, shares: list[ShareRow] | None = None, up: Collection[str] = ()
) -> ObjectView:
    view = ObjectView(
        bucket=obj.bucket,
        name=obj.name,
        id=obj.id,
        size=obj.size,
        k=obj.k,
        n=obj.n,
        created_at=obj.created_at.isoformat(),
    )
    if shares is not None:
        view.shares = [
            ShareView(
                index=s.index,
                device_id=s.device_id,
                state=s.state,
                online=s.device_id in up,
                size=s.size,
                error=s.error,
            )
            for s in sorted(shares, key=lambda s: s.index)
        ]
        healthy = sum(1 for s in view.shares if s.state == "stored" and s.online)
        if healthy >= repair_threshold(obj.k, obj.n):
            view.health = "healthy"
        elif healthy >= obj.k:
            view.health = "degraded"
        else:
            view.health = "unreadable"
    return view


def complete_object(session: Session, principal: Principal, bucket: str, name: str) -> ObjectRow:
    obj = session.scalars(
        select(ObjectRow)
        .where(
            ObjectRow.tenant_id == principal.tenant_id,
            ObjectRow.bucket == bucket,
            ObjectRow.name == name,
            ObjectRow.state == "complete",
        )
        .order_by(ObjectRow.completed_at.desc())
    ).first()
    if obj is None:
        raise NotFoundError(f"no object {bucket}/{name}")
    return obj


def shares_of(session: Session, object_id: str) -> list[ShareRow]:
    return list(session.scalars(select(ShareRow).where(ShareRow.object_id == object_id)).all())


def drop(session: Session, obj: ObjectRow) -> None:
    """Delete an object's rows: its shares first (no ORM relationship orders them)."""
    session.execute(delete(ShareRow).where(ShareRow.object_id == obj.id))
    session.delete(obj)


def own_share(hub: HubContext, share_id: str, device_id: str) -> ShareRow:
    with hub.db.session() as session:
        share = session.get(ShareRow, share_id)
        if share is None or share.device_id != device_id:
            raise NotFoundError(f"no share {share_id} for device {device_id}")
        session.expunge(share)
        return share


# A get's inbox older than this belongs to no request still running; a spool of a
# complete object (a repair's) older than that, to no repair.
STALE_INBOX_S = 24 * 3600
STALE_SPOOL_S = 3600


def sweep_spool(hub: HubContext) -> None:
    """Remove what a crashed hub left in its spool: shares of objects no longer pending,
    and inboxes of gets long gone."""
    out, inbox = store_dir(hub) / "out", store_dir(hub) / "in"
    # List first, then ask: a put makes its row before its directory.
    spooled = list(out.iterdir()) if out.is_dir() else []
    if spooled:
        with hub.db.session() as session:
            pending = set(
                session.scalars(select(ObjectRow.id).where(ObjectRow.state == "pending")).all()
            )
        old_enough = time.time() - STALE_SPOOL_S
        for path in spooled:
            # A repair spools shares of a complete object: leave young directories alone.
            with contextlib.suppress(FileNotFoundError):
                if path.name not in pending and path.stat().st_mtime < old_enough:
                    shutil.rmtree(path, ignore_errors=True)
    if inbox.is_dir():
        old = time.time() - STALE_INBOX_S
        for path in inbox.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a get that just finished
                if path.stat().st_mtime < old:
                    shutil.rmtree(path, ignore_errors=True)


def begin_put(
    hub: HubContext, principal: Principal, bucket: str, name: str, declared: int | None
) -> tuple[str, list[Placed], int | None, Usage]:
    """A pending object for this put, and the shares of pending leftovers of an earlier
    put of it (a crashed hub, a client gone), whose rows and spool go now. A put of the
    same name still in progress is one of them: the last put wins.

    The put must fit the tenant's quota with the size it ``declared`` (0 if it did not),
    which the new object reserves; answers the quota and the usage it was decided on, so
    the upload can be cut short once it passes them (``QuotaExceededError``).
    """
    sweep_spool(hub)
    object_id = secrets.token_hex(16)
    leftovers: list[Placed] = []
    with hub.db.session() as session:
        lock(session, principal.tenant_id)
        quota, usage = _fits(session, hub, principal.tenant_id, bucket, name, declared or 0)
        for old in session.scalars(
            select(ObjectRow).where(
                ObjectRow.tenant_id == principal.tenant_id,
                ObjectRow.bucket == bucket,
                ObjectRow.name == name,
                ObjectRow.state == "pending",
            )
        ).all():
            leftovers += placed_on(shares_of(session, old.id))
            shutil.rmtree(store_dir(hub) / "out" / old.id, ignore_errors=True)
            drop(session, old)
        session.add(
            ObjectRow(
                id=object_id,
                tenant_id=principal.tenant_id,
                bucket=bucket,
                name=name,
                size=declared or 0,
                manifest="",
                wrapped_key=b"",
            )
        )
    return object_id, leftovers, quota, usage


def _fits(
    session: Session, hub: HubContext, tenant_id: str, bucket: str, name: str, size: int
) -> tuple[int | None, Usage]:
    """Check, holding the tenant's lock, that ``size`` more bytes as ``bucket/name`` fit
    its quota (``QuotaExceededError``); the quota and the usage it was decided on."""
    quota, _ = quota_of(session, hub.settings, tenant_id)
    usage = usage_of(session, tenant_id, utcnow(), (bucket, name))
    check_put(f"{bucket}/{name}", size, quota, usage)
    return quota, usage


def release(hub: HubContext, object_id: str, forget: bool) -> None:
    """A put that failed before its shares were placed gives back its reservation; with
    ``forget`` (refused for the quota) its pending object goes as well."""
    with hub.db.session() as session:
        obj = session.get(ObjectRow, object_id)
        if obj is None or obj.state != "pending":
            return
        if forget:
            drop(session, obj)
        else:
            obj.size = 0


def record_placement(
    hub: HubContext,
    principal: Principal,
    object_id: str,
    encoder: Encoder,
    placement: dict[int, str],
    sizes: list[int],
    hashes: list[str],
) -> list[ShareRow]:
    manifest = encoder.manifest
    wrapped = KeyRing.open(hub.settings.data_dir).wrap(
        principal.tenant_id, object_id, encoder.data_key
    )
    with hub.db.session() as session:
        lock(session, principal.tenant_id)
        obj = session.get(ObjectRow, object_id)
        if obj is None:
            raise StorageError(f"object {object_id} was replaced while it was being put")
        # The size it declared may not be the size it has (or it declared none).
        _fits(session, hub, principal.tenant_id, obj.bucket, obj.name, manifest.object_size)
        obj.manifest, obj.wrapped_key, obj.size = manifest.to_json(), wrapped, manifest.object_size
        obj.k, obj.n = manifest.k, manifest.n
        return _add_shares(session, object_id, placement, sizes, hashes)


def _add_shares(
    session: Session,
    object_id: str,
    placement: dict[int, str],
    sizes: list[int],
    hashes: list[str],
) -> list[ShareRow]:
    rows = [
        ShareRow(
            id=secrets.token_hex(8),
            object_id=object_id,
            index=index,
            device_id=device_id,
            state="pending",
            size=sizes[index],
            hash=hashes[index],
            error="",
        )
        for index, device_id in placement.items()
    ]
    session.add_all(rows)
    session.flush()
    for row in rows:
        session.expunge(row)
    return rows


def replace_shares(
    hub: HubContext,
    object_id: str,
    placement: dict[int, str],
    sizes: list[int],
    hashes: list[str],
) -> tuple[list[ShareRow], list[Placed]]:
    """New homes for some of an object's shares (repair): new pending rows for the indices
    of ``placement``, and the rows they replace gone (answered, to be deleted on devices)."""
    with hub.db.session() as session:
        old = [s for s in shares_of(session, object_id) if s.index in placement]
        gone = placed_on(old)
        session.execute(delete(ShareRow).where(ShareRow.id.in_([s.id for s in old])))
        return _add_shares(session, object_id, placement, sizes, hashes), gone


def settle_shares(hub: HubContext, answers: dict[str, Answer]) -> None:
    """What devices did with shares they were asked to fetch: stored, or failed and why."""
    with hub.db.session() as session:
        for share_id, answer in answers.items():
            row = session.get(ShareRow, share_id)
            if row is not None:
                row.state, row.error = ("stored", "") if answer.ok else ("failed", answer.error)


def finish_put(
    hub: HubContext,
    principal: Principal,
    object_id: str,
    answers: dict[str, Answer],
    threshold: int,
) -> tuple[ObjectView | None, list[Placed], str]:
    """Record what the devices did; complete the object if enough shares are stored.

    Answers the object (or None), the shares to delete from devices (an older object's
    when this one replaces it; this one's when it failed), and why it failed.
    """
    with hub.db.session() as session:
        obj = session.get(ObjectRow, object_id)
        if obj is None:
            raise StorageError(f"object {object_id} was replaced while it was being put")
        shares = shares_of(session, object_id)
        for share in shares:
            answer = answers[share.id]
            share.state, share.error = ("stored", "") if answer.ok else ("failed", answer.error)
        stored = [s for s in shares if s.state == "stored"]
        if len(stored) < threshold:
            problems = "; ".join(f"share {s.index}: {s.error}" for s in shares if s.error)
            why = (
                f"only {len(stored)} of {len(shares)} shares reached devices and "
                f"{threshold} are needed ({problems})"
            )
            placed = placed_on(stored)
            drop(session, obj)
            return None, placed, why
        old_objects = session.scalars(
            select(ObjectRow).where(
                ObjectRow.tenant_id == obj.tenant_id,
                ObjectRow.bucket == obj.bucket,
                ObjectRow.name == obj.name,
                ObjectRow.id != obj.id,
            )
        ).all()
        replaced = placed_on([s for old in old_objects for s in shares_of(session, old.id)])
        for old in old_objects:
            drop(session, old)
        obj.state, obj.completed_at = "complete", utcnow()
        return view(obj), replaced, ""


Placed = tuple[str, str]
"""(device id, share id)"""


def placed_on(shares: list[ShareRow]) -> list[Placed]:
    return [(s.device_id, s.id) for s in shares]


def to_read(
    hub: HubContext, principal: Principal, bucket: str, name: str
) -> tuple[ObjectRow, Manifest, bytes, list[ShareRow]]:
    """The complete object, its manifest and data key, and its shares, those on online
    devices first (they are the ones to ask)."""
    with hub.db.session() as session:
        obj = complete_object(session, principal, bucket, name)
        manifest = Manifest.from_json(obj.manifest)
        key = KeyRing.open(hub.settings.data_dir).unwrap(
            principal.tenant_id, obj.id, obj.wrapped_key
        )
        shares = shares_of(session, obj.id)
        up = online(hub, [s.device_id for s in shares])
        session.expunge_all()
    shares.sort(key=lambda s: (s.device_id not in up, s.state != "stored", s.index))
    return obj, manifest, key, shares


def mark(hub: HubContext, problems: dict[str, tuple[str, str]]) -> None:
    """Record shares found missing or corrupt: {share id: (state, why)}."""
    with hub.db.session() as session:
        for share_id, (state, why) in problems.items():
            row = session.get(ShareRow, share_id)
            if row is not None:
                row.state, row.error = state, why
