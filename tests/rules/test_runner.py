"""The rules runner on real databases: stored events in, outbox rows out, the cursor and
the windows stored with them, no firing lost or made twice across restarts and replicas."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

import roost.rules.models  # noqa: F401  (registers the tables)
from roost.access import Principal
from roost.access.service import create_tenant, ensure_default_tenant
from roost.db import Base, Database
from roost.events.models import EventRow
from roost.events.store import expire_events, insert_events, when_stored
from roost.rules import service
from roost.rules.models import ActionRow, RuleCursor
from roost.rules.runner import MAX_CHAIN, RuleRunner
from system.procs import wait_for

from .conftest import BLOOD_PRESSURE, DOOR_FORCED, T0, event

OWNER = Principal(tenant_id="default", role="owner", token_id="t-owner")
ACME = Principal(tenant_id="acme", role="admin", token_id="t-acme")


def hours(n: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


def row(e: dict[str, Any], tenant: str = "default", at: dt.datetime = T0) -> dict[str, Any]:
    """An event as the store keeps it, received at ``at``."""
    return {
        "tenant_id": tenant,
        "event_id": e["id"],
        "source": e["source"],
        "type": e["type"],
        "subject": e["subject"],
        "device_id": None,
        "time": at,
        "data": e["data"],
        "received_at": at,
    }


def at_noon(db: Database, batch: int = 500) -> RuleRunner:
    """A runner whose clock says noon on the day of the test events."""
    return RuleRunner(db, batch, clock=lambda: hours(12))


def store(
    db: Database, *events: dict[str, Any], tenant: str = "default", at: dt.datetime = T0
) -> None:
    with db.session() as session:
        insert_events(session, [row(e, tenant, at) for e in events])


def door(device: str, state: str = "forced") -> dict[str, Any]:
    return event("app.door.state", {"state": state}, source=f"roost://devices/{device}/door")


def apply(db: Database, text: str, principal: Principal = OWNER) -> None:
    with db.session() as session:
        service.apply(session, principal, text, "rules.yaml", T0)


def outbox(db: Database, tenant: str = "default") -> list[ActionRow]:
    with db.session() as session:
        query = select(ActionRow).where(ActionRow.tenant_id == tenant).order_by(ActionRow.id)
        return list(session.scalars(query))


def cursor(db: Database, tenant: str = "default") -> RuleCursor:
    with db.session() as session:
        row = session.get(RuleCursor, tenant)
        assert row is not None
        return row


def newest(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.max(EventRow.seq))) or 0


def fresh(url: str) -> Database:
    database = Database(url)
    Base.metadata.create_all(database.engine)
    with database.session() as session:
        ensure_default_tenant(session)
        create_tenant(session, OWNER, "acme")
    return database


@pytest.fixture
def file_db(tmp_path: Path) -> Iterator[Database]:
    """A database file, so that several threads (and runners) share it."""
    database = fresh(f"sqlite:///{tmp_path / 'hub.db'}")
    yield database
    database.dispose()


def test_a_firing_puts_its_actions_in_the_outbox_with_the_cursor(db: Database) -> None:
    apply(db, BLOOD_PRESSURE)
    high = event("app.reading.bp", {"systolic": 150, "diastolic": 85}, subject="alice/arm")
    normal = event("app.reading.bp", {"systolic": 120, "diastolic": 80}, subject="alice/arm")
    store(db, normal, high, at=hours(1))
    done = at_noon(db).run_once()
    assert (done.events, done.actions, done.more) == (2, 2, False)
    webhook, mail = outbox(db)
    assert (webhook.kind, webhook.rule_id, webhook.event_id) == (
        "webhook",
        "alice-blood-pressure",
        high["id"],
    )
    assert webhook.fields["body"] == {"to": "+15550100", "text": "Alice: 150/85"}
    assert mail.fields["subject"] == "Alice's blood pressure is 150/85"
    assert (webhook.status, webhook.attempts, webhook.next_at) == ("pending", 0, webhook.created_at)
    assert webhook.key[:30] == mail.key[:30]  # one firing, two actions
    assert webhook.key != mail.key
    assert cursor(db).seq == newest(db)


def test_events_stored_before_the_first_rule_are_not_evaluated(db: Database) -> None:
    store(db, *(door("d1") for _ in range(12)))
    apply(db, DOOR_FORCED)
    at_noon(db).run_once()
    assert outbox(db) == []
    store(db, door("d1"))
    assert at_noon(db).run_once().events == 1


def test_the_tenth_forced_door_fires_once_across_a_restart(db: Database) -> None:
    apply(db, DOOR_FORCED)
    store(db, *(door("d1") for _ in range(9)), door("d2"), door("d1", "closed"), at=hours(1))
    at_noon(db).run_once()
    assert outbox(db) == []
    groups = cursor(db).windows["rules"]["door-forced"]["groups"]
    assert {key: len(group["t"]) for key, group in groups.items()} == {"d1": 9, "d2": 1}
    # A new runner (a restarted hub) counts on from the stored windows.
    store(db, door("d1"), at=hours(2))
    at_noon(db).run_once()
    command, mail = outbox(db)
    assert (command.kind, command.fields["device"], command.fields["name"]) == (
        "command",
        "d1",
        "guest-access.disable",
    )
    assert mail.fields["subject"] == "d1: door forced 10 times in 30 days; guest access is off"


def test_two_runners_share_the_cursor_and_never_fire_twice(file_db: Database) -> None:
    apply(file_db, DOOR_FORCED)
    one, two = at_noon(file_db), at_noon(file_db)
    store(file_db, *(door("d1") for _ in range(5)))
    one.run_once()
    store(file_db, *(door("d1") for _ in range(4)))
    assert two.run_once().events == 4, "the second runner starts where the first stopped"
    store(file_db, door("d1"))
    # The first runner's windows are behind the stored cursor: it loads them first.
    assert one.run_once().actions == 2
    for runner in (one, two):
        assert runner.run_once().events == 0
    assert len(outbox(file_db)) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_runners_fire_each_firing_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'hub.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("fresh_postgres_db")
    )
    db = fresh(url)
    try:
        apply(db, DOOR_FORCED.replace("count >= 10", "count >= 5"))
        stop = threading.Event()
        failures: list[BaseException] = []

        def keep_running(runner: RuleRunner) -> None:
            try:
                while not stop.is_set():
                    runner.run_once()
            except BaseException as err:
                failures.append(err)

        threads = [
            threading.Thread(target=keep_running, args=(at_noon(db, batch=3),)) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for _ in range(5):
            for device in ("d1", "d2", "d3", "d4"):
                store(db, door(device))
        last = newest(db)
        wait_for(lambda: cursor(db).seq >= last, timeout=60, what="the runners to catch up")
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures
        assert cursor(db).seq == last
        fired = sorted(row.fields["device"] for row in outbox(db) if row.kind == "command")
        assert fired == ["d1", "d2", "d3", "d4"]
        assert len(outbox(db)) == 8
    finally:
        db.dispose()


def test_events_commit_in_the_order_of_their_seq_on_postgresql(fresh_postgres_db: str) -> None:
    db = fresh(fresh_postgres_db)
    try:
        apply(db, DOOR_FORCED.replace("count >= 10", "count >= 1"))
        runner = at_noon(db)
        runner.run_once()
        with db.session() as first:
            insert_events(first, [row(door("d1"))])  # takes its seq, commits last
            second = threading.Thread(target=store, args=(db, door("d2")))
            second.start()
            second.join(timeout=0.5)  # it waits for the first: it would come after it
            runner.run_once()
        second.join()
        runner.run_once()
        fired = sorted(r.fields["device"] for r in outbox(db) if r.kind == "command")
        assert fired == ["d1", "d2"]
    finally:
        db.dispose()


def test_rules_follow_the_store_when_it_numbers_from_one_again(db: Database) -> None:
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 1"))
    store(db, door("d1"), door("d1"), door("d1"))
    runner = at_noon(db)
    runner.run_once()
    with db.session() as session:
        assert expire_events(session, hours(100)) == 3  # the retention took them all
    store(db, door("d2"))
    assert newest(db) < cursor(db).seq, "SQLite gives the next event seq 1"
    runner.run_once()
    assert [r.fields["device"] for r in outbox(db) if r.kind == "command"] == ["d1"] * 3 + ["d2"]


def test_a_changed_rule_keeps_its_counts_and_a_changed_window_starts_again(
    db: Database,
) -> None:
    apply(db, DOOR_FORCED)
    runner = at_noon(db)
    store(db, *(door("d1") for _ in range(5)))
    runner.run_once()
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 6"))
    store(db, door("d1"))
    assert runner.run_once().actions == 2, "the threshold changed: the counts stay"
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 2").replace("30d", "20d"))
    store(db, door("d1"))
    assert runner.run_once().actions == 0, "the window changed: it counts from zero"
    store(db, door("d1"))
    assert runner.run_once().actions == 2


def test_removed_and_disabled_rules_do_not_fire(db: Database) -> None:
    apply(db, BLOOD_PRESSURE)
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 1"))
    runner = at_noon(db)
    high = {"systolic": 150, "diastolic": 85}
    with db.session() as session:
        service.remove(session, OWNER, "alice-blood-pressure")
        service.set_enabled(session, OWNER, "door-forced", False, T0)
    store(db, event("app.reading.bp", high, subject="alice/arm"), door("d1"))
    assert runner.run_once().events == 2
    assert outbox(db) == []
    with db.session() as session:
        service.set_enabled(session, OWNER, "door-forced", True, T0)
    store(db, door("d1"))
    assert runner.run_once().actions == 2


def test_tenants_have_their_own_rules_cursors_and_outboxes(db: Database) -> None:
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 2"))
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 3"), ACME)
    store(db, door("d1"), door("d1"))
    store(db, door("d1"), door("d1"), tenant="acme")
    at_noon(db).run_once()
    assert len(outbox(db)) == 2
    assert outbox(db, "acme") == []
    assert cursor(db).seq == cursor(db, "acme").seq == newest(db)


def test_a_long_backlog_goes_in_batches(db: Database) -> None:
    apply(db, DOOR_FORCED.replace("count >= 10", "count >= 7"))
    store(db, *(door("d1") for _ in range(7)))
    runner = at_noon(db, batch=3)
    passes = [runner.run_once() for _ in range(3)]
    assert [(p.events, p.more) for p in passes] == [(3, True), (3, True), (1, False)]
    assert len(outbox(db)) == 2


def test_rules_reacting_to_their_own_events_stop_after_a_chain(db: Database) -> None:
    apply(db, "id: echo\ntrigger: {type: ping}\nactions: [{kind: emit, type: ping}]\n")
    runner = at_noon(db)
    store(db, event("ping"))
    emitted: set[str] = set()
    for _ in range(3 * MAX_CHAIN):
        runner.run_once()
        # Deliver the emit actions as the outbox does: an event whose id is the key.
        for action in outbox(db):
            if action.key not in emitted:
                emitted.add(action.key)
                echo = event("ping", source="roost://rules/echo", id=action.key)
                store(db, echo)
    assert len(outbox(db)) == MAX_CHAIN, "the event at the end of the chain is not evaluated"


def test_idle_window_groups_expire_now_and_then(db: Database) -> None:
    apply(db, DOOR_FORCED.replace("over: 30d", "over: 1h"))
    now = [hours(0.75)]
    runner = RuleRunner(db, clock=lambda: now[0], expire_every=3600)

    def groups() -> set[str]:
        return set(cursor(db).windows["rules"]["door-forced"]["groups"])

    store(db, door("d1"), at=hours(0))
    runner.run_once()  # expires first (nothing is idle), then every hour
    store(db, door("d2"), at=hours(1))
    now[0] = hours(1.25)
    runner.run_once()
    assert groups() == {"d1", "d2"}, "d1 is idle, but the hour has not passed"
    now[0] = hours(1.75)
    assert runner.run_once().events == 0
    assert groups() == {"d2"}


def test_the_store_tells_its_listeners_after_commit_only(db: Database) -> None:
    heard: list[str] = []
    stop = when_stored(lambda: heard.append("stored"))
    try:

        def stored_then_failed() -> None:
            with db.session() as session:
                insert_events(session, [row(door("d1"))])
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            stored_then_failed()
        assert heard == []
        store(db, door("d1"))
        assert heard == ["stored"]
    finally:
        stop()
    store(db, door("d1"))
    assert heard == ["stored"]


def test_a_stored_event_wakes_the_runner_at_once(file_db: Database) -> None:
    apply(file_db, DOOR_FORCED.replace("count >= 10", "count >= 1"))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wake, fired = asyncio.Event(), asyncio.Event()
        stop = when_stored(lambda: loop.call_soon_threadsafe(wake.set))
        # An hour between polls: only the wake-up can make it run in time.
        task = asyncio.create_task(at_noon(file_db).run(wake, fired.set, poll_s=3600))
        try:
            await asyncio.sleep(0)
            await asyncio.to_thread(store, file_db, door("d1"))
            await asyncio.wait_for(fired.wait(), 30)
        finally:
            stop()
            task.cancel()

    asyncio.run(scenario())
    assert len(outbox(file_db)) == 2
