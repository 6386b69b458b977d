"""Hub functions' triggers and crons as rules: made like written ones, followed by the
rules runner (built again when a function changes), their schedules kept by deploys and
removals, and the events functions emit stored once per key and cut at the rules' chain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import roost.functions.models  # registers the tables
import roost.rules.models  # noqa: F401
from roost.access import Principal
from roost.access.service import create_tenant, ensure_default_tenant
from roost.db import Base, Database
from roost.errors import ConflictError, ValidationError
from roost.events import schedules
from roost.events.models import EventRow, ScheduleRow
from roost.events.patterns import Trigger
from roost.events.store import insert_events
from roost.functions import service, triggers
from roost.functions.runtime import Functions, emitted_events
from roost.rules import service as rules
from roost.rules.engine import Engine
from roost.rules.models import ActionRow, RuleCursor
from roost.rules.runner import MAX_CHAIN, RuleRunner
from roost.rules.spec import RULE_ID, parse_rules
from roost.settings import HubSettings

OWNER = Principal(tenant_id="default", role="owner", token_id="t-owner")
ACME = Principal(tenant_id="acme", role="admin", token_id="t-acme")
T0 = dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
ECHO = "def handle(event, ctx):\n    return event\n"
_seq = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database the runner's and the functions' threads share: a SQLite file, or a
    PostgreSQL database of the test's own (which holds strings to their lengths)."""
    url = (
        f"sqlite:///{tmp_path / 'hub.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("fresh_postgres_db")
    )
    database = Database(url)
    Base.metadata.create_all(database.engine)
    with database.session() as session:
        ensure_default_tenant(session)
        create_tenant(session, OWNER, "acme")
    yield database
    database.dispose()


def event(
    event_type: str,
    source: str = "roost://api/test",
    subject: str = "",
    event_id: str = "",
    data: Any = None,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or f"e{next(_seq)}",
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": T0.isoformat(),
        "data": data,
    }


def store(db: Database, *events: dict[str, Any], tenant: str = "default") -> None:
    rows = [
        {
            "tenant_id": tenant,
            "event_id": e["id"],
            "source": e["source"],
            "type": e["type"],
            "subject": e["subject"],
            "device_id": None,
            "time": T0,
            "data": e["data"],
            "received_at": T0,
        }
        for e in events
    ]
    with db.session() as session:
        insert_events(session, rows)


def deploy(
    db: Database,
    name: str,
    trigger: dict[str, Any] | None = None,
    cron: str = "",
    on: str = "hub",
    principal: Principal = OWNER,
    source: str = ECHO,
) -> None:
    start = service.Start.parse(on, trigger, cron)
    with db.session() as session:
        service.deploy(
            session,
            principal,
            name,
            {"main.py": source},
            "main",
            service.Limits(),
            HubSettings(),
            T0,
            start,
        )


def remove(db: Database, name: str) -> None:
    with db.session() as session:
        service.remove(session, OWNER, name)


def outbox(db: Database, tenant: str = "default") -> list[ActionRow]:
    with db.session() as session:
        query = select(ActionRow).where(ActionRow.tenant_id == tenant).order_by(ActionRow.id)
        return list(session.scalars(query))


def function_schedules(db: Database) -> list[ScheduleRow]:
    with db.session() as session:
        return list(session.scalars(select(ScheduleRow).order_by(ScheduleRow.name)))


# -- the rules, pure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cron", "expected"),
    [
        ("greet", False, "fn:greet"),
        ("greet", True, "fn:greet@cron"),
        ("a" * 61, False, "fn:" + "a" * 61),
    ],
)
def test_a_functions_rule_id_names_it(name: str, cron: bool, expected: str) -> None:
    assert triggers.rule_id(name, cron) == expected
    assert not RULE_ID.match(expected), "no rule a person writes can have it"


def test_long_names_make_rule_ids_that_fit_and_stay_apart() -> None:
    names = ["x" * 63, "x" * 62 + "y", "x" * 62]
    ids = {(triggers.rule_id(n, cron), cron) for n in names for cron in (False, True)}
    assert len({i for i, _ in ids}) == 6
    assert all(len(i) <= 64 and i.startswith("fn:xxx") for i, _ in ids)
    assert all(i.endswith("@cron") == cron for i, cron in ids)


def test_a_trigger_renders_its_invoke_as_a_written_rule_would() -> None:
    (written,) = parse_rules(
        "id: door\ntrigger: {type: 'app.door.*'}\nactions: [{kind: invoke, function: greet}]\n"
    )
    (made,) = triggers.rules_of("greet", Trigger.from_dict({"type": ["app.door.*"]}), "")
    opened = event("app.door.opened", data={"state": "open"})
    (by_written,) = Engine([written]).evaluate(opened, T0)
    (by_made,) = Engine([made]).evaluate(opened, T0)
    assert by_made.rule_id == "fn:greet"
    assert [(a.kind, a.fields) for a in by_made.actions] == [
        (a.kind, a.fields) for a in by_written.actions
    ]
    assert by_made.actions[0].fields == {"function": "greet", "input": opened}
    assert Engine([made]).evaluate(event("app.window.opened"), T0) == []


@pytest.mark.parametrize(
    ("source", "subject", "fires"),
    [
        (schedules.SCHEDULE_SOURCE, "tick", True),
        (schedules.SCHEDULE_SOURCE, "other", False),
        ("roost://api/default", "tick", False),  # posted to /v1/events: not the cron
        ("roost://rules/r", "tick", False),
    ],
)
def test_a_cron_rule_takes_only_its_schedules_events(
    source: str, subject: str, fires: bool
) -> None:
    rules_made = triggers.rules_of("tick", None, "* * * * *")
    assert [r.id for r in rules_made] == ["fn:tick@cron"]
    cron_event = event(schedules.FUNCTION_CRON_TYPE, source=source, subject=subject)
    firings = Engine(rules_made).evaluate(cron_event, T0)
    assert bool(firings) is fires


# -- the runner follows the functions -----------------------------------------------------


def test_a_triggered_function_is_invoked_through_the_outbox_without_any_rule(
    db: Database,
) -> None:
    deploy(db, "greet", {"type": ["app.door.*"]})
    deploy(db, "quiet")  # no trigger: nothing for the runner
    deploy(db, "edge", {"type": ["app.door.*"]}, on="role=door")  # the devices' business
    opened, window = event("app.door.opened"), event("app.window.opened")
    store(db, opened, window)  # before the runner's first pass: still after the deploy
    store(db, event("app.door.opened"), tenant="acme")
    runner = RuleRunner(db)
    assert runner.run_once().actions == 1
    (action,) = outbox(db)
    assert (action.rule_id, action.kind, action.event_id) == ("fn:greet", "invoke", opened["id"])
    assert action.fields == {"function": "greet", "input": opened}
    assert outbox(db, "acme") == []


def test_redeploys_and_removals_change_what_the_runner_does(db: Database) -> None:
    deploy(db, "greet", {"type": ["app.door.*"]})
    runner = RuleRunner(db)
    runner.run_once()
    deploy(db, "greet", {"type": ["app.window.*"]})  # a new version, another trigger
    store(db, event("app.door.opened"), event("app.window.opened"))
    runner.run_once()
    assert [a.fields["input"]["type"] for a in outbox(db)] == ["app.window.opened"]
    deploy(db, "greet")  # no trigger any more
    store(db, event("app.window.opened"))
    runner.run_once()
    assert len(outbox(db)) == 1
    deploy(db, "greet", {"type": ["app.window.*"]})
    runner.run_once()
    remove(db, "greet")
    store(db, event("app.window.opened"))
    runner.run_once()
    assert len(outbox(db)) == 1
    # Removed and deployed again: the same name and version 1 is a new function.
    deploy(db, "greet", {"type": ["app.window.*"]})
    store(db, event("app.window.opened"))
    runner.run_once()
    assert len(outbox(db)) == 2


def apply_a_rule(db: Database) -> None:
    """A rule ``r`` the tests' events never reach."""
    with db.session() as session:
        rules.apply(
            session,
            OWNER,
            "id: r\ntrigger: {type: x}\nactions: [{kind: emit, type: y}]\n",
            "r.yaml",
            T0,
        )


def test_a_first_trigger_does_not_react_to_events_from_before_it(db: Database) -> None:
    apply_a_rule(db)
    RuleRunner(db).run_once()
    with db.session() as session:
        rules.remove(session, OWNER, "r")
    store(db, event("app.door.opened"))  # while the tenant had nothing to run
    deploy(db, "greet", {"type": ["app.door.*"]})
    RuleRunner(db).run_once()
    assert outbox(db) == []
    with db.session() as session:
        held = session.get(RuleCursor, "default")
        newest = session.scalar(select(EventRow.seq).order_by(EventRow.seq.desc()).limit(1))
    assert held is not None
    assert held.seq == newest


def test_a_function_reacting_to_its_own_events_stops_after_a_chain(db: Database) -> None:
    deploy(db, "echo", {"type": ["ping"]})
    runner = RuleRunner(db)
    store(db, event("ping"))
    done: set[str] = set()
    for _ in range(3 * MAX_CHAIN):
        runner.run_once()
        # Run the invoke actions as delivery does: the function emits one ping each time.
        for action in outbox(db):
            if action.key not in done:
                done.add(action.key)
                rows = emitted_events("default", "echo", action.key, [{"type": "ping"}], 1024, T0)
                with db.session() as session:
                    insert_events(session, rows)
    assert len(outbox(db)) == MAX_CHAIN, "the event at the end of the chain is not evaluated"


# -- crons --------------------------------------------------------------------------------


def test_a_cron_is_a_schedule_kept_by_deploys_and_removed_with_the_function(
    db: Database,
) -> None:
    deploy(db, "tick", cron="*/5 * * * *")
    (row,) = function_schedules(db)
    assert (row.name, row.type, row.subject, row.cron) == (
        "fn:tick",
        schedules.FUNCTION_CRON_TYPE,
        "tick",
        "*/5 * * * *",
    )
    deploy(db, "tick", cron="*/5 * * * *")
    assert [(r.id, r.next_at) for r in function_schedules(db)] == [(row.id, row.next_at)]
    deploy(db, "tick", cron="* * * * * */10")
    (changed,) = function_schedules(db)
    assert (changed.id, changed.cron) == (row.id, "* * * * * */10")
    deploy(db, "tick")
    assert function_schedules(db) == []
    deploy(db, "tick", cron="0 * * * *")
    deploy(db, "tick", cron="0 * * * *", on="all")  # on devices: the hub keeps no schedule
    assert function_schedules(db) == []
    deploy(db, "tick", cron="0 * * * *")
    remove(db, "tick")
    assert function_schedules(db) == []


def test_a_functions_schedule_fires_it_through_the_runner(db: Database) -> None:
    deploy(db, "tick", cron="* * * * *")
    runner = RuleRunner(db)
    runner.run_once()
    with db.session() as session:
        assert schedules.fire_due(session, T0 + dt.timedelta(minutes=1)) == 1
    assert runner.run_once().actions == 1
    (action,) = outbox(db)
    assert (action.rule_id, action.fields["function"]) == ("fn:tick@cron", "tick")
    assert action.fields["input"]["type"] == "roost.function.cron"
    assert action.fields["input"]["subject"] == "tick"


def test_a_functions_schedule_is_not_a_persons_to_make_or_remove(db: Database) -> None:
    deploy(db, "tick", cron="* * * * *")
    with db.session() as session, pytest.raises(ConflictError) as refused:
        schedules.remove(session, OWNER, "fn:tick")
    assert str(refused.value) == (
        "schedule 'fn:tick' is the cron of function 'tick': deploy the function again "
        "without --cron, or roost fn rm tick"
    )
    with db.session() as session, pytest.raises(ValidationError, match="functions' own"):
        schedules.add(
            session, OWNER, "fake", "* * * * *", schedules.FUNCTION_CRON_TYPE, "tick", None, 64, T0
        )
    assert schedules.function_schedule_name("t" * 63) != schedules.function_schedule_name(
        "t" * 62 + "u"
    )
    assert len(schedules.function_schedule_name("t" * 63)) == 64


# -- events functions emit ----------------------------------------------------------------


def test_emitted_events_are_named_after_the_key_and_checked() -> None:
    emitted = [{"type": "app.alarm", "subject": "door", "data": {"n": 1}}, {"type": "app.b"}]
    first, second = emitted_events("acme", "greet", "k" * 32, emitted, 1024, T0)
    assert (first["event_id"], first["source"], first["subject"]) == (
        "k" * 32 + "/0",
        "roost://functions/greet",
        "door",
    )
    assert (first["tenant_id"], first["type"], first["data"]) == ("acme", "app.alarm", {"n": 1})
    assert (second["event_id"], second["subject"]) == ("k" * 32 + "/1", "")
    (fresh,) = emitted_events("acme", "greet", "", emitted[:1], 1024, T0)
    assert len(fresh["event_id"]) == 36, "a uuid, without a key"


@pytest.mark.parametrize(
    ("emitted", "message"),
    [
        ({"type": "bad type"}, "ctx.emit event 1.type: 'bad type' must be letters"),
        ({"type": "roost.device.online"}, "roost.* events are the hub's own"),
        ({"type": "a", "data": "x" * 2000}, "ctx.emit event 1.data: 2002 bytes is more than"),
        ({"type": "a", "subject": "s" * 300}, "ctx.emit event 1.subject: at most 256"),
    ],
)
def test_an_emitted_event_that_is_not_one_is_refused(emitted: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        emitted_events("acme", "greet", "", [emitted], 1024, T0)


EMITTER = """\
def handle(event, ctx):
    ctx.emit("app.alarm", {"n": event}, subject="door")
    if event == "bad":
        ctx.emit("roost.fake")
    return "ok"
"""


async def test_an_invocation_stores_its_events_once_per_key(db: Database, tmp_path: Path) -> None:
    deploy(db, "alarm", source=EMITTER)
    functions = Functions(db, HubSettings(data_dir=tmp_path / "hub"), [])
    try:
        for _ in range(2):  # an action tried again: the same key
            done = await functions.invoke("default", "alarm", 1, "rule", "a" * 32)
            assert done.ok
        await functions.invoke("default", "alarm", 2, "cli")
        await functions.invoke("default", "alarm", 2, "cli")
        refused = await functions.invoke("default", "alarm", "bad", "rule", "b" * 32)
    finally:
        await functions.close()
    assert not refused.ok
    assert refused.error == (
        "ctx.emit event 2.type: 'roost.fake': roost.* events are the hub's own"
    )
    with db.session() as session:
        stored = list(session.scalars(select(EventRow).order_by(EventRow.seq)))
    assert [(e.event_id[:34], e.source, e.data) for e in stored[:1]] == [
        ("a" * 32 + "/0", "roost://functions/alarm", {"n": 1})
    ]
    assert len(stored) == 3, "once per key; each invocation without one; none of a failed one"


def test_the_longest_name_fits_the_schedules_and_the_outbox(db: Database) -> None:
    name = "n" * 63
    deploy(db, name, {"type": ["app.door.*"]}, cron="* * * * *")
    runner = RuleRunner(db)
    runner.run_once()
    store(db, event("app.door.opened"))
    with db.session() as session:
        assert schedules.fire_due(session, T0 + dt.timedelta(minutes=1)) == 1
    runner.run_once()
    assert sorted(a.rule_id for a in outbox(db)) == sorted(
        [triggers.rule_id(name), triggers.rule_id(name, cron=True)]
    )
    (row,) = function_schedules(db)
    assert row.name == schedules.function_schedule_name(name)


def test_a_first_rule_does_not_skip_events_waiting_for_a_trigger(db: Database) -> None:
    deploy(db, "greet", {"type": ["app.door.*"]})
    opened = event("app.door.opened")
    store(db, opened)  # stored, not yet evaluated
    apply_a_rule(db)
    RuleRunner(db).run_once()
    assert [(a.rule_id, a.event_id) for a in outbox(db)] == [("fn:greet", opened["id"])]
