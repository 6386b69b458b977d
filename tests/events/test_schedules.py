"""Schedules on a real (SQLite) database: checked when added, fired once per time they
come round, once for all the times a stopped hub missed, and kept per tenant."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from roost.access import Principal
from roost.db import Database
from roost.errors import ConflictError, NotFoundError, ValidationError
from roost.events import schedules
from roost.events.models import EventRow, ScheduleRow

NOON = dt.datetime(2030, 6, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return NOON + dt.timedelta(minutes=minutes)


def add(db: Database, principal: Principal, name: str = "tick", cron: str = "*/5 * * * *") -> None:
    with db.session() as session:
        schedules.add(session, principal, name, cron, "clock.tick", "", {"n": 1}, 1024, NOON)


def fire(db: Database, minutes: float) -> int:
    with db.session() as session:
        return schedules.fire_due(session, at(minutes))


def fired(db: Database) -> list[tuple[str, dt.datetime, str]]:
    with db.session() as session:
        return [
            (e.event_id, e.time, e.subject) for e in session.query(EventRow).order_by(EventRow.seq)
        ]


def test_a_schedule_fires_each_time_it_comes_round(db: Database, acme: Principal) -> None:
    add(db, acme)
    assert fire(db, 4) == 0
    assert fire(db, 5) == 1
    assert fire(db, 6) == 0, "fired once for 12:05"
    assert fire(db, 10) == 1
    events = fired(db)
    assert [time for _, time, _ in events] == [at(5), at(10)]
    assert all(subject == "tick" for _, _, subject in events)
    with db.session() as session:
        row = session.query(EventRow).first()
        assert row is not None
        assert (row.type, row.source, row.data) == ("clock.tick", "roost://hub/schedules", {"n": 1})


def test_a_stopped_hub_fires_once_for_the_latest_time_it_missed(
    db: Database, acme: Principal
) -> None:
    add(db, acme)
    assert fire(db, 32) == 1
    assert [time for _, time, _ in fired(db)] == [at(30)]
    with db.session() as session:
        (row,) = session.query(ScheduleRow)
        assert row.next_at == at(35)


def test_the_same_firing_is_stored_once(db: Database, acme: Principal) -> None:
    add(db, acme)
    fire(db, 5)
    with db.session() as session:
        session.query(ScheduleRow).update({"next_at": at(5)})  # as a second hub would see it
    fire(db, 5)
    assert len(fired(db)) == 1


@pytest.mark.parametrize(
    ("name", "cron", "event_type", "message"),
    [
        ("Bad Name", "* * * * *", "t", "schedule name 'Bad Name'"),
        ("ok", "61 * * * *", "t", "cron '61 * * * *' is not a cron expression"),
        ("ok", "every day", "t", "cron 'every day' is not a cron expression"),
        ("ok", "* * * * *", "not a type", "type 'not a type' must be letters"),
    ],
)
def test_bad_schedules_are_refused(
    db: Database, acme: Principal, name: str, cron: str, event_type: str, message: str
) -> None:
    with db.session() as session, pytest.raises(ValidationError, match=re.escape(message)):
        schedules.add(session, acme, name, cron, event_type, "", None, 1024, NOON)


def test_names_are_per_tenant_and_removal_is_too(
    db: Database, acme: Principal, owner: Principal
) -> None:
    add(db, acme)
    with pytest.raises(ConflictError):
        add(db, acme)
    add(db, owner)
    with db.session() as session:
        assert [s.name for s in schedules.schedules(session, acme)] == ["tick"]
        schedules.remove(session, owner, "tick")
    with db.session() as session, pytest.raises(NotFoundError):
        schedules.remove(session, owner, "tick")
    with db.session() as session:
        assert [s.tenant_id for s in session.query(ScheduleRow)] == ["acme"]
