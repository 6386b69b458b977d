"""Schedules: cron expressions (UTC, via croniter) that put an event in the store each
time they come round, for rules and functions to react to.

Each function takes an open ``Session`` (the caller commits). ``fire_due`` is what the
hub's loop calls. A firing's event id is the schedule's id and the time it was due, so
two hub replicas firing the same schedule store one event; a hub that was down fires a
schedule once for the latest time it missed, not once per missed time.

A hub function deployed with ``--cron`` owns one schedule (``keep_function_cron``), of
type ``FUNCTION_CRON_TYPE`` with the function's name as its subject and a name people
cannot give (``fn:<function>``); the rules runner invokes the function on its events. Its
function's deploys change it and its removal removes it: ``add`` refuses that type and
``remove`` refuses such a schedule, saying what to do instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any

from croniter import croniter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.errors import ConflictError, NotFoundError, ValidationError
from roost.events.cloudevents import TYPE_RE, parse_event
from roost.events.models import ScheduleRow
from roost.events.store import HUB_SOURCE, insert_events

SCHEDULE_SOURCE = f"{HUB_SOURCE}/schedules"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# The type of the events of a function's cron, and how its schedule is named (a ":"
# no schedule name a person gives can have).
FUNCTION_CRON_TYPE = "roost.function.cron"
FUNCTION_PREFIX = "fn:"
# Fired at most this many schedules per pass; the rest are due in the next one.
BATCH = 500


def next_time(cron: str, after: dt.datetime) -> dt.datetime:
    """When ``cron`` next comes round strictly after ``after`` (UTC)."""
    when: dt.datetime = croniter(cron, after.astimezone(dt.UTC)).get_next(dt.datetime)
    return when


def check_cron(cron: str) -> None:
    """``ValidationError`` unless ``cron`` is a cron expression croniter reads."""
    if not croniter.is_valid(cron) or len(cron) > 128:
        raise ValidationError(
            f'cron {cron[:80]!r} is not a cron expression like "*/5 * * * *" (UTC)'
        )


def add(
    session: Session,
    principal: Principal,
    name: str,
    cron: str,
    event_type: str,
    subject: str,
    data: Any,
    max_data_bytes: int,
    now: dt.datetime,
) -> ScheduleRow:
    if not NAME_RE.fullmatch(name):
        raise ValidationError(f"schedule name {name[:80]!r}: lowercase letters, digits, . _ -")
    check_cron(cron)
    if not TYPE_RE.fullmatch(event_type):
        raise ValidationError(f"type {event_type[:80]!r} must be letters, digits and . _ : / -")
    if event_type == FUNCTION_CRON_TYPE:
        raise ValidationError(
            f"type {FUNCTION_CRON_TYPE!r} is functions' own: deploy the function with --cron"
        )
    # The event it will emit is checked now, not when it first fires.
    parse_event(
        {"type": event_type, "subject": subject or None, "data": data},
        principal.tenant_id,
        max_data_bytes,
        now,
        "schedule",
    )
    taken = session.scalar(
        select(ScheduleRow.id).where(
            ScheduleRow.tenant_id == principal.tenant_id, ScheduleRow.name == name
        )
    )
    if taken is not None:
        raise ConflictError(f"there is a schedule named {name!r} already; remove it first")
    row = ScheduleRow(
        id="sc" + secrets.token_hex(8),
        tenant_id=principal.tenant_id,
        name=name,
        cron=cron,
        type=event_type,
        subject=subject,
        data=data,
        next_at=next_time(cron, now),
        created_by=principal.token_id,
        created_at=now,
    )
    session.add(row)
    return row


def schedules(session: Session, principal: Principal) -> list[ScheduleRow]:
    return list(
        session.scalars(
            select(ScheduleRow)
            .where(ScheduleRow.tenant_id == principal.tenant_id)
            .order_by(ScheduleRow.name)
        )
    )


def remove(session: Session, principal: Principal, name: str) -> None:
    row = session.scalar(
        select(ScheduleRow).where(
            ScheduleRow.tenant_id == principal.tenant_id, ScheduleRow.name == name
        )
    )
    if row is None:
        raise NotFoundError(f"no schedule named {name!r}")
    if row.type == FUNCTION_CRON_TYPE:
        raise ConflictError(
            f"schedule {name!r} is the cron of function {row.subject!r}: deploy the function "
            f"again without --cron, or roost fn rm {row.subject}"
        )
    session.delete(row)


def function_schedule_name(function: str, suffix: str = "") -> str:
    """``fn:<function><suffix>``, cut to the 64 characters a schedule's name (and a rule's
    id) has: a long name is cut and a digest of it added, so two functions never share
    one. A function's own schedule is named so, and its rules (``triggers.rule_id``)."""
    name = FUNCTION_PREFIX + function + suffix
    if len(name) <= 64:
        return name
    keep = 64 - len(FUNCTION_PREFIX) - len(suffix) - 9
    digest = hashlib.sha256(function.encode()).hexdigest()[:8]
    return f"{FUNCTION_PREFIX}{function[:keep]}~{digest}{suffix}"


def _function_schedule(session: Session, tenant_id: str, function: str) -> ScheduleRow | None:
    return session.scalar(
        select(ScheduleRow).where(
            ScheduleRow.tenant_id == tenant_id,
            ScheduleRow.type == FUNCTION_CRON_TYPE,
            ScheduleRow.subject == function,
        )
    )


def keep_function_cron(
    session: Session,
    tenant_id: str,
    function: str,
    cron: str,
    created_by: str,
    now: dt.datetime,
) -> None:
    """Make the function's schedule say ``cron`` (``""``: none). An unchanged cron keeps
    its row, so its next time (and the ids of its events) go on as they were."""
    if not cron:
        drop_function_cron(session, tenant_id, function)
        return
    check_cron(cron)
    row = _function_schedule(session, tenant_id, function)
    if row is None:
        session.add(
            ScheduleRow(
                id="sc" + secrets.token_hex(8),
                tenant_id=tenant_id,
                name=function_schedule_name(function),
                cron=cron,
                type=FUNCTION_CRON_TYPE,
                subject=function,
                data=None,
                next_at=next_time(cron, now),
                created_by=created_by,
                created_at=now,
            )
        )
    elif row.cron != cron:
        row.cron = cron
        row.next_at = next_time(cron, now)


def drop_function_cron(session: Session, tenant_id: str, function: str) -> None:
    """Remove the function's schedule, if it has one."""
    row = _function_schedule(session, tenant_id, function)
    if row is not None:
        session.delete(row)


def fire_due(session: Session, now: dt.datetime) -> int:
    """Emit the event of every schedule whose time has come; how many fired."""
    due = list(
        session.scalars(
            select(ScheduleRow)
            .where(ScheduleRow.next_at <= now)
            .order_by(ScheduleRow.next_at)
            .limit(BATCH)
        )
    )
    rows = []
    for schedule in due:
        # The latest time it was due (several, if the hub was down): fired once.
        when = schedule.next_at
        following = next_time(schedule.cron, when)
        while following <= now:
            when, following = following, next_time(schedule.cron, following)
        moved = session.execute(
            update(ScheduleRow)
            .where(ScheduleRow.id == schedule.id, ScheduleRow.next_at == schedule.next_at)
            .values(next_at=following)
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            continue  # another hub fired it
        rows.append(
            {
                "tenant_id": schedule.tenant_id,
                "event_id": f"{schedule.id}@{when.isoformat()}",
                "source": SCHEDULE_SOURCE,
                "type": schedule.type,
                "subject": schedule.subject or schedule.name,
                "device_id": None,
                "time": when,
                "data": schedule.data,
                "received_at": now,
            }
        )
    if rows:
        insert_events(session, rows)
    return len(rows)
