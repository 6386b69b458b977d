"""HTTP routes of events: read the stored events of the caller's tenant."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from roost.api import HubDep, PrincipalDep
from roost.events.models import EventRow

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


@router.get("/events")
def list_events(
    principal: PrincipalDep,
    hub: HubDep,
    type: str = "",
    device: str = "",
    after: int = 0,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[EventView]:
    """Events after sequence number ``after``, oldest first; ``type`` may end in ``*``."""
    query = select(EventRow).where(EventRow.tenant_id == principal.tenant_id, EventRow.seq > after)
    if type.endswith("*"):
        query = query.where(EventRow.type.startswith(type[:-1]))
    elif type:
        query = query.where(EventRow.type == type)
    if device:
        query = query.where(EventRow.device_id == device)
    with hub.db.session() as session:
        rows = session.scalars(query.order_by(EventRow.seq).limit(limit))
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
