"""``roost rules test``: a dry run shows each condition's value and what would fire."""

from __future__ import annotations

import json
from typing import Any

import pytest

from roost.errors import RuleError, ValidationError
from roost.rules import check_event, dry_run, format_report, read_events

from .conftest import BLOOD_PRESSURE, DOOR_FORCED, T0, days, event

BOTH = "rules:\n" + "".join(
    ("    " if i else "  - ") + line + "\n"
    for text in (BLOOD_PRESSURE, DOOR_FORCED)
    for i, line in enumerate(text.splitlines())
)


def test_both_examples_in_one_file() -> None:
    high = event("app.reading.bp", {"systolic": 150, "diastolic": 85}, subject="alice/arm")
    report = dry_run(BOTH, [high], T0, "rules.yaml")
    assert report.rules == 2
    text = format_report(report)
    assert text == (
        f"event 1: app.reading.bp from roost://devices/d1/app about alice/arm (id {high['id']}) "
        "at 2025-03-01T00:00:00+00:00\n"
        "  alice-blood-pressure: condition true -> fires 2 action(s)\n"
        '    webhook {"url": "https://sms.example.org/send", "body": {"to": "+15550100", '
        '"text": "Alice: 150/85"}, "headers": {}, "secret": "doctor-sms", "timeout": 10.0}\n'
        '    email {"to": ["bob@example.org", "carol@example.org"], "cc": [], '
        '"subject": "Alice\'s blood pressure is 150/85", "body": ""}\n'
        "  1 other rule not triggered"
    )


def test_a_window_sees_the_events_before_it_at_their_own_times() -> None:
    door = [
        {
            **event("app.door.state", {"state": "forced"}, source="roost://devices/d4/door"),
            "time": days(n).isoformat(),
        }
        for n in range(10)
    ]
    report = dry_run(DOOR_FORCED, door, T0)
    lines = format_report(report).splitlines()
    assert lines[1] == "  door-forced: condition true; window d4: count 1, threshold false"
    assert (
        "  door-forced: condition true; window d4: count 10, threshold true -> fires 2 action(s)"
        in lines
    )
    assert report.events[-1].at == days(9)
    fired = report.as_dict()["events"][-1]["rules"][0]
    assert fired["window"] == {"group": "d4", "count": 10, "fired": True}
    assert [a["kind"] for a in fired["fires"]] == ["command", "email"]
    assert fired["fires"][0]["fields"]["device"] == "d4"
    json.dumps(report.as_dict())  # JSON-ready, for --json


def test_condition_values_and_errors_are_shown() -> None:
    low = event("app.reading.bp", {"systolic": 120, "diastolic": 80}, subject="alice/arm")
    broken = event("app.reading.bp", {"pulse": 60}, subject="alice/arm")
    text = format_report(dry_run(BLOOD_PRESSURE, [low, broken], T0))
    assert "  alice-blood-pressure: condition false" in text.splitlines()
    assert '  alice-blood-pressure: error: Key not found in map: "systolic"' in text.splitlines()


def test_an_event_no_rule_reaches() -> None:
    text = format_report(dry_run(BLOOD_PRESSURE, [event("app.other")], T0))
    assert text.splitlines()[1] == "  1 other rule not triggered"


def test_a_refused_rules_file_is_refused() -> None:
    broken = BLOOD_PRESSURE.replace("condition: event.data", "condition: evnt.data")
    with pytest.raises(RuleError) as caught:
        dry_run(broken, [], T0, "rules.yaml")
    assert caught.value.problems == [
        "rules.yaml:3:21: condition: undeclared reference to 'evnt.data.systolic'\n"
        "    condition: evnt.data.systolic > 140 || event.data.diastolic > 90\n"
        "                        ^"
    ]


BAD_EVENTS: list[tuple[Any, str]] = [
    ([1], "event 1 must be a JSON object (a CloudEvent)"),
    ([{"source": "s", "type": "t"}], "event 1 has no 'id' (CloudEvents needs id, source, type)"),
    (
        [{"id": "1", "source": "s", "type": ""}],
        "event 1 has no 'type' (CloudEvents needs id, source, type)",
    ),
    (
        [{"id": "1", "source": "s", "type": "t", "specversion": "0.3"}],
        "event 1: specversion '0.3' is not 1.0",
    ),
    ([{"id": "1", "source": "s", "type": "t", "subject": 5}], "event 1: subject must be a string"),
    (
        [{"id": "1", "source": "s", "type": "t", "time": "yesterday"}],
        "event 1: time 'yesterday' is not an RFC 3339 time",
    ),
    (
        [event(), {"id": "2", "source": "s", "type": "t", "data": "x" * 70_000}],
        "event 2 is 70051 bytes, more than 65536",
    ),
]


@pytest.mark.parametrize(("events", "message"), BAD_EVENTS)
def test_bad_events_are_refused(events: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        read_events(json.dumps(events))
    assert str(caught.value) == message


def test_read_events_takes_one_or_a_list() -> None:
    one = event()
    assert read_events(json.dumps(one)) == [one]
    assert read_events(json.dumps([one, one])) == [one, one]
    with pytest.raises(ValidationError, match=r"^the events are not JSON: "):
        read_events("{")
    assert check_event(one) is one
