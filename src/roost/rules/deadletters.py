"""Dead letters: actions the outbox gave up on (a permanent failure, or the last retry).

They stay, with their last error, until someone replays them (back to ``pending`` with
the tries counted from zero, delivered again with the same idempotency key) or drops
them. Every query is the caller's tenant's: another tenant's dead letter is as if absent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.api import HubDep, PrincipalDep
from roost.db import utcnow
from roost.errors import NotFoundError
from roost.rules.models import ActionRow


def dead_letters(session: Session, principal: Principal, limit: int = 100) -> list[ActionRow]:
    """The tenant's dead letters, the newest first."""
    query = (
        select(ActionRow)
        .where(ActionRow.tenant_id == principal.tenant_id, ActionRow.status == "dead")
        .order_by(ActionRow.next_at.desc(), ActionRow.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def replay(
    session: Session, principal: Principal, now: dt.datetime, action_id: int | None = None
) -> int:
    """Put one dead letter (or, without ``action_id``, all of them) back in the outbox."""
    statement = update(ActionRow).where(
        ActionRow.tenant_id == principal.tenant_id, ActionRow.status == "dead"
    )
    if action_id is not None:
        statement = statement.where(ActionRow.id == action_id)
    result = session.execute(
        statement.values(status="pending", attempts=0, next_at=now, last_error="")
    )
    count: int = result.rowcount  # type: ignore[attr-defined]
    if action_id is not None and not count:
        raise NotFoundError(f"no dead letter {action_id}")
    return count


def drop(session: Session, principal: Principal, action_id: int) -> None:
    result = session.execute(
        delete(ActionRow).where(
            ActionRow.tenant_id == principal.tenant_id,
            ActionRow.status == "dead",
            ActionRow.id == action_id,
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFoundError(f"no dead letter {action_id}")


# -- HTTP routes ------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["rules"])


class DeadLetterView(BaseModel):
    id: int
    key: str
    rule_id: str
    event_id: str
    kind: str
    fields: dict[str, Any]
    attempts: int
    last_error: str
    created_at: dt.datetime
    died_at: dt.datetime

    @classmethod
    def of(cls, row: ActionRow) -> DeadLetterView:
        return cls(
            id=row.id,
            key=row.key,
            rule_id=row.rule_id,
            event_id=row.event_id,
            kind=row.kind,
            fields=row.fields,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            died_at=row.next_at,
        )


class Replayed(BaseModel):
    replayed: int


@router.get("/deadletters")
def list_dead_letters(
    principal: PrincipalDep, hub: HubDep, limit: int = Query(default=100, ge=1, le=1000)
) -> list[DeadLetterView]:
    """Actions given up on, the newest first, with their last error."""
    with hub.db.session() as session:
        return [DeadLetterView.of(row) for row in dead_letters(session, principal, limit)]


@router.post("/deadletters/replay")
def replay_all(principal: PrincipalDep, hub: HubDep) -> Replayed:
    """Every dead letter of the tenant back in the outbox."""
    with hub.db.session() as session:
        count = replay(session, principal, utcnow())
    hub.delivery.notify()
    return Replayed(replayed=count)


@router.post("/deadletters/{action_id}/replay")
def replay_one(action_id: int, principal: PrincipalDep, hub: HubDep) -> Replayed:
    """One dead letter back in the outbox: delivered again, its tries counted from zero."""
    with hub.db.session() as session:
        count = replay(session, principal, utcnow(), action_id)
    hub.delivery.notify()
    return Replayed(replayed=count)


@router.delete("/deadletters/{action_id}")
def drop_dead_letter(action_id: int, principal: PrincipalDep, hub: HubDep) -> dict[str, int]:
    """Forget a dead letter."""
    with hub.db.session() as session:
        drop(session, principal, action_id)
    return {"dropped": action_id}
