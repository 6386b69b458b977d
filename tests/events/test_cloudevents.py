"""What ``POST /v1/events`` accepts: CloudEvents 1.0, checked attribute by attribute."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from roost.db import Database
from roost.errors import ValidationError
from roost.events.cloudevents import parse_event
from roost.events.models import EventRow
from roost.events.store import expire_events, insert_events

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


def test_a_full_event_becomes_a_row_with_the_senders_source() -> None:
    row = parse_event(
        {
            "specversion": "1.0",
            "id": "e-1",
            "source": "billing",
            "type": "billing.invoice.paid",
            "subject": "invoice/7",
            "time": "2030-06-01T11:00:00+02:00",
            "datacontenttype": "application/json",
            "data": {"amount": 12},
        },
        "acme",
        1024,
        NOW,
    )
    assert row["source"] == "roost://api/billing"
    assert row["time"] == dt.datetime(2030, 6, 1, 9, 0, tzinfo=dt.UTC)
    assert (row["tenant_id"], row["event_id"], row["subject"]) == ("acme", "e-1", "invoice/7")
    assert row["data"] == {"amount": 12}
    assert row["device_id"] is None


def test_a_minimal_event_gets_an_id_a_source_and_the_time() -> None:
    row = parse_event({"type": "door.opened"}, "acme", 1024, NOW)
    assert len(row["event_id"]) == 36
    assert row["source"] == "roost://api/default"
    assert row["time"] == NOW
    assert row["subject"] == ""


def test_nobody_passes_an_event_off_as_the_hubs() -> None:
    row = parse_event({"type": "roost.device.online", "source": "roost://hub"}, "a", 1024, NOW)
    assert row["source"] == "roost://api/roost://hub"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "event must be a JSON object"),
        ({}, "event.type: a non-empty string is required"),
        ({"type": ""}, "event.type: a non-empty string is required"),
        ({"type": 5}, "event.type: a non-empty string is required"),
        ({"type": "a b"}, "event.type: 'a b' must be letters, digits"),
        ({"type": "x" * 300}, "event.type: at most 256 characters"),
        ({"type": "t", "id": ""}, "event.id: a non-empty string is required"),
        ({"type": "t", "id": "x" * 129}, "event.id: at most 128 characters"),
        ({"type": "t", "subject": "a\nb"}, "event.subject: at most 256 characters, no control"),
        ({"type": "t", "specversion": "0.3"}, "event.specversion: only CloudEvents 1.0"),
        ({"type": "t", "datacontenttype": "text/xml"}, "event.datacontenttype: data must be"),
        ({"type": "t", "time": "yesterday"}, "event.time: 'yesterday' is not an RFC 3339"),
        ({"type": "t", "time": "2030-06-01T10:00:00"}, "event.time: the timestamp needs a time"),
        ({"type": "t", "time": 5}, "event.time: an RFC 3339 timestamp is required"),
        ({"type": "t", "color": "red"}, "event.color: not an attribute Roost keeps"),
        ({"type": "t", "data": "x" * 2000}, "event.data: 2002 bytes is more than the 1024"),
    ],
)
def test_bad_events_are_refused_naming_the_attribute(event: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event(event, "acme", 1024, NOW)
    assert str(caught.value).startswith(message)


def test_events_past_the_retention_are_deleted_in_batches(db: Database) -> None:
    rows = [
        parse_event({"type": "t", "id": str(n)}, "acme", 1024, NOW + dt.timedelta(hours=n))
        for n in range(5)
    ]
    with db.session() as session:
        insert_events(session, rows)
    cutoff = NOW + dt.timedelta(hours=3)
    with db.session() as session:
        assert expire_events(session, cutoff, batch=2) == 2
    with db.session() as session:
        assert expire_events(session, cutoff, batch=2) == 1
        assert expire_events(session, cutoff, batch=2) == 0
    with db.session() as session:
        kept = sorted(e.event_id for e in session.query(EventRow))
    assert kept == ["3", "4"]
