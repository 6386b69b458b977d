"""The hub's rules: apply a rules file for a tenant, list, show, remove, enable, disable,
and the dry run (``roost rules test``) against what the hub would accept.

Each function takes an open ``Session`` (the caller commits) and filters by the caller's
tenant. Applying a file is all or nothing: every rule is checked first (``parse_rules``
and the hub's own refusals), then each is stored as its own YAML mapping, as its author
wrote it, replacing a rule of the same id. Every change of a rule (applied with a
difference, enabled, disabled) makes a new ``version``; the rules runner
(``roost.rules.runner``) notices and rebuilds the tenant's engine, keeping its windows.

A tenant's first rule starts its ``RuleCursor`` at the newest stored event: rules react
to what happens from then on, not to the events the store already held.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.errors import ConflictError, NotFoundError, RuleError, ValidationError
from roost.functions import service as functions
from roost.functions import triggers
from roost.rules.cursor import start_cursor
from roost.rules.dryrun import Report, dry_run
from roost.rules.models import ActionRow, RuleRow
from roost.rules.source import PathKey, Source
from roost.rules.spec import Rule, parse_rules

# A tenant keeps at most this many rules (the engine routes a thousand cheaply).
MAX_TENANT_RULES = 10_000
# A rules file sent to the hub is at most this large.
MAX_FILE_BYTES = 2 * 1024 * 1024
ACTION_STATUSES = ("pending", "delivered", "dead")


@dataclass(frozen=True)
class Applied:
    """What applying a file did to one rule: ``created``, ``updated`` or ``unchanged``."""

    rule_id: str
    version: int
    change: Literal["created", "updated", "unchanged"]


def check(
    text: str, filename: str = "<rules>", function_exists: Callable[[str], bool] | None = None
) -> list[Rule]:
    """The rules of a file as the hub would take them; ``RuleError`` names each problem.

    Beyond ``parse_rules``, with ``function_exists`` (``apply`` has it): an ``invoke``
    action of a function the tenant has not deployed is refused, named along with the
    file's other problems, in the order of the file.
    """
    source = Source(text, filename)
    before = len(source.problems)  # the YAML's own, which parse_rules reports
    exists = function_exists or (lambda _name: True)
    for path, name in _invoked(source.data):
        if not exists(name):
            source.problem(path, f"no function {name!r}; deploy it first (roost fn deploy)")
    refused = source.problems[before:]
    try:
        rules = parse_rules(text, filename)
    except RuleError as err:
        if not refused:
            raise
        problems = sorted(err.problems + refused, key=lambda p: _place(p, filename))
        raise RuleError(problems) from None
    if refused:
        raise RuleError(refused)
    return rules


def _invoked(data: Any) -> list[tuple[PathKey, str]]:
    """Where the file names a function of an ``invoke`` action, and which."""
    listed = isinstance(data, dict) and isinstance(data.get("rules"), list)
    items = data["rules"] if listed else [data]
    found: list[tuple[PathKey, str]] = []
    for index, rule in enumerate(items):
        actions = rule.get("actions") if isinstance(rule, dict) else None
        for place, action in enumerate(actions if isinstance(actions, list) else []):
            if not isinstance(action, dict) or action.get("kind") != "invoke":
                continue
            name = action.get("function")
            if isinstance(name, str):
                base: PathKey = ("rules", index) if listed else ()
                found.append(((*base, "actions", place, "function"), name))
    return found


def _place(problem: str, filename: str) -> tuple[int, int]:
    """(line, column) of a problem that starts ``filename:line:column:``."""
    line, column, _ = problem[len(filename) + 1 :].split(":", 2)
    return int(line), int(column)


def apply(
    session: Session, principal: Principal, text: str, filename: str, now: dt.datetime
) -> list[Applied]:
    """Store every rule of the file (all or none), replacing rules of the same ids."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ValidationError(f"a rules file may be at most {MAX_FILE_BYTES} bytes")
    tenant = principal.tenant_id
    rules = check(text, filename, lambda name: functions.exists(session, tenant, name))
    sources = rule_sources(text)
    existing = {
        row.rule_id: row
        for row in session.scalars(
            select(RuleRow).where(
                RuleRow.tenant_id == tenant, RuleRow.rule_id.in_([r.id for r in rules])
            )
        )
    }
    held = session.scalar(select(func.count()).where(RuleRow.tenant_id == tenant)) or 0
    added = sum(1 for rule in rules if rule.id not in existing)
    if held + added > MAX_TENANT_RULES:
        raise ValidationError(
            f"a tenant may have at most {MAX_TENANT_RULES} rules; it has {held}, "
            f"and the file adds {added}"
        )
    # A tenant's first rules start at the newest event, unless its functions' triggers
    # already follow the cursor: then no event waiting for them may be skipped.
    restart = held == 0 and not triggers.tenant_rules(session, tenant)
    start_cursor(session, tenant, now, restart=restart)
    applied = []
    for rule, source in zip(rules, sources, strict=True):
        row = existing.get(rule.id)
        if row is None:
            row = RuleRow(
                tenant_id=tenant,
                rule_id=rule.id,
                source=source,
                enabled=rule.enabled,
                version=1,
                created_by=principal.token_id,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            applied.append(Applied(rule.id, 1, "created"))
        elif row.source == source and row.enabled == rule.enabled:
            applied.append(Applied(rule.id, row.version, "unchanged"))
        else:
            row.source, row.enabled = source, rule.enabled
            _changed(row, now)
            applied.append(Applied(rule.id, row.version, "updated"))
    _flush(session)
    return applied


def rules(session: Session, principal: Principal) -> list[RuleRow]:
    """The tenant's rules, by id."""
    return list(
        session.scalars(
            select(RuleRow)
            .where(RuleRow.tenant_id == principal.tenant_id)
            .order_by(RuleRow.rule_id)
        )
    )


def get(session: Session, principal: Principal, rule_id: str) -> RuleRow:
    row = session.scalar(
        select(RuleRow).where(RuleRow.tenant_id == principal.tenant_id, RuleRow.rule_id == rule_id)
    )
    if row is None:
        raise NotFoundError(f"no rule {rule_id!r}")
    return row


def remove(session: Session, principal: Principal, rule_id: str) -> None:
    """Remove a rule; its window state goes with it."""
    session.delete(get(session, principal, rule_id))


def set_enabled(
    session: Session, principal: Principal, rule_id: str, enabled: bool, now: dt.datetime
) -> RuleRow:
    """Enable or disable a rule until the next apply (a disabled rule's windows are dropped)."""
    row = get(session, principal, rule_id)
    if row.enabled != enabled:
        row.enabled = enabled
        _changed(row, now)
    return row


def describe(row: RuleRow) -> dict[str, Any]:
    """A stored rule for a person or a program: its fields at a glance, and its YAML."""
    data = yaml.safe_load(row.source)
    data = data if isinstance(data, dict) else {}
    window = data.get("window")
    return {
        "id": row.rule_id,
        "enabled": row.enabled,
        "version": row.version,
        "description": str(data.get("description", "")),
        "trigger": data.get("trigger"),
        "window": window.get("over") if isinstance(window, dict) else None,
        "actions": [a.get("kind") for a in data.get("actions") or [] if isinstance(a, dict)],
        "source": row.source,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def dry_run_file(
    text: str, events: Sequence[Mapping[str, Any]], filename: str, now: dt.datetime
) -> Report:
    """A dry run of a file (checked as ``apply`` would) over events; nothing is stored."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ValidationError(f"a rules file may be at most {MAX_FILE_BYTES} bytes")
    check(text, filename)
    return dry_run(text, events, now, filename)


def actions(
    session: Session, principal: Principal, status: str = "", rule_id: str = "", limit: int = 100
) -> list[ActionRow]:
    """The tenant's newest actions in the outbox, newest first; read only."""
    if status and status not in ACTION_STATUSES:
        raise ValidationError(f"status {status!r} is not one of {', '.join(ACTION_STATUSES)}")
    query = select(ActionRow).where(ActionRow.tenant_id == principal.tenant_id)
    if status:
        query = query.where(ActionRow.status == status)
    if rule_id:
        query = query.where(ActionRow.rule_id == rule_id)
    return list(session.scalars(query.order_by(ActionRow.id.desc()).limit(limit)))


def rule_sources(text: str) -> list[str]:
    """Each rule of a (checked) file as its own YAML mapping, the way its author wrote it.

    The rule's lines are cut out of the file and un-indented; when that does not read back
    as the same mapping (an unusual layout), the rule is written out afresh instead.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "rules" in data:
        assert isinstance(node, yaml.MappingNode)
        items = next(v for k, v in node.value if k.value == "rules").value
        wanted = data["rules"]
    else:
        items, wanted = [node], [data]
    return [_cut(text, item, value) for item, value in zip(items, wanted, strict=True)]


def _cut(text: str, node: yaml.Node, value: Any) -> str:
    column = node.start_mark.column
    first, *rest = text[node.start_mark.index : node.end_mark.index].split("\n")
    lines = [first]
    for line in rest:
        if line[:column].strip():
            break  # less indented: what follows belongs to the next rule
        lines.append(line[column:])
    while lines and not lines[-1].strip():
        lines.pop()
    cut = "\n".join(lines) + "\n"
    try:
        if yaml.safe_load(cut) == value:
            return cut
    except yaml.YAMLError:
        pass
    written: str = yaml.safe_dump(value, sort_keys=False, allow_unicode=True)
    return written


def _changed(row: RuleRow, now: dt.datetime) -> None:
    # The runner sees a tenant's rules change by their count, ids and versions.
    row.version += 1
    row.updated_at = now


def _flush(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError as err:
        raise ConflictError(
            "the tenant's rules were changed at the same time; apply the file again"
        ) from err
