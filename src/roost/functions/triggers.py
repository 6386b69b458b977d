"""What starts a hub function besides an invoke: its event trigger and its cron, run as
rules.

A hub function with a trigger or a cron is one or two rules more in its tenant's rule
set, made here and never stored (the ``RuleRow`` rules are what people wrote):

- ``fn:<name>``: the function's trigger, no condition, one ``invoke`` action of the
  function with the event as its input, exactly as a written rule's would be;
- ``fn:<name>@cron``: the events of the function's schedule (``roost.function.cron``
  from the schedules' source, the function's name as subject; a person can neither post
  such an event nor make such a schedule) and the same action.

So a triggered function gets what a rule's ``invoke`` action gets: the runner's cursor,
the durable outbox, at-least-once delivery with an idempotency key (``ctx["key"]``),
retries and dead letters, and ``roost rules actions --rule fn:<name>``. A ``:`` is in no
rule id a person can write, so these never meet a written rule's windows or keys.

``rules_of`` is pure. The rest works in the caller's ``Session``: which functions of which
tenants are triggered (the runner's signature), and, at deploy and removal, the
function's schedule and the tenant's place in the event store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from roost.events.patterns import Pattern, Trigger
from roost.events.schedules import (
    FUNCTION_CRON_TYPE,
    FUNCTION_PREFIX,
    SCHEDULE_SOURCE,
    drop_function_cron,
    function_schedule_name,
    keep_function_cron,
)
from roost.functions.models import FunctionRow
from roost.rules import actions
from roost.rules.cursor import start_cursor
from roost.rules.models import RuleRow
from roost.rules.spec import Action, Rule
from roost.rules.template import parse
from roost.wire.functions import HUB

PREFIX = FUNCTION_PREFIX
CRON_SUFFIX = "@cron"
# The source of the events hub functions emit (ctx.emit): ``roost://functions/<name>``.
EMIT_SOURCE = "roost://functions/"


def rule_id(name: str, cron: bool = False) -> str:
    """``fn:<name>`` or ``fn:<name>@cron``, cut to fit a rule id (64 characters, as
    ``RuleRow.rule_id`` and ``ActionRow.rule_id``) as a function's schedule name is."""
    return function_schedule_name(name, CRON_SUFFIX if cron else "")


def started_by(rule: str) -> str:
    """What a rule's ``invoke`` started, as ``ctx["trigger"]`` says it: ``cron`` or
    ``event`` for a function's own rules, ``rule`` for a written one."""
    if not rule.startswith(PREFIX):
        return "rule"
    return "cron" if rule.endswith(CRON_SUFFIX) else "event"


def rules_of(name: str, trigger: Trigger | None, cron: str) -> list[Rule]:
    """The rules that start hub function ``name``: its trigger's, and its cron's."""
    found = []
    if trigger is not None:
        found.append(Rule(rule_id(name), trigger, (_invoke(name),)))
    if cron:
        on_cron = Trigger(
            (Pattern(FUNCTION_CRON_TYPE),), (Pattern(SCHEDULE_SOURCE),), (Pattern(name),)
        )
        found.append(Rule(rule_id(name, cron=True), on_cron, (_invoke(name),)))
    return found


def _invoke(name: str) -> Action:
    """An ``invoke`` action as ``parse_rules`` makes ``{kind: invoke, function: NAME}``:
    every other field its default, strings parsed into templates."""
    fields = {
        field: parse(spec.default) if isinstance(spec.default, str) else spec.default
        for field, spec in actions.KINDS["invoke"].items()
    }
    fields["function"] = name
    return Action("invoke", fields)


# -- in the database ----------------------------------------------------------------------


def _rows(session: Session, tenant_id: str | None = None) -> Iterator[FunctionRow]:
    query = select(FunctionRow).where(FunctionRow.placement == HUB)
    if tenant_id is not None:
        query = query.where(FunctionRow.tenant_id == tenant_id)
    # A stored JSON null is not SQL NULL: which ones have a trigger is decided here.
    return (row for row in session.scalars(query.order_by(FunctionRow.name)) if _started(row))


def _started(row: FunctionRow) -> bool:
    return bool(row.trigger) or bool(row.cron)


def signatures(session: Session) -> dict[str, tuple[tuple[str, int], ...]]:
    """Per tenant with triggered hub functions: each one's (id, version). Every deploy makes
    a new version, and a function removed and deployed again has a new id."""
    # Only the columns it needs: the rules runner asks on every pass.
    rows = session.execute(
        select(
            FunctionRow.tenant_id,
            FunctionRow.id,
            FunctionRow.version,
            FunctionRow.trigger,
            FunctionRow.cron,
        ).where(FunctionRow.placement == HUB)
    )
    found: dict[str, list[tuple[str, int]]] = {}
    for tenant_id, function_id, version, trigger, cron in rows:
        if trigger or cron:  # a stored JSON null is not SQL NULL: decided here
            found.setdefault(tenant_id, []).append((function_id, version))
    return {tenant: tuple(sorted(pairs)) for tenant, pairs in found.items()}


def tenant_rules(session: Session, tenant_id: str) -> list[Rule]:
    """The rules of the tenant's triggered hub functions, by function name."""
    rules = []
    for row in _rows(session, tenant_id):
        trigger = Trigger.from_dict(row.trigger) if row.trigger else None
        rules.extend(rules_of(row.name, trigger, row.cron))
    return rules


def started(row: FunctionRow) -> bool:
    """Whether the rules runner starts this function: on the hub, with a trigger or a cron."""
    return row.placement == HUB and _started(row)


def deployed(
    session: Session, row: FunctionRow, was_started: bool, created_by: str, now: dt.datetime
) -> None:
    """After a deploy of ``row`` (flushed): its schedule as its cron now says, and, when it
    is the first thing of the tenant the rules runner follows, the runner's place at the
    newest event (a trigger reacts to what happens from its deploy on, not to the events
    the store already held)."""
    cron = row.cron if row.placement == HUB else ""
    keep_function_cron(session, row.tenant_id, row.name, cron, created_by, now)
    if not started(row) or was_started:
        return
    others = any(r.id != row.id for r in _rows(session, row.tenant_id))
    rules = session.scalar(select(func.count()).where(RuleRow.tenant_id == row.tenant_id))
    start_cursor(session, row.tenant_id, now, restart=not (others or rules))


def removed(session: Session, tenant_id: str, name: str) -> None:
    """After the function is removed: its schedule goes too."""
    drop_function_cron(session, tenant_id, name)
