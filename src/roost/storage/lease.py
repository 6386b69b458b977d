"""A repair lease per object in the hub's database: one rebuild of an object at a time
across every hub process that shares the database (replicas on one PostgreSQL).

The rule is pure, ``may_take``: a lease can be taken when there is none, when it has
expired, or when it is the taker's own already. The database applies the same rule
atomically in one statement (``take``: INSERT ... ON CONFLICT DO UPDATE ... WHERE, alike
on SQLite and PostgreSQL), so of two hubs racing for one lease exactly one wins; the pure
rule on a plain read first spares that write (SQLite has one writer) when the lease is
plainly held.

``holding`` is the async shell a rebuild runs in: it takes the lease (waiting a bounded time
for another holder's to end), renews it every quarter of its time to live while the
rebuild runs, and releases it at the end, failed or not. When the lease cannot be renewed
before it runs out, or another holder has it, the rebuild is cancelled: past that point
another hub may be rebuilding the same object. A hub that dies mid-repair leaves a lease
that expires by itself after ``LEASE_TTL_S``.

Times are the database's clock on PostgreSQL (``now()``), so replicas whose clocks differ
still agree on when a lease ends; SQLite is one machine, and uses its clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from roost.db import Database, utcnow
from roost.errors import RepairBusyError
from roost.storage.models import RepairLeaseRow

log = logging.getLogger("roost.storage.lease")

T = TypeVar("T")

# How long a lease lives unless renewed: a hub that dies mid-repair holds its objects this
# long at most. Renewed every quarter of it, so three renewals may fail before it ends.
LEASE_TTL_S = 60.0
# How often a repair waiting for another hub's lease looks again.
POLL_S = 0.5
# Leases that ended this long ago (their hub died mid-repair) are deleted by ``sweep``.
SWEEP_AFTER_S = 3600.0

# This process as a lease holder: the host, the process and a random part, so a hub that
# restarts with the same pid is not taken for its former self.
HOLDER = f"{socket.gethostname()[:64]}/{os.getpid()}/{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    """Who holds an object's repair lease, and until when."""

    holder: str
    expires_at: dt.datetime


def may_take(lease: Lease | None, holder: str, now: dt.datetime) -> bool:
    """Whether ``holder`` may take the lease now: there is none, it has expired, or it is
    ``holder``'s own (then taking it renews it)."""
    return lease is None or lease.expires_at <= now or lease.holder == holder


# -- in the database ----------------------------------------------------------------------


def db_now(session: Session) -> dt.datetime:
    """The time leases are measured by: the database's clock on PostgreSQL (one for all
    replicas), this machine's on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        now: dt.datetime = session.execute(select(func.now())).scalar_one()
        return now
    return utcnow()


def lease_of(session: Session, object_id: str) -> Lease | None:
    row = session.get(RepairLeaseRow, object_id, populate_existing=True)
    return None if row is None else Lease(row.holder, row.expires_at)


def take(session: Session, object_id: str, holder: str, ttl_s: float, now: dt.datetime) -> bool:
    """Take (or renew) the object's lease for ``holder`` until ``now + ttl_s`` if
    ``may_take`` allows it, in one atomic statement; whether ``holder`` has it now."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(RepairLeaseRow).values(
        object_id=object_id, holder=holder, expires_at=now + dt.timedelta(seconds=ttl_s)
    )
    statement = statement.on_conflict_do_update(
        index_elements=["object_id"],
        set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
        where=(RepairLeaseRow.expires_at <= now) | (RepairLeaseRow.holder == holder),
    )
    taken = session.execute(statement.returning(RepairLeaseRow.object_id)).first()
    return taken is not None


def renew(session: Session, object_id: str, holder: str, ttl_s: float, now: dt.datetime) -> bool:
    """Move the end of ``holder``'s lease to ``now + ttl_s``; False when the lease is no
    longer ``holder``'s (another took it after it expired, or it was swept)."""
    result = session.execute(
        update(RepairLeaseRow)
        .where(RepairLeaseRow.object_id == object_id, RepairLeaseRow.holder == holder)
        .values(expires_at=now + dt.timedelta(seconds=ttl_s))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release(session: Session, object_id: str, holder: str) -> None:
    """Free the object's lease if ``holder`` has it (another's is left alone)."""
    session.execute(
        delete(RepairLeaseRow)
        .where(RepairLeaseRow.object_id == object_id, RepairLeaseRow.holder == holder)
        .execution_options(synchronize_session=False)
    )


def sweep(session: Session, now: dt.datetime, after_s: float = SWEEP_AFTER_S) -> None:
    """Delete the leases that ended more than ``after_s`` ago: left by hubs that died
    mid-repair, of objects that may be gone by now."""
    session.execute(
        delete(RepairLeaseRow)
        .where(RepairLeaseRow.expires_at < now - dt.timedelta(seconds=after_s))
        .execution_options(synchronize_session=False)
    )


# -- around a rebuild ---------------------------------------------------------------------


def _try_take(db: Database, object_id: str, holder: str, ttl_s: float) -> Lease:
    """The lease as it stands after trying to take it: ``holder``'s when taken."""
    with db.session() as session:
        now = db_now(session)
        current = lease_of(session, object_id)
        if current is not None and not may_take(current, holder, now):
            return current
        if take(session, object_id, holder, ttl_s, now):
            return Lease(holder, now + dt.timedelta(seconds=ttl_s))
        # Another holder took it between the read and the write (or has just let it go).
        return lease_of(session, object_id) or Lease("", now)


def _renew(db: Database, object_id: str, holder: str, ttl_s: float) -> bool:
    with db.session() as session:
        return renew(session, object_id, holder, ttl_s, db_now(session))


def _release(db: Database, object_id: str, holder: str) -> None:
    with db.session() as session:
        release(session, object_id, holder)


async def _take(
    db: Database, object_id: str, holder: str, ttl_s: float, wait_s: float
) -> float | None:
    """Take the lease, trying for up to ``wait_s``: the monotonic time of the try that took
    it (the lease surely lasts ``ttl_s`` from then), or None when another holds it still."""
    deadline = time.monotonic() + wait_s
    while True:
        started = time.monotonic()
        lease = await run_in_threadpool(_try_take, db, object_id, holder, ttl_s)
        if lease.holder == holder:
            return started
        if started >= deadline:
            log.info("%s is being repaired by %s", object_id, lease.holder or "another hub")
            return None
        await asyncio.sleep(min(POLL_S, deadline - started))


class _Lost:
    """Set by the renewer when the lease is gone, before it cancels the rebuild."""

    def __init__(self) -> None:
        self.lost = False


async def _keep(
    db: Database,
    object_id: str,
    holder: str,
    ttl_s: float,
    until: float,
    rebuild: asyncio.Task[Any],
    state: _Lost,
) -> None:
    """Renew the lease every ``ttl_s / 4`` until cancelled; cancel ``rebuild`` once the
    lease is another's, or when it could not be renewed and would run out (at ``until``,
    monotonic) before the next try: stopping a try early leaves no moment in which
    another hub could take the lease while this rebuild still runs."""
    every = ttl_s / 4
    while True:
        await asyncio.sleep(every)
        started = time.monotonic()
        try:
            mine = await run_in_threadpool(_renew, db, object_id, holder, ttl_s)
        except Exception as err:  # any failure: try again if the lease outlives the wait
            log.warning("could not renew the repair lease of %s: %s", object_id, err)
            mine = time.monotonic() + every < until
        else:
            until = started + ttl_s if mine else until
        if not mine:
            log.warning("lost the repair lease of %s; stopping its rebuild", object_id)
            state.lost = True
            rebuild.cancel()
            return


async def holding(
    db: Database,
    object_id: str,
    what: str,
    work: Callable[[], Coroutine[Any, Any, T]],
    *,
    holder: str = HOLDER,
    wait_s: float = 0.0,
    ttl_s: float = LEASE_TTL_S,
) -> T:
    """Run ``work()`` holding the object's repair lease (``what`` names the object for
    people); its answer. Waits up to ``wait_s`` for another holder's lease to end, then
    raises ``RepairBusyError``; ``work`` is cancelled and ``RepairBusyError`` raised if the
    lease is lost while it runs. The lease is released however ``work`` ends.

    ``work`` runs as a task of its own so that losing the lease cancels it alone, never
    the caller (whose own cancellation still reaches ``work``)."""
    taken_at = await _take(db, object_id, holder, ttl_s, wait_s)
    if taken_at is None:
        raise RepairBusyError(f"another hub is repairing {what}; try again shortly")
    state = _Lost()
    job = asyncio.create_task(work())
    renewer = asyncio.create_task(_keep(db, object_id, holder, ttl_s, taken_at + ttl_s, job, state))
    try:
        return await job
    except asyncio.CancelledError:
        caller = asyncio.current_task()
        if not state.lost or (caller is not None and caller.cancelling()):
            raise
        raise RepairBusyError(
            f"the repair of {what} stopped: this hub could not keep its lease, so another "
            "hub may repair it; try again shortly"
        ) from None
    finally:
        job.cancel()  # when the caller was cancelled: let it end before the lease goes
        renewer.cancel()
        await asyncio.wait([job, renewer])
        try:
            await run_in_threadpool(_release, db, object_id, holder)
        except SQLAlchemyError as err:  # it ends by itself within the lease's time
            log.warning("could not release the repair lease of %s: %s", what, err)
