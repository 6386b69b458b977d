"""The engine, table-driven: conditions, routing, windows, firings, state across restarts."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.events.store import HUB_SOURCE
from roost.rules import Engine, Limits, parse_rules
from roost.rules.engine import device_of, idempotency_key

from .conftest import BLOOD_PRESSURE, DOOR_FORCED, T0, days, event, seconds

ACTION = [{"kind": "invoke", "function": "f"}]


def one_rule(condition: str | None = None, **fields: Any) -> Engine:
    rule: dict[str, Any] = {"id": "r", "trigger": {"type": "app.reading"}, "actions": ACTION}
    if condition is not None:
        rule["condition"] = condition
    return Engine(parse_rules(yaml.safe_dump({**rule, **fields})))


# (condition, the event's data (or a whole event), the condition's value, the error)
CONDITIONS: list[tuple[str | None, Any, Any, str]] = [
    (
        "event.data.systolic > 140 || event.data.diastolic > 90",
        {"systolic": 150, "diastolic": 80},
        True,
        "",
    ),
    (
        "event.data.systolic > 140 || event.data.diastolic > 90",
        {"systolic": 120, "diastolic": 95},
        True,
        "",
    ),
    (
        "event.data.systolic > 140 || event.data.diastolic > 90",
        {"systolic": 120, "diastolic": 80},
        False,
        "",
    ),
    ("event.data.systolic > 140", {"systolic": 140.5}, True, ""),  # double against int
    ("event.data.systolic > 140", {"diastolic": 95}, None, 'Key not found in map: "systolic"'),
    ("has(event.data.systolic) && event.data.systolic > 140", {"diastolic": 95}, False, ""),
    ("event.data.systolic > 140", None, None, "Applying SELECT to non-message type"),
    ("event.data.state == 'forced'", {"state": "forced"}, True, ""),
    ("event.data.state == 'forced'", {"state": "closed"}, False, ""),
    ("event.data.tags.exists(t, t == 'urgent')", {"tags": ["a", "urgent"]}, True, ""),
    ("'urgent' in event.data.tags", {"tags": ["a"]}, False, ""),
    ("event.data.readings.all(r, r.v < 10)", {"readings": [{"v": 1}, {"v": 12}]}, False, ""),
    ("size(event.data.readings) >= 2", {"readings": [1, 2]}, True, ""),
    ("event.data.n / 0 > 1", {"n": 1}, None, "divide by zero"),
    ("event.data.flag", {"flag": True}, True, ""),
    ("event.data", {"flag": True}, {"flag": True}, "the condition gave {'flag': True}, not a bool"),
    ("event.subject.startsWith('alice/')", event(subject="alice/arm"), True, ""),
    ("event.source.endsWith('/bp')", event(source="roost://devices/d1/bp"), True, ""),
    ("device == 'd7'", event(source="roost://devices/d7/door"), True, ""),
    ("device == 'd7'", event(source=HUB_SOURCE, subject="d7"), True, ""),
    ("device == ''", event(source="https://example.org/erp"), True, ""),
    (
        "event.data.xs.all(x, x >= 0)",
        {"xs": list(range(20_000))},
        None,
        "Iteration budget exceeded",
    ),
    (None, {"anything": 1}, True, ""),
]


@pytest.mark.parametrize(("condition", "data", "value", "error"), CONDITIONS)
def test_conditions(condition: str | None, data: Any, value: Any, error: str) -> None:
    engine = one_rule(condition)
    the_event = data if isinstance(data, dict) and "specversion" in data else event(data=data)
    (outcome,) = engine.trace({**the_event, "type": "app.reading"}, T0)
    assert (outcome.value, outcome.error) == (value, error)
    assert (outcome.firing is not None) == (value is True and not error)


def test_the_iteration_budget_the_cost_limit_counts_on() -> None:
    """The runtime stops any evaluation past 10,000 comprehension iterations in all,
    nested or not; roost.rules.cost.SIZE assumes exactly this."""
    engine = one_rule("event.data.xs.exists(x, event.data.xs.exists(y, x + y < 0))")
    fine, over = event(data={"xs": list(range(99))}), event(data={"xs": list(range(100))})
    assert engine.trace(fine, T0)[0].value is False  # 99 + 99 * 99 iterations
    assert engine.trace(over, T0)[0].error == "Iteration budget exceeded"  # 100 + 100 * 100


ROUTING_RULES = [
    ("exact", {"type": "app.reading.bp"}),
    ("two-types", {"type": ["app.reading.bp", "app.door.state"]}),
    ("readings", {"type": "app.reading.*"}),
    ("any", {"type": "*"}),
    ("alice", {"type": "app.reading.bp", "subject": "alice/*"}),
    ("from-d1", {"type": "*", "source": "roost://devices/d1/*"}),
    ("hub", {"type": "roost.device.*", "source": HUB_SOURCE}),
    ("two-subjects", {"type": "app.door.state", "subject": ["front", "back"]}),
]
ROUTES = [
    (
        event("app.reading.bp", subject="alice/arm"),
        ["exact", "two-types", "readings", "any", "alice", "from-d1"],
    ),
    (
        event("app.reading.bp", subject="bob/arm", source="roost://devices/d2/bp"),
        ["exact", "two-types", "readings", "any"],
    ),
    (event("app.reading.temp", source="roost://devices/d2/t"), ["readings", "any"]),
    (event("app.door.state", subject="back", source="x"), ["two-types", "any", "two-subjects"]),
    (event("app.door.state", subject="side", source="x"), ["two-types", "any"]),
    (event("roost.device.online", source=HUB_SOURCE, subject="d1"), ["any", "hub"]),
    (event("roost.device.online", source="roost://devices/d2/fake"), ["any"]),
    ({"id": "x", "source": "s", "type": 5}, []),
    ({"id": "x", "source": "s"}, []),
]


@pytest.mark.parametrize(("the_event", "expected"), ROUTES)
def test_routing(the_event: dict[str, Any], expected: list[str]) -> None:
    rules = [{"id": i, "trigger": t, "actions": ACTION} for i, t in ROUTING_RULES]
    engine = Engine(parse_rules(yaml.safe_dump({"rules": rules})))
    assert [r.id for r in engine.route(the_event)] == expected
    assert [f.rule_id for f in engine.evaluate(the_event, T0)] == expected


def test_disabled_rules_are_not_routed() -> None:
    rules = [
        {"id": "on", "trigger": {"type": "t"}, "actions": ACTION},
        {"id": "off", "enabled": False, "trigger": {"type": "t"}, "actions": ACTION},
    ]
    engine = Engine(parse_rules(yaml.safe_dump({"rules": rules})))
    assert [f.rule_id for f in engine.evaluate(event("t"), T0)] == ["on"]


def forced(device: str = "d1") -> dict[str, Any]:
    return event("app.door.state", {"state": "forced"}, source=f"roost://devices/{device}/door")


def test_blood_pressure_example() -> None:
    engine = Engine(parse_rules(BLOOD_PRESSURE))
    high = event("app.reading.bp", {"systolic": 150, "diastolic": 85}, subject="alice/arm")
    (firing,) = engine.evaluate(high, T0)
    assert (firing.rule_id, firing.event_id, firing.value) == (
        "alice-blood-pressure",
        high["id"],
        True,
    )
    sms, mail = firing.actions
    assert (sms.kind, mail.kind) == ("webhook", "email")
    assert sms.fields == {
        "url": "https://sms.example.org/send",
        "body": {"to": "+15550100", "text": "Alice: 150/85"},
        "headers": {},
        "secret": "doctor-sms",
        "timeout": 10.0,
    }
    assert mail.fields["to"] == ["bob@example.org", "carol@example.org"]
    assert mail.fields["subject"] == "Alice's blood pressure is 150/85"
    normal = event("app.reading.bp", {"systolic": 120, "diastolic": 80}, subject="alice/arm")
    bob = event("app.reading.bp", {"systolic": 180, "diastolic": 99}, subject="bob/arm")
    assert engine.evaluate(normal, T0) == []
    assert engine.evaluate(bob, T0) == []


def test_door_example_fires_on_the_tenth_within_30_days() -> None:
    engine = Engine(parse_rules(DOOR_FORCED))
    for n in range(9):
        assert engine.evaluate(forced(), days(3 * n)) == [], f"event {n + 1}"
        assert engine.evaluate(forced("d2"), days(3 * n)) == []  # another device's count
    assert engine.evaluate(event("app.door.state", {"state": "closed"}), days(25)) == []
    (firing,) = engine.evaluate(forced(), days(27))
    assert firing.window == {"group": "d1", "count": 10, "fired": True}
    disable, mail = firing.actions
    assert disable.fields == {
        "device": "d1",
        "name": "guest-access.disable",
        "args": {},
        "timeout": 30.0,
    }
    assert mail.fields["subject"] == "d1: door forced 10 times in 30 days; guest access is off"


def test_door_example_the_first_event_has_left_the_window() -> None:
    engine = Engine(parse_rules(DOOR_FORCED))
    for n in range(9):
        engine.evaluate(forced(), days(n))
    assert engine.evaluate(forced(), days(30)) == []  # the first, at day 0, is 30 days old
    assert len(engine.evaluate(forced(), days(30.5))) == 1  # days 1..8, 30 and 30.5


def test_door_example_survives_a_restart() -> None:
    engine = Engine(parse_rules(DOOR_FORCED))
    for n in range(9):
        engine.evaluate(forced(), days(n))
    stored = json.dumps(engine.dump())  # what the hub writes before it stops
    restarted = Engine(parse_rules(DOOR_FORCED))
    restarted.load(json.loads(stored))
    (firing,) = restarted.evaluate(forced(), days(20))
    assert firing.window is not None
    assert firing.window["count"] == 10
    without_state = Engine(parse_rules(DOOR_FORCED))
    assert without_state.evaluate(forced(), days(20)) == []


def windowed(**window: Any) -> Engine:
    return one_rule("event.data.ok", window=window)


def reading(value: float = 0, ok: bool = True, subject: str = "") -> dict[str, Any]:
    return event(data={"v": value, "ok": ok}, subject=subject)


# (the window, the events: seconds after T0 and value, which of them fire)
WINDOWS: list[tuple[dict[str, Any], list[tuple[float, float]], list[bool]]] = [
    (
        {"over": "10s", "threshold": "count >= 3"},
        [(0, 0), (1, 0), (2, 0), (3, 0), (20, 0), (21, 0), (31, 0)],
        [False, False, True, True, False, False, False],
    ),
    (  # an event exactly `over` old has left the window
        {"over": "10s", "threshold": "count >= 2"},
        [(0, 0), (10, 0), (19.9, 0)],
        [False, False, True],
    ),
    (  # tumbling: periods of 10 s aligned to the epoch start empty
        {"over": "10s", "kind": "tumbling", "threshold": "count >= 2"},
        [(0, 0), (9, 0), (10, 0), (11, 0), (12, 0), (29, 0)],
        [False, True, False, True, True, False],
    ),
    (
        {"over": "1m", "value": "event.data.v", "threshold": "sum > 10"},
        [(0, 4), (1, 4), (2, 4), (70, 4), (71, 7)],
        [False, False, True, False, True],
    ),
    (
        {"over": "1m", "value": "event.data.v", "threshold": "avg >= 5"},
        [(0, 2), (1, 8), (2, 4), (100, 5)],
        [False, True, False, True],
    ),
    (
        {"over": "1m", "value": "event.data.v", "threshold": "max - min > 10"},
        [(0, 20), (1, 25), (2, 9), (70, 30)],
        [False, False, True, False],
    ),
    (
        {
            "over": "1m",
            "kind": "tumbling",
            "value": "event.data.v",
            "threshold": "avg > 30 && count >= 2",
        },
        [(0, 40), (1, 30), (59, 10), (60, 31), (61, 32)],
        [False, True, False, False, True],
    ),
    (  # reset: after firing, the group counts from zero
        {"over": "1h", "threshold": "count >= 2", "reset": True},
        [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)],
        [False, True, False, True, False],
    ),
]


@pytest.mark.parametrize(("window", "events", "fired"), WINDOWS)
def test_windows(
    window: dict[str, Any], events: list[tuple[float, float]], fired: list[bool]
) -> None:
    engine = windowed(**window)
    got = [bool(engine.evaluate(reading(v), seconds(t))) for t, v in events]
    assert got == fired


def test_only_events_that_pass_the_condition_count() -> None:
    engine = windowed(over="1h", threshold="count >= 2")
    assert engine.evaluate(reading(ok=False), seconds(0)) == []
    assert engine.evaluate(reading(ok=False), seconds(1)) == []
    assert engine.evaluate(reading(), seconds(2)) == []
    (outcome,) = engine.trace(reading(), seconds(3))
    assert outcome.window == {"group": "", "count": 2, "fired": True}


def test_groups_count_apart() -> None:
    engine = windowed(over="1h", group_by="event.subject", threshold="count >= 2")
    assert engine.evaluate(reading(subject="a"), seconds(0)) == []
    assert engine.evaluate(reading(subject="b"), seconds(1)) == []
    (firing,) = engine.evaluate(reading(subject="a"), seconds(2))
    assert firing.window == {"group": "a", "count": 2, "fired": True}
    engine = windowed(over="1h", group_by="event.data.v > 10", threshold="count >= 2")
    engine.evaluate(reading(5), seconds(0))
    (firing,) = engine.evaluate(reading(1), seconds(1))
    assert firing.window is not None
    assert firing.window["group"] == "false"


def test_window_errors_count_nothing() -> None:
    engine = windowed(over="1h", value="event.data.v", threshold="count >= 2")
    (outcome,) = engine.trace(event(data={"ok": True, "v": "high"}), seconds(0))
    assert (outcome.value, outcome.error) == (True, "the window's value gave 'high', not a number")
    assert (
        engine.trace(event(data={"ok": True}), seconds(1))[0].error == 'Key not found in map: "v"'
    )
    assert engine.evaluate(reading(3), seconds(2)) == []  # the first that counted
    grouped = windowed(over="1h", group_by="event.data.g", threshold="count >= 1")
    (outcome,) = grouped.trace(event(data={"ok": True, "g": [1]}), seconds(0))
    assert outcome.error == "the window's group_by gave [1], not a string, number or bool"


def test_window_figures_reach_templates() -> None:
    rule = {
        "id": "hot",
        "trigger": {"type": "app.reading"},
        "window": {"over": "1h", "value": "event.data.v", "threshold": "avg > 30"},
        "actions": [
            {
                "kind": "emit",
                "type": "app.alert",
                "data": {"avg": "{{ window.avg }}", "n": "{{ window.count }}"},
            }
        ],
    }
    engine = Engine(parse_rules(yaml.safe_dump(rule)))
    engine.evaluate(reading(40), seconds(0))
    (firing,) = engine.evaluate(reading(30), seconds(1))
    (emit,) = firing.actions
    assert emit.fields == {
        "type": "app.alert",
        "subject": "",
        "data": {"avg": 35.0, "n": 2},
        "source": "roost://rules/hot",
    }


def test_idempotency_keys() -> None:
    engine = Engine(parse_rules(BLOOD_PRESSURE))
    high = event("app.reading.bp", {"systolic": 150, "diastolic": 85}, subject="alice/x")
    first = engine.evaluate(high, T0)[0].actions
    again = engine.evaluate(high, T0)[0].actions
    assert [a.key for a in first] == [a.key for a in again]  # redelivered: the same keys
    assert first[0].key != first[1].key
    assert first[0].key == idempotency_key(high, "alice-blood-pressure", 0)
    other = engine.evaluate({**high, "id": "other"}, T0)[0].actions
    assert other[0].key != first[0].key


def test_device_of() -> None:
    assert device_of({"source": "roost://devices/d9/door/front"}) == "d9"
    assert device_of({"source": HUB_SOURCE, "subject": "d9"}) == "d9"
    assert device_of({"source": "https://example.org"}) == ""
    assert device_of({}) == ""


def test_state_of_a_changed_or_removed_window_is_dropped() -> None:
    engine = windowed(over="1h", threshold="count >= 3")
    for t in range(2):
        engine.evaluate(reading(), seconds(t))
    state = engine.dump()
    same_meaning = windowed(over="1h", threshold="count >= 3")
    same_meaning.load(state)
    assert same_meaning.evaluate(reading(), seconds(2))
    longer = windowed(over="2h", threshold="count >= 3")
    longer.load(state)
    assert longer.evaluate(reading(), seconds(2)) == []
    assert one_rule("true").dump() == {"version": 1, "rules": {}}
    removed = one_rule("true")
    removed.load(state)
    assert removed.dump() == {"version": 1, "rules": {}}


BAD_STATES: list[Any] = [
    None,
    {"version": 99, "rules": {"r": {}}},
    {"version": 1, "rules": {"r": "x"}},
    {"version": 1, "rules": {"r": {"window": "?", "groups": {}}}},
    {"version": 1, "rules": {"r": {"groups": {"": {"t": ["x"]}}}}},
]


@pytest.mark.parametrize("state", BAD_STATES)
def test_unreadable_state_starts_empty(state: Any) -> None:
    engine = windowed(over="1h", threshold="count >= 1")
    fingerprint = engine.rules[0].window.fingerprint if engine.rules[0].window else ""
    if isinstance(state, dict) and isinstance(state.get("rules"), dict):
        for stored in state["rules"].values():
            if isinstance(stored, dict) and "window" not in stored:
                stored["window"] = fingerprint
    engine.load(state)
    assert engine.dump() == {"version": 1, "rules": {}}
    assert engine.evaluate(reading(), seconds(0))


def test_expire_drops_idle_groups() -> None:
    engine = windowed(over="10s", group_by="event.subject", threshold="count >= 5")
    engine.evaluate(reading(subject="a"), seconds(0))
    engine.evaluate(reading(subject="b"), seconds(5))
    assert engine.expire(seconds(12)) == 1
    assert list(engine.dump()["rules"]["r"]["groups"]) == ["b"]
    tumbling = windowed(over="10s", kind="tumbling", threshold="count >= 5")
    tumbling.evaluate(reading(), seconds(3))
    assert tumbling.expire(seconds(9)) == 0
    assert tumbling.expire(seconds(10)) == 1


def test_limits_bound_the_state() -> None:
    rule = yaml.safe_dump(
        {
            "id": "r",
            "trigger": {"type": "app.reading"},
            "window": {"over": "1h", "group_by": "event.subject", "threshold": "count >= 100"},
            "actions": ACTION,
        }
    )
    engine = Engine(parse_rules(rule), Limits(max_events=3, max_groups=2))
    for n in range(5):
        (outcome,) = engine.trace(reading(subject="a"), seconds(n))
    assert outcome.window is not None
    assert outcome.window["count"] == 3  # saturates at max_events
    engine.evaluate(reading(subject="b"), seconds(6))
    engine.evaluate(reading(subject="c"), seconds(7))  # "a" was idle longest
    assert sorted(engine.dump()["rules"]["r"]["groups"]) == ["b", "c"]


# Routing never changes results: the engine gives, for every event, exactly what each
# rule alone (in its own engine, with its own window state) gives, in file order.
TYPES = ["app.a", "app.b", "app.a.x", "roost.device.online"]
TRIGGERS = st.fixed_dictionaries(
    {"type": st.sampled_from([*TYPES, "app.*", "*", "*.x", ["app.a", "app.b"], ["app.b", "*.x"]])},
    optional={
        "subject": st.sampled_from(["s1", "s*", ["s1", "s2"]]),
        "source": st.sampled_from(["src1", "src*"]),
    },
)
RULES = st.lists(
    st.fixed_dictionaries(
        {"trigger": TRIGGERS, "actions": st.just(ACTION)},
        optional={
            "condition": st.sampled_from(
                [
                    "event.data.v > 2",
                    "event.data.v % 2 == 0",
                    "true",
                    "event.data.v",  # not a bool
                    "10 / (event.data.v - 2) > 3",  # fails when v is 2
                    "event.data.missing > 1",  # always fails
                ]
            ),
            "window": st.fixed_dictionaries(
                {"over": st.sampled_from(["3s", "10s"]), "threshold": st.just("count >= 2")},
                optional={"kind": st.just("tumbling"), "group_by": st.just("event.subject")},
            ),
        },
    ),
    min_size=1,
    max_size=12,
)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(TYPES),
        st.sampled_from(["s1", "s2", "x"]),
        st.sampled_from(["src1", "src2"]),
        st.integers(0, 5),
        st.integers(0, 3),
    ),
    max_size=15,
)


@settings(max_examples=60, deadline=None)
@given(rules=RULES, events=EVENTS)
def test_routing_never_changes_results(rules: list[dict[str, Any]], events: list[Any]) -> None:
    text = yaml.safe_dump({"rules": [{"id": f"r{i}", **r} for i, r in enumerate(rules)]})
    parsed = parse_rules(text)
    together = Engine(parsed)
    alone = [Engine([rule]) for rule in parsed]
    now = T0
    for event_type, subject, source, value, step in events:
        now += dt.timedelta(seconds=step)
        the_event = event(event_type, {"v": value}, subject=subject, source=source)
        expected_route = [r.id for r in parsed if r.trigger.matches(the_event)]
        assert [r.id for r in together.route(the_event)] == expected_route
        expected = [f for engine in alone for f in engine.evaluate(the_event, now)]
        assert together.evaluate(the_event, now) == expected


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 20), min_size=1, max_size=40),
    over=st.integers(1, 30),
)
def test_sliding_count_is_the_events_of_the_last_over_seconds(gaps: list[int], over: int) -> None:
    engine = windowed(over=f"{over}s", threshold="count >= 1")
    times: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
        (outcome,) = engine.trace(reading(), seconds(now))
        assert outcome.window is not None
        assert outcome.window["count"] == sum(1 for t in times if now - t < over)
