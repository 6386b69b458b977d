"""Writing events to the store: idempotent inserts, and the hub's own lifecycle events."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from roost.events.models import EventRow

HUB_SOURCE = "roost://hub"


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert events, skipping ones already stored (same tenant, source and id)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(EventRow).on_conflict_do_nothing(
        index_elements=["tenant_id", "source", "event_id"]
    )
    session.execute(statement, rows)


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
    oldest = (
        select(EventRow.seq)
        .where(EventRow.received_at < cutoff)
        .order_by(EventRow.seq)
        .limit(batch)
    )
    seqs = list(session.scalars(oldest))
    if seqs:
        session.execute(delete(EventRow).where(EventRow.seq.in_(seqs)))
    return len(seqs)
