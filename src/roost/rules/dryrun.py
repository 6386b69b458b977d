"""``roost rules test FILE --event EVENT.json``: what a rules file would do with some events.

A dry run parses the rules file (refusing it as ``roost rules apply`` would), checks each
event is a CloudEvents 1.0 event, and runs them in order through a fresh engine, so a
window sees the events before it. Each event is evaluated at its own ``time`` when it has
one, else at the ``now`` given. Nothing is sent: the report says, for each event, which
rules its trigger reached, each condition's value (or why it failed), each window's
figures, and the actions that would fire, rendered. Pure: the CLI reads the files and
prints ``format_report``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roost.errors import ValidationError
from roost.rules.engine import Engine, Outcome
from roost.rules.spec import parse_rules

MAX_EVENT_BYTES = 64 * 1024
_ATTRIBUTES = ("id", "source", "type")


@dataclass(frozen=True)
class EventReport:
    event: Mapping[str, Any]
    at: dt.datetime
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True)
class Report:
    rules: int
    events: tuple[EventReport, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``--json``."""
        return {
            "rules": self.rules,
            "events": [
                {
                    "id": e.event.get("id"),
                    "type": e.event.get("type"),
                    "at": e.at.isoformat(),
                    "rules": [_outcome(o) for o in e.outcomes],
                }
                for e in self.events
            ],
        }


def check_event(value: Any, where: str = "the event") -> dict[str, Any]:
    """A CloudEvents 1.0 event as a dict; ``ValidationError`` names what is wrong."""
    if not isinstance(value, dict):
        raise ValidationError(f"{where} must be a JSON object (a CloudEvent)")
    size = len(json.dumps(value, default=str))
    if size > MAX_EVENT_BYTES:
        raise ValidationError(f"{where} is {size} bytes, more than {MAX_EVENT_BYTES}")
    for name in _ATTRIBUTES:
        if not isinstance(value.get(name), str) or not value[name]:
            raise ValidationError(f"{where} has no '{name}' (CloudEvents needs id, source, type)")
    if value.get("specversion", "1.0") != "1.0":
        raise ValidationError(f"{where}: specversion {value['specversion']!r} is not 1.0")
    if not isinstance(value.get("subject", ""), str):
        raise ValidationError(f"{where}: subject must be a string")
    if "time" in value:
        _time(value["time"], where)
    return value


def read_events(text: str) -> list[dict[str, Any]]:
    """The events of an EVENT.json: one CloudEvent, or a list of them."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValidationError(f"the events are not JSON: {err}") from None
    items = data if isinstance(data, list) else [data]
    return [check_event(item, f"event {i + 1}") for i, item in enumerate(items)]


def dry_run(
    rules_text: str,
    events: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    filename: str = "<rules>",
) -> Report:
    """Run ``events`` through the rules of ``rules_text``; ``RuleError`` if they are refused."""
    engine = Engine(parse_rules(rules_text, filename))
    reports = []
    for i, event in enumerate(events):
        checked = check_event(dict(event), f"event {i + 1}")
        at = _time(checked["time"], f"event {i + 1}") if "time" in checked else now
        reports.append(EventReport(checked, at, tuple(engine.trace(checked, at))))
    return Report(len(engine.rules), tuple(reports))


def format_report(report: Report) -> str:
    """The report for a person: per event, the rules reached and what they would do."""
    lines: list[str] = []
    for number, item in enumerate(report.events, 1):
        event = item.event
        lines.append(
            f"event {number}: {event['type']} from {event['source']}"
            + (f" about {event['subject']}" if event.get("subject") else "")
            + f" (id {event['id']}) at {item.at.isoformat()}"
        )
        for outcome in item.outcomes:
            lines += _describe(outcome)
        left = report.rules - len(item.outcomes)
        if left:
            lines.append(f"  {left} other rule{'s' if left != 1 else ''} not triggered")
    return "\n".join(lines)


def _describe(outcome: Outcome) -> list[str]:
    head = f"  {outcome.rule_id}: "
    if outcome.error:
        return [head + f"error: {outcome.error}"]
    head += f"condition {_json(outcome.value)}"
    if outcome.window is not None:
        figures = ", ".join(
            f"{k} {_json(v)}" for k, v in outcome.window.items() if k not in ("group", "fired")
        )
        group = outcome.window["group"]
        head += f"; window{f' {group}' if group else ''}: {figures}"
        head += f", threshold {_json(outcome.window['fired'])}"
    if outcome.firing is None:
        return [head]
    lines = [head + f" -> fires {len(outcome.firing.actions)} action(s)"]
    for action in outcome.firing.actions:
        lines.append(f"    {action.kind} {_json(dict(action.fields))}")
    return lines


def _outcome(outcome: Outcome) -> dict[str, Any]:
    firing = outcome.firing
    return {
        "rule": outcome.rule_id,
        "condition": outcome.value,
        "error": outcome.error,
        "window": dict(outcome.window) if outcome.window is not None else None,
        "fires": [{"kind": a.kind, "key": a.key, "fields": dict(a.fields)} for a in firing.actions]
        if firing
        else [],
    }


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _time(value: Any, where: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationError(f"{where}: time {value!r} is not an RFC 3339 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
