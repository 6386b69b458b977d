"""HTTP routes of rules (API token, tenant-scoped).

``POST /v1/rules`` takes a rules file as its body (YAML text; ``?filename=`` names it in
the problems) and applies it whole; a refused file is one 422 whose message holds every
problem with its position and caret. ``GET /v1/rules``, ``GET/DELETE /v1/rules/{id}``,
``POST /v1/rules/{id}/enable|disable``; ``POST /v1/rules/test`` is the dry run of a file
over events. ``GET /v1/actions`` reads the outbox of the firings (read only).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from roost.api import HubDep, PrincipalDep
from roost.db import utcnow
from roost.errors import ValidationError
from roost.rules import service
from roost.rules.dryrun import format_report
from roost.rules.models import ActionRow

router = APIRouter(prefix="/v1", tags=["rules"])


class RuleView(BaseModel):
    id: str
    enabled: bool
    version: int
    description: str
    trigger: Any
    window: str | None
    actions: list[Any]
    source: str
    created_by: str
    created_at: str
    updated_at: str


class AppliedView(BaseModel):
    id: str
    version: int
    change: Literal["created", "updated", "unchanged"]


class DryRunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: str
    events: Any
    filename: str = "rules.yaml"


class ActionView(BaseModel):
    id: int
    key: str
    rule_id: str
    event_id: str
    kind: str
    fields: dict[str, Any]
    status: str
    attempts: int
    next_at: dt.datetime
    last_error: str
    created_at: dt.datetime
    delivered_at: dt.datetime | None

    @classmethod
    def of(cls, row: ActionRow) -> ActionView:
        return cls.model_validate(row, from_attributes=True)


@router.post("/rules")
async def apply_rules(
    request: Request, principal: PrincipalDep, hub: HubDep, filename: str = "rules.yaml"
) -> list[AppliedView]:
    """Apply a rules file (YAML, the body): all its rules or, when one is refused, none."""
    text = await _text(request)

    def run() -> list[AppliedView]:
        with hub.db.session() as session:
            done = service.apply(session, principal, text, filename, utcnow())
        return [AppliedView(id=a.rule_id, version=a.version, change=a.change) for a in done]

    return await run_in_threadpool(run)


@router.get("/rules")
def list_rules(principal: PrincipalDep, hub: HubDep) -> list[RuleView]:
    with hub.db.session() as session:
        return [RuleView(**service.describe(row)) for row in service.rules(session, principal)]


@router.post("/rules/test")
def dry_run(body: DryRunRequest, principal: PrincipalDep) -> dict[str, Any]:
    """The dry run: what the rules of a file would make of events, in order; nothing is sent."""
    events = body.events if isinstance(body.events, list) else [body.events]
    report = service.dry_run_file(body.rules, events, body.filename, utcnow())
    return {**report.as_dict(), "text": format_report(report)}


@router.get("/rules/{rule_id}")
def show_rule(rule_id: str, principal: PrincipalDep, hub: HubDep) -> RuleView:
    with hub.db.session() as session:
        return RuleView(**service.describe(service.get(session, principal, rule_id)))


@router.delete("/rules/{rule_id}")
def remove_rule(rule_id: str, principal: PrincipalDep, hub: HubDep) -> dict[str, str]:
    with hub.db.session() as session:
        service.remove(session, principal, rule_id)
    return {"removed": rule_id}


@router.post("/rules/{rule_id}/{action}")
def switch_rule(
    rule_id: str,
    action: Literal["enable", "disable"],
    principal: PrincipalDep,
    hub: HubDep,
) -> RuleView:
    """Enable or disable a rule (until the next apply of a file that holds it)."""
    with hub.db.session() as session:
        row = service.set_enabled(session, principal, rule_id, action == "enable", utcnow())
        return RuleView(**service.describe(row))


@router.get("/actions")
def list_actions(
    principal: PrincipalDep,
    hub: HubDep,
    status: str = "",
    rule: str = "",
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[ActionView]:
    """The newest actions of the tenant's firings, newest first (``status``: pending,
    delivered or dead; ``rule``: one rule's)."""
    with hub.db.session() as session:
        return [ActionView.of(r) for r in service.actions(session, principal, status, rule, limit)]


async def _text(request: Request) -> str:
    limit = service.MAX_FILE_BYTES
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"a rules file may be at most {limit} bytes")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise ValidationError("a rules file must be UTF-8 text") from None
