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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from roost.rules import actions, expressions
from roost.rules.actions import RenderedAction
from roost.rules.expressions import EvalError
from roost.rules.spec import Rule, Window
from roost.rules.template import render_value
from roost.rules.window import Limits, WindowState

# Where the hub's and the devices' events come from (roost.events.store.HUB_SOURCE and
# roost.fleet.ingest); spelled here so the core imports no database code.
HUB_SOURCE = "roost://hub"
DEVICE_SOURCE = "roost://devices/"
RULE_SOURCE = "roost://rules/"
ROUTE_CACHE = 4096  # event types whose routes are remembered
_TYPED = frozenset({actions.PAYLOAD})
_TEXTUAL = frozenset({actions.TEXT, actions.TEXTS, actions.HEADERS})


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
    """The same event, rule and action always give the same key."""
    text = f"{event.get('source', '')}\n{event.get('id', '')}\n{rule_id}\n{index}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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
        self._routes: dict[str, tuple[Rule, ...]] = {}
        self._windows_of = {r.id: r.window for r in self.rules if r.window is not None}
        self._state = WindowState(limits)

    def route(self, event: Mapping[str, Any]) -> list[Rule]:
        """The rules whose trigger the event matches, in file order; no condition evaluated."""
        event_type = event.get("type")
        if not isinstance(event_type, str):
            return []
        routed = self._routes.get(event_type)
        if routed is None:
            routed = self._route_type(event_type)
        return [rule for rule in routed if rule.trigger.admits(event)]

    def _route_type(self, event_type: str) -> tuple[Rule, ...]:
        indices = set(self._exact.get(event_type, ()))
        for index in self._patterns:
            if any(p.matches(event_type) for p in self.rules[index].trigger.types):
                indices.add(index)
        if len(self._routes) >= ROUTE_CACHE:
            self._routes.clear()
        routed = self._routes[event_type] = tuple(self.rules[i] for i in sorted(indices))
        return routed

    def evaluate(self, event: Mapping[str, Any], now: dt.datetime) -> list[Firing]:
        """The rules this event fires, in file order. Counts it into windows."""
        return [o.firing for o in self.trace(event, now) if o.firing is not None]

    def trace(self, event: Mapping[str, Any], now: dt.datetime) -> list[Outcome]:
        """What each routed rule made of the event: value, error, window, firing."""
        rules = self.route(event)
        if not rules:
            return []
        device = device_of(event)
        bindings = expressions.bind({"event": event, "device": device})
        timestamp = now.timestamp()
        outcomes: list[Outcome] = []
        for rule in rules:
            value: Any = None
            try:
                condition = rule.condition
                value = True if condition is None else expressions.evaluate(condition, bindings)
                if value is not True:
                    error = "" if value is False else f"the condition gave {value!r}, not a bool"
                    outcomes.append(Outcome(rule.id, value, error))
                    continue
                figures = None
                if rule.window is not None:
                    figures = self._count(rule.id, rule.window, bindings, timestamp)
                    if not figures["fired"]:
                        outcomes.append(Outcome(rule.id, value, window=figures))
                        continue
            except EvalError as err:
                outcomes.append(Outcome(rule.id, value, str(err)))
                continue
            firing = self._fire(rule, event, device, value, figures)
            outcomes.append(Outcome(rule.id, value, window=figures, firing=firing))
        return outcomes

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
        rendered = []
        for index, action in enumerate(rule.actions):
            spec = actions.KINDS[action.kind]
            fields = {
                name: render_value(raw, context, typed=spec[name].type in _TYPED)
                if spec[name].type in _TYPED | _TEXTUAL
                else raw
                for name, raw in action.fields.items()
            }
            if action.kind == "emit":
                fields["source"] = RULE_SOURCE + rule.id
            rendered.append(
                RenderedAction(action.kind, idempotency_key(event, rule.id, index), fields)
            )
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
