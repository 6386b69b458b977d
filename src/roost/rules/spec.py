"""Rules as written in a small YAML file, checked whole before any of them is used.

A file holds one rule (a mapping with an ``id``) or many (``rules:`` and a list)::

    rules:
      - id: alice-bp-high
        trigger: {type: app.reading.bp, subject: "alice/*"}
        condition: event.data.systolic > 140 || event.data.diastolic > 90
        actions:
          - {kind: webhook, url: "https://sms.example/send", body: {to: "+15550100"}}

``parse_rules`` checks everything and reports every problem at once, each named by its
path and its position in the file (``RuleError``): YAML errors, unknown fields, missing
or ill-typed fields, CEL syntax and type errors with a caret, too-costly expressions,
bad windows, unknown action kinds, unreadable templates. See docs/rules.md for the format.

Patterns (``type``, ``source``, ``subject``) are glob-like (``roost.events.patterns``).
Pure.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roost.errors import ValidationError
from roost.events.patterns import Pattern, Trigger
from roost.fleet.selectors import Selector
from roost.rules import actions, expressions
from roost.rules.expressions import Expr, ExprProblem
from roost.rules.source import PathKey, Source
from roost.rules.template import TemplateProblem, parse

RULE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_RULES = 10_000
MAX_ACTIONS = 16
WINDOW_BOUNDS = (1.0, 400 * 86400.0)  # one second to 400 days
WINDOW_KINDS = ("sliding", "tumbling")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RULE_FIELDS = ("id", "description", "enabled", "trigger", "condition", "window", "actions")
_TRIGGER_FIELDS = ("type", "source", "subject")
_WINDOW_FIELDS = ("over", "kind", "group_by", "value", "threshold", "reset")


@dataclass(frozen=True)
class Window:
    """Aggregates over the events that passed the condition, per group, over ``over`` seconds."""

    over: float
    kind: str
    threshold: Expr
    group_by: Expr | None = None
    value: Expr | None = None
    reset: bool = False

    @property
    def fingerprint(self) -> str:
        """Changes whenever the meaning of the kept state would change."""
        parts = [str(self.over), self.kind, self.group_by.source if self.group_by else ""]
        parts.append(self.value.source if self.value else "")
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Action:
    """An action as written: its kind and its fields, strings parsed into templates."""

    kind: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    id: str
    trigger: Trigger
    actions: tuple[Action, ...]
    condition: Expr | None = None
    window: Window | None = None
    description: str = ""
    enabled: bool = True


def parse_rules(text: str, filename: str = "<rules>") -> list[Rule]:
    """The rules of a YAML file; raises ``RuleError`` naming every problem found."""
    source = Source(text, filename)
    source.raise_if_any()
    data = source.data
    if isinstance(data, dict) and "rules" in data:
        _fields(source, (), data, ("rules",))
        items = data["rules"]
        if not isinstance(items, list) or not items:
            source.problem(("rules",), "must be a list of rules")
            items = []
        base: PathKey = ("rules",)
    elif isinstance(data, dict):
        items, base = [data], ()
    else:
        source.problem((), "must be a rule (a mapping with an id) or 'rules:' and a list")
        items, base = [], ()
    if len(items) > MAX_RULES:
        source.problem(base, f"{len(items)} rules, at most {MAX_RULES} in one file")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        path = (*base, index) if base else ()
        rule = _rule(source, path, item)
        rule_id = item.get("id") if isinstance(item, dict) else None
        if rule_id in seen:
            source.problem((*path, "id"), f"'{rule_id}' is used by an earlier rule")
        if isinstance(rule_id, str):
            seen.add(rule_id)
        if rule is not None:
            rules.append(rule)
    source.raise_if_any()
    return rules


def seconds(text: Any) -> float | None:
    """``500ms``, ``30s``, ``15m``, ``1h``, ``30d``, ``2w`` -> seconds; None if not one."""
    match = _DURATION.match(str(text).strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def _fields(source: Source, path: PathKey, data: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for key in data:
        if key not in known:
            source.problem(
                (*path, str(key)), f"unknown field (expected {', '.join(known)})", at_key=True
            )


def _required(source: Source, path: PathKey, data: Mapping[str, Any], name: str) -> bool:
    if data.get(name) is None:
        where = f"'{name}'" if path else f"field '{name}'"
        source.problem(path, f"missing required {where}" if path else f"missing {where}")
        return False
    return True


def _mapping(source: Source, path: PathKey, value: Any, what: str) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    source.problem(path, f"must be {what}, not {_kind(value)}")
    return None


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    return {list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value), repr(value))


def _rule(source: Source, path: PathKey, data: Any) -> Rule | None:
    rule = _mapping(source, path, data, "a rule (a mapping)")
    if rule is None:
        return None
    problems = len(source.problems)
    _fields(source, path, rule, _RULE_FIELDS)
    missing = [n for n in ("id", "trigger", "actions") if not _required(source, path, rule, n)]
    rule_id = str(rule.get("id", ""))
    if "id" not in missing and not RULE_ID.match(rule_id):
        source.problem((*path, "id"), f"'{rule_id}' is not a rule id (a-z, 0-9, '.', '_', '-')")
    for name, kind in (("description", str), ("enabled", bool)):
        if name in rule and not isinstance(rule[name], kind):
            source.problem((*path, name), f"must be a {kind.__name__}, not {_kind(rule[name])}")
    trigger = None
    if "trigger" not in missing:
        trigger = _trigger(source, (*path, "trigger"), rule["trigger"])
    condition = None
    if rule.get("condition") is not None:
        condition = _expr(source, (*path, "condition"), rule["condition"], "event", "bool")
    window = _window(source, (*path, "window"), rule["window"]) if "window" in rule else None
    acts = (
        _actions(source, (*path, "actions"), rule["actions"]) if "actions" not in missing else None
    )
    if missing or trigger is None or acts is None or len(source.problems) > problems:
        return None
    return Rule(
        rule_id,
        trigger,
        acts,
        condition,
        window,
        str(rule.get("description", "")),
        bool(rule.get("enabled", True)),
    )


def _trigger(source: Source, path: PathKey, data: Any) -> Trigger | None:
    trigger = _mapping(source, path, data, "a mapping with type (and source, subject)")
    if trigger is None:
        return None
    _fields(source, path, trigger, _TRIGGER_FIELDS)
    if not _required(source, path, trigger, "type"):
        return None
    found = [_patterns(source, (*path, name), trigger.get(name)) for name in _TRIGGER_FIELDS]
    return Trigger(*found) if found[0] else None


def _patterns(source: Source, path: PathKey, value: Any) -> tuple[Pattern, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        source.problem(path, "must be a pattern or a list of patterns (strings, '*' for any)")
        return ()
    return tuple(Pattern(v) for v in values)


_WANTS = {
    "bool": (expressions.BOOL, "a bool"),
    "key": (expressions.KEY, "a string, number or bool"),
    "number": (expressions.NUMBER, "a number"),
}


def _expr(source: Source, path: PathKey, value: Any, scope: str, want: str) -> Expr | None:
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, str):
        source.problem(path, f"must be a CEL expression (a string), not {_kind(value)}")
        return None
    accepts, what = _WANTS[want]
    try:
        return expressions.compile_expr(value, scope, accepts, what)
    except ExprProblem as err:
        message = err.message
        undeclared = re.search(r"undeclared reference to '(sum|avg|min|max)'", message)
        if scope == "count" and undeclared:
            message = f"'{undeclared.group(1)}' needs the window's value (value: event.data...)"
        source.expression_problem(path, message, err.line, err.column)
        return None


def _window(source: Source, path: PathKey, data: Any) -> Window | None:
    window = _mapping(source, path, data, "a mapping with over and threshold")
    if window is None:
        return None
    _fields(source, path, window, _WINDOW_FIELDS)
    missing = [n for n in ("over", "threshold") if not _required(source, path, window, n)]
    ok = not missing
    over = seconds(window["over"]) if "over" in window else None
    low, high = WINDOW_BOUNDS
    if "over" in window and (over is None or not low <= over <= high):
        source.problem(
            (*path, "over"),
            f"{_kind(window['over'])} is not a duration from 1s to 400d (like 30s, 15m, 1h, 30d)",
        )
        ok = False
    kind = window.get("kind", "sliding")
    if kind not in WINDOW_KINDS:
        source.problem((*path, "kind"), f"{_kind(kind)} is not one of {', '.join(WINDOW_KINDS)}")
        ok = False
    if not isinstance(window.get("reset", False), bool):
        source.problem((*path, "reset"), f"must be true or false, not {_kind(window['reset'])}")
    group_by = value = threshold = None
    if window.get("group_by") is not None:
        group_by = _expr(source, (*path, "group_by"), window["group_by"], "event", "key")
    if window.get("value") is not None:
        value = _expr(source, (*path, "value"), window["value"], "event", "number")
    if window.get("threshold") is not None:
        scope = "aggregates" if "value" in window else "count"
        threshold = _expr(source, (*path, "threshold"), window["threshold"], scope, "bool")
    if not ok or threshold is None or over is None:
        return None
    return Window(over, kind, threshold, group_by, value, bool(window.get("reset", False)))


def _actions(source: Source, path: PathKey, data: Any) -> tuple[Action, ...] | None:
    if not isinstance(data, list) or not data:
        source.problem(path, "must be a list of one or more actions")
        return None
    if len(data) > MAX_ACTIONS:
        source.problem(path, f"{len(data)} actions, at most {MAX_ACTIONS} in one rule")
    found = [_action(source, (*path, i), item) for i, item in enumerate(data)]
    return tuple(a for a in found if a is not None) if all(found) else None


def _action(source: Source, path: PathKey, data: Any) -> Action | None:
    action = _mapping(source, path, data, "an action (a mapping with a kind)")
    if action is None or not _required(source, path, action, "kind"):
        return None
    kind = action["kind"]
    spec = actions.KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        source.problem((*path, "kind"), f"{_kind(kind)} is not one of {', '.join(actions.KINDS)}")
        return None
    _fields(source, path, action, ("kind", *spec))
    fields: dict[str, Any] = {}
    for name, declared in spec.items():
        if action.get(name) is None:
            if declared.required:
                _required(source, path, action, name)
            value = declared.default
            if isinstance(value, str):
                value = parse(value)
            fields[name] = value
        else:
            fields[name] = _field(source, (*path, name), declared, action[name])
    _check_action(source, path, kind, action)
    return Action(kind, fields)


def _field(source: Source, path: PathKey, declared: actions.Field, value: Any) -> Any:
    if declared.type == actions.DURATION:
        found = seconds(value)
        low, high = declared.bounds
        if found is None or not low <= found <= high:
            source.problem(path, f"{_kind(value)} is not a duration from {low:g}s to {high:g}s")
        return found
    if declared.type == actions.NAME:
        if not isinstance(value, str) or not RULE_ID.match(value):
            source.problem(path, f"{_kind(value)} is not a name (a-z, 0-9, '.', '_', '-')")
        return value
    shapes = {
        actions.TEXT: (str,),
        actions.TEXTS: (str, list),
        actions.HEADERS: (dict,),
        actions.PAYLOAD: (str, list, dict, int, float, bool),
    }[declared.type]
    if not isinstance(value, shapes):
        source.problem(path, f"must be {_SHAPE_NAMES[declared.type]}, not {_kind(value)}")
        return None
    if declared.type == actions.TEXTS and isinstance(value, str):
        value = [value]
    return _templates(source, path, value, declared.type)


_SHAPE_NAMES = {
    actions.TEXT: "a string",
    actions.TEXTS: "a string or a list of strings",
    actions.HEADERS: "a mapping of header names to strings",
    actions.PAYLOAD: "a value",
}


def _templates(source: Source, path: PathKey, value: Any, field_type: str) -> Any:
    """Parse every string inside ``value`` into a template, reporting where one is bad."""
    if isinstance(value, str):
        try:
            return parse(value)
        except TemplateProblem as err:
            source.expression_problem(path, err.message, 1, err.column)
            return value
    if isinstance(value, list):
        if field_type == actions.TEXTS and not all(isinstance(v, str) for v in value):
            source.problem(path, "must be a string or a list of strings")
        return [_templates(source, (*path, i), v, field_type) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if field_type == actions.HEADERS and not all(isinstance(v, str) for v in value.values()):
            source.problem(path, "header values must be strings")
        return {
            str(k): _templates(source, (*path, str(k)), v, field_type) for k, v in value.items()
        }
    return value


def _check_action(source: Source, path: PathKey, kind: str, action: Mapping[str, Any]) -> None:
    """What a kind needs beyond its fields' types."""
    url = action.get("url")
    templated = not isinstance(url, str) or url.startswith("{{")
    if kind == "webhook" and not templated and not re.match(r"^https?://[^/\s]+", str(url)):
        source.problem((*path, "url"), f"'{url}' is not an http:// or https:// URL")
    if kind == "email":
        for name in ("to", "cc"):
            value = action.get(name)
            for i, address in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(address, str) and "{{" not in address and "@" not in address:
                    where = (*path, name, i) if isinstance(value, list) else (*path, name)
                    source.problem(where, f"'{address}' is not an e-mail address")
    if kind == "publish":
        topic, devices = action.get("topic"), action.get("devices")
        if bool(topic) == bool(devices):
            source.problem(path, "needs exactly one of 'topic' (MQTT) or 'devices' (a selector)")
        if isinstance(topic, str) and (topic.startswith("roost/") or set(topic) & {"+", "#"}):
            source.problem(
                (*path, "topic"),
                f"'{topic}' is not a topic a rule may publish to "
                "(no wildcards; roost/ is Roost's own)",
            )
        if isinstance(devices, str) and "{{" not in devices:
            try:
                Selector.parse(devices)
            except ValidationError as err:
                source.problem((*path, "devices"), str(err))
    if kind == "emit":
        event_type = action.get("type")
        if isinstance(event_type, str) and event_type.startswith("roost."):
            source.problem((*path, "type"), f"'{event_type}': roost.* events are the hub's own")
