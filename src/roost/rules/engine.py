"""The rule engine: an event and the time in, the rules it fires (actions rendered) out.

Routing comes first, so a thousand rules stay cheap: rules are indexed by their exact
trigger types, a short list holds the ones whose type pattern has a ``*``, and the rules
an event type reaches (in file order) are computed once per type and remembered. Only
then are a routed rule's source and subject patterns checked and its CEL condition
evaluated, all of an event's conditions against one shared activation. A rule with a
window counts the events that pass its condition and fires when its threshold holds.

What the engine deliberately does not do: read a clock (``now`` is an argument), store
anything (``dump()``/``load()`` hand the window state to the shell that stores it), or
deliver actions (a ``Firing`` carries them, rendered, with idempotency keys, for the
outbox). An event is a CloudEvents 1.0 dict: id, source, type, subject, time, data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roost.rules import actions, expressions
from roost.rules.actions import RenderedAction
from roost.rules.expressions import EvalError
from roost.rules.spec import Rule, Window
from roost.rules.template import has_template, renderer
from roost.rules.window import Limits, WindowState

# Where the hub's and the devices' events come from (roost.events.store.HUB_SOURCE and
# roost.fleet.ingest); spelled here so the core imports no database code.
HUB_SOURCE = "roost://hub"
DEVICE_SOURCE = "roost://devices/"
RULE_SOURCE = "roost://rules/"
ROUTE_CACHE = 4096  # event types whose routes are remembered
_TYPED = frozenset({actions.PAYLOAD})


@dataclass(frozen=True)
class Firing:
    """A rule that fired on an event: the condition's value, the window's figures, actions."""

    rule_id: str
    event_id: str
    value: Any
    window: Mapping[str, Any] | None
    actions: tuple[RenderedAction, ...]


@dataclass(frozen=True)
class Outcome:
    """What one routed rule made of an event (for a dry run, or logs)."""

    rule_id: str
    value: Any = None  # the condition's value; None when it failed
    error: str = ""
    window: Mapping[str, Any] | None = None
    firing: Firing | None = None


def device_of(event: Mapping[str, Any]) -> str:
    """The device an event is from or about: ``roost://devices/<id>/...``, or the subject of
    the hub's own events; "" otherwise."""
    source = str(event.get("source", ""))
    if source.startswith(DEVICE_SOURCE):
        return source[len(DEVICE_SOURCE) :].split("/", 1)[0]
    if source == HUB_SOURCE:
        return str(event.get("subject") or "")
    return ""


def idempotency_key(event: Mapping[str, Any], rule_id: str, index: int) -> str:
    """The same event, rule and action always give the same key (32 hex digits)."""
    return f"{_firing_key(event, rule_id)}{index:02d}"


def _firing_key(event: Mapping[str, Any], rule_id: str) -> str:
    text = f"{event.get('source', '')}\n{event.get('id', '')}\n{rule_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:30]


@dataclass(frozen=True)
class _Plan:
    """How one action is rendered: its fields as written, and functions for the templated."""

    kind: str
    fields: Mapping[str, Any]
    templated: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...]


def _plan(rule: Rule) -> tuple[_Plan, ...]:
    plans = []
    for action in rule.actions:
        spec = actions.KINDS[action.kind]
        templated = tuple(
            (name, renderer(raw, typed=spec[name].type in _TYPED))
            for name, raw in action.fields.items()
            if has_template(raw)
        )
        plans.append(_Plan(action.kind, dict(action.fields), templated))
    return tuple(plans)


@dataclass(frozen=True)
class _Route:
    """The rules one event type reaches, and their conditions compiled as one list."""

    rules: tuple[Rule, ...]
    batch: Any  # a CEL program giving [condition, ...], or None
    # Each rule, its place in that list (None: no condition), whether it filters further.
    entries: tuple[tuple[Rule, int | None, bool], ...]


class Engine:
    """The enabled rules of a rule set, routed by trigger, with their window state."""

    def __init__(self, rules: Sequence[Rule], limits: Limits | None = None) -> None:
        self.rules = tuple(r for r in rules if r.enabled)
        self._exact: dict[str, list[int]] = {}
        self._patterns: list[int] = []
        for index, rule in enumerate(self.rules):
            if all(p.exact for p in rule.trigger.types):
                for pattern in rule.trigger.types:
                    self._exact.setdefault(pattern.text, []).append(index)
            else:
                self._patterns.append(index)
        self._routes: dict[str, _Route] = {}
        # Keyed by the rules themselves, so event types that reach the same rules (any
        # number of unknown types reaching only '*' rules) share one compiled batch.
        self._batches: dict[tuple[int, ...], _Route] = {}
        self._windows_of = {r.id: r.window for r in self.rules if r.window is not None}
        self._plans = {r.id: _plan(r) for r in self.rules}
        self._state = WindowState(limits)

    def route(self, event: Mapping[str, Any]) -> list[Rule]:
        """The rules whose trigger the event matches, in file order; no condition evaluated."""
        found = self._route(event)
        return [rule for rule in found.rules if rule.trigger.admits(event)] if found else []

    def _route(self, event: Mapping[str, Any]) -> _Route | None:
        event_type = event.get("type")
        if not isinstance(event_type, str):
            return None
        found = self._routes.get(event_type)
        if found is None:
            indices = set(self._exact.get(event_type, ()))
            for index in self._patterns:
                if any(p.matches(event_type) for p in self.rules[index].trigger.types):
                    indices.add(index)
            if len(self._routes) >= ROUTE_CACHE:
                self._routes.clear()
            found = self._routes[event_type] = self._batch(tuple(sorted(indices)))
        return found

    def _batch(self, indices: tuple[int, ...]) -> _Route:
        found = self._batches.get(indices)
        if found is None:
            rules = tuple(self.rules[i] for i in indices)
            conditions = [r.condition for r in rules if r.condition is not None]
            entries, slot = [], 0
            for rule in rules:
                entries.append((rule, slot if rule.condition else None, rule.trigger.filtered))
                slot += rule.condition is not None
            batch = expressions.compile_batch(conditions) if len(conditions) > 1 else None
            found = self._batches[indices] = _Route(rules, batch, tuple(entries))
        return found

    def evaluate(self, event: Mapping[str, Any], now: dt.datetime) -> list[Firing]:
        """The rules this event fires, in file order. Counts it into windows."""
        return self._run(event, now, None)

    def trace(self, event: Mapping[str, Any], now: dt.datetime) -> list[Outcome]:
        """What each routed rule made of the event: value, error, window, firing."""
        outcomes: list[Outcome] = []
        self._run(event, now, outcomes.append)
        return outcomes

    def _run(
        self, event: Mapping[str, Any], now: dt.datetime, note: Callable[[Outcome], None] | None
    ) -> list[Firing]:
        found = self._route(event)
        if found is None:
            return []
        admitted = [(r, s) for r, s, f in found.entries if not f or r.trigger.admits(event)]
        if not admitted:
            return []
        device = device_of(event)
        bindings = expressions.bind({"event": event, "device": device})
        # One call for every condition: the runtime's cost is mostly per call. When any
        # condition fails on this event the list is an error, and each is evaluated alone.
        values = expressions.evaluate_batch(found.batch, bindings) if found.batch else None
        timestamp = now.timestamp()
        firings: list[Firing] = []
        for rule, slot in admitted:
            value: Any = None
            figures = None
            try:
                if rule.condition is None:
                    value = True
                elif values is not None and slot is not None:
                    value = values[slot]
                else:
                    value = expressions.evaluate(rule.condition, bindings)
                if value is True and rule.window is not None:
                    figures = self._count(rule.id, rule.window, bindings, timestamp)
            except EvalError as err:
                if note:
                    note(Outcome(rule.id, value, str(err)))
                continue
            if value is not True or (figures is not None and not figures["fired"]):
                if note:
                    error = (
                        ""
                        if isinstance(value, bool)
                        else f"the condition gave {value!r}, not a bool"
                    )
                    note(Outcome(rule.id, value, error, figures))
                continue
            firing = self._fire(rule, event, device, value, figures)
            firings.append(firing)
            if note:
                note(Outcome(rule.id, value, window=figures, firing=firing))
        return firings

    def _count(self, rule_id: str, window: Window, bindings: Any, now: float) -> dict[str, Any]:
        key = ""
        if window.group_by is not None:
            key = _key_text(expressions.evaluate(window.group_by, bindings))
        number = None
        if window.value is not None:
            number = expressions.evaluate(window.value, bindings)
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise EvalError(f"the window's value gave {number!r}, not a number")
            number = float(number)
        figures = self._state.add(rule_id, window, key, now, number)
        verdict = expressions.evaluate(window.threshold, expressions.bind(figures))
        if not isinstance(verdict, bool):
            raise EvalError(f"the threshold gave {verdict!r}, not a bool")
        if verdict and window.reset:
            self._state.clear(rule_id, key)
        return {"group": key, **figures, "fired": verdict}

    def _fire(
        self,
        rule: Rule,
        event: Mapping[str, Any],
        device: str,
        value: Any,
        figures: Mapping[str, Any] | None,
    ) -> Firing:
        context = {
            "event": event,
            "device": device,
            "rule": {"id": rule.id, "description": rule.description},
            "window": figures or {},
        }
        key = _firing_key(event, rule.id)
        rendered = []
        for index, plan in enumerate(self._plans[rule.id]):
            values = dict(plan.fields)
            for name, render in plan.templated:
                values[name] = render(context)
            if plan.kind == "emit":
                values["source"] = RULE_SOURCE + rule.id
            rendered.append(RenderedAction(plan.kind, f"{key}{index:02d}", values))
        return Firing(rule.id, str(event.get("id", "")), value, figures, tuple(rendered))

    def expire(self, now: dt.datetime) -> int:
        """Drop window groups with nothing left in their window; how many went."""
        return self._state.expire(now.timestamp(), self._windows_of)

    def dump(self) -> dict[str, Any]:
        """The window state as plain JSON-ready data, for the shell to store."""
        return self._state.dump()

    def load(self, data: Mapping[str, Any]) -> None:
        """Take back window state from ``dump()`` (rules whose window changed start empty)."""
        self._state = WindowState.load(data, self._windows_of, self._state.limits)


def _key_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise EvalError(f"the window's group_by gave {value!r}, not a string, number or bool")
