"""Where the rules runner stands in a tenant's events (``RuleCursor``), and how it starts.

What the runner follows for a tenant (its rules, and its hub functions' triggers and
crons) reacts to the events stored from the moment it is set up on, not to what the
store already held: a tenant's cursor starts at the newest event. Rules, functions and
the runner itself all take that place through ``start_cursor``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from roost.events.models import EventRow
from roost.rules.models import RuleCursor


def start_cursor(session: Session, tenant_id: str, now: dt.datetime, restart: bool = False) -> None:
    """Put the tenant's cursor at the newest event if it has none (a start at the same
    time elsewhere is no conflict); with ``restart``, there even if it has one: a place
    left behind by things since removed, whose events are not for what starts now."""
    newest = select(func.coalesce(func.max(EventRow.seq), 0)).scalar_subquery()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(RuleCursor)
        .values(tenant_id=tenant_id, seq=newest, windows={}, updated_at=now)
        .on_conflict_do_nothing(index_elements=["tenant_id"])
    )
    if restart:  # (PostgreSQL does not say whether the insert took: move it either way)
        session.execute(
            update(RuleCursor)
            .where(RuleCursor.tenant_id == tenant_id)
            .values(seq=newest, windows={}, updated_at=now)
        )
