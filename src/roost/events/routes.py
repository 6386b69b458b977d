"""HTTP routes of events: send CloudEvents, and read the stored events of the caller's tenant."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from roost.api import HubDep, PrincipalDep
from roost.db import utcnow
from roost.errors import ValidationError
from roost.events import schedules
from roost.events.cloudevents import parse_event
from roost.events.models import EventRow, ScheduleRow
from roost.events.store import insert_events

# One request carries at most this many events, in at most this many bytes.
MAX_BATCH = 500
MAX_BODY_BYTES = 4 * 1024 * 1024

router = APIRouter(prefix="/v1", tags=["events"])


class EventView(BaseModel):
    """A stored event in CloudEvents 1.0 shape, plus its store sequence number."""

    seq: int
    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str
    time: dt.datetime
    data: Any = None


class Accepted(BaseModel):
    """Events accepted (stored, or stored already: the same source and id is one event)."""

    accepted: int
    ids: list[str]


@router.post("/events", status_code=202)
async def send_events(request: Request, principal: PrincipalDep, hub: HubDep) -> Accepted:
    """Send a CloudEvent (structured JSON), or a list of up to 500; stored durably.

    The stored source is ``roost://api/<source>``: an API caller cannot pass an event off
    as the hub's or a device's. An event sent twice (same source and id) is kept once.
    """
    body = await _read_limited(request, MAX_BODY_BYTES)
    try:
        raw = json.loads(body)
    except ValueError:
        raise ValidationError("the body must be a CloudEvent in JSON, or a list of them") from None
    events = raw if isinstance(raw, list) else [raw]
    if not events or len(events) > MAX_BATCH:
        raise ValidationError(f"send 1 to {MAX_BATCH} events at a time, not {len(events)}")
    now = utcnow()
    limit = hub.settings.max_payload_bytes
    rows = [
        parse_event(
            event, principal.tenant_id, limit, now, f"events[{i}]" if len(events) > 1 else "event"
        )
        for i, event in enumerate(events)
    ]

    def store() -> None:
        with hub.db.session() as session:
            insert_events(session, rows)

    await run_in_threadpool(store)
    return Accepted(accepted=len(rows), ids=[row["event_id"] for row in rows])


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ValidationError(f"a request may carry at most {limit} bytes of events")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"a request may carry at most {limit} bytes of events")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/events")
def list_events(
    principal: PrincipalDep,
    hub: HubDep,
    type: str = "",
    device: str = "",
    after: int = 0,
    limit: int = Query(default=100, ge=1, le=1000),
    newest: bool = False,
) -> list[EventView]:
    """Events after sequence number ``after``, oldest first; ``type`` may end in ``*``.

    ``newest=true``: the newest ``limit`` of them (still oldest first), where a follower
    starts from.
    """
    query = select(EventRow).where(EventRow.tenant_id == principal.tenant_id, EventRow.seq > after)
    if type.endswith("*"):
        query = query.where(EventRow.type.startswith(type[:-1]))
    elif type:
        query = query.where(EventRow.type == type)
    if device:
        query = query.where(EventRow.device_id == device)
    order = EventRow.seq.desc() if newest else EventRow.seq
    with hub.db.session() as session:
        rows = sorted(session.scalars(query.order_by(order).limit(limit)), key=lambda r: r.seq)
        return [
            EventView(
                seq=r.seq,
                id=r.event_id,
                source=r.source,
                type=r.type,
                subject=r.subject,
                time=r.time,
                data=r.data,
            )
            for r in rows
        ]


# -- schedules --------------------------------------------------------------------------


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    cron: str
    type: str
    subject: str = ""
    data: Any = None


class ScheduleView(BaseModel):
    name: str
    cron: str
    type: str
    subject: str
    data: Any
    next_at: dt.datetime
    created_at: dt.datetime

    @classmethod
    def of(cls, row: ScheduleRow) -> ScheduleView:
        return cls(
            name=row.name,
            cron=row.cron,
            type=row.type,
            subject=row.subject,
            data=row.data,
            next_at=row.next_at,
            created_at=row.created_at,
        )


@router.post("/schedules", status_code=201)
def add_schedule(body: ScheduleRequest, principal: PrincipalDep, hub: HubDep) -> ScheduleView:
    """A cron expression (UTC) that sends an event each time it comes round."""
    with hub.db.session() as session:
        row = schedules.add(
            session,
            principal,
            body.name,
            body.cron,
            body.type,
            body.subject,
            body.data,
            hub.settings.max_payload_bytes,
            utcnow(),
        )
        return ScheduleView.of(row)


@router.get("/schedules")
def list_schedules(principal: PrincipalDep, hub: HubDep) -> list[ScheduleView]:
    with hub.db.session() as session:
        return [ScheduleView.of(row) for row in schedules.schedules(session, principal)]


@router.delete("/schedules/{name}")
def remove_schedule(name: str, principal: PrincipalDep, hub: HubDep) -> dict[str, str]:
    with hub.db.session() as session:
        schedules.remove(session, principal, name)
    return {"removed": name}
