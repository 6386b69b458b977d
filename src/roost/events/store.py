"""Writing events to the store: idempotent inserts, and the hub's own lifecycle events.

Events are committed in the order of their ``seq``, so a reader that has seen ``seq`` N
has seen every event before it (the rules runner keeps its place that way): SQLite has
one writer at a time, and on PostgreSQL an inserting transaction holds an advisory lock
until it ends. ``when_stored`` tells the process's own readers (the rules runner) as
soon as a transaction that stored events commits, wherever it was made.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from roost.db import delete_oldest
from roost.events.models import EventRow

HUB_SOURCE = "roost://hub"
# pg_advisory_xact_lock key of event inserts ("roostevt").
_INSERT_LOCK = 0x726F6F7374657674
_STORED = "roost.events.stored"
_listeners: list[Callable[[], object]] = []


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert events, skipping ones already stored (same tenant, source and id)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        # Held to the end of the transaction: events commit in the order of their seq.
        session.execute(select(func.pg_advisory_xact_lock(_INSERT_LOCK)))
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(EventRow).on_conflict_do_nothing(
        index_elements=["tenant_id", "source", "event_id"]
    )
    session.execute(statement, rows)
    session.info[_STORED] = True


def when_stored(callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback`` (in the committing thread) each time a transaction of this process
    that stored events commits; returns the function that stops it."""
    _listeners.append(callback)
    return lambda: _listeners.remove(callback)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.info.pop(_STORED, False):
        for callback in tuple(_listeners):
            callback()


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_STORED, None)


def hub_event(
    tenant_id: str,
    event_type: str,
    device_id: str,
    now: dt.datetime,
    data: Any = None,
) -> dict[str, Any]:
    """A row for something the hub saw happen to a device (``roost.device.online`` ...)."""
    return {
        "tenant_id": tenant_id,
        "event_id": str(uuid.uuid4()),
        "source": HUB_SOURCE,
        "type": event_type,
        "subject": device_id,
        "device_id": device_id,
        "time": now,
        "data": data,
        "received_at": now,
    }


def expire_events(session: Session, cutoff: dt.datetime, batch: int = 10_000) -> int:
    """Delete up to ``batch`` events received before ``cutoff``; how many were deleted.

    In batches, so a hub catching up on a long retention never holds one huge lock.
    """
    return delete_oldest(session, EventRow.seq, EventRow.received_at < cutoff, batch)
