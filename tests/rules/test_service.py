"""The hub's rules service on a real (in-memory SQLite) database: apply, replace, remove,
enable, the hub's refusals, and where a tenant's first rules start reading events."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from sqlalchemy import func, select

import roost.rules.models  # noqa: F401  (registers the tables)
from roost.access import Principal
from roost.db import Database
from roost.errors import NotFoundError, RuleError, ValidationError
from roost.events.models import EventRow
from roost.events.store import hub_event, insert_events
from roost.rules import service
from roost.rules.models import RuleCursor, RuleRow

from .conftest import BLOOD_PRESSURE, DOOR_FORCED, T0, event

TWO = """\
# the house
rules:
  - id: hot-room   # upstairs
    trigger: {type: app.reading.temperature}
    condition: event.data.celsius > 30
    actions:
      - {kind: emit, type: ops.hot}

  # one line
  - {id: cold-room, trigger: {type: app.reading.temperature}, actions: [{kind: emit, type: c}]}
"""


def later(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def stored(db: Database, tenant: str = "default") -> dict[str, RuleRow]:
    with db.session() as session:
        rows = session.scalars(select(RuleRow).where(RuleRow.tenant_id == tenant))
        return {row.rule_id: row for row in rows}


def test_each_rule_is_stored_as_its_author_wrote_it(db: Database, owner: Principal) -> None:
    with db.session() as session:
        applied = service.apply(session, owner, TWO, "house.yaml", T0)
    assert [(a.rule_id, a.version, a.change) for a in applied] == [
        ("hot-room", 1, "created"),
        ("cold-room", 1, "created"),
    ]
    rows = stored(db)
    assert rows["hot-room"].source == (
        "id: hot-room   # upstairs\n"
        "trigger: {type: app.reading.temperature}\n"
        "condition: event.data.celsius > 30\n"
        "actions:\n"
        "  - {kind: emit, type: ops.hot}\n"
    )
    assert rows["cold-room"].source.startswith("{id: cold-room, trigger:")
    assert (rows["hot-room"].created_by, rows["hot-room"].enabled) == ("t-owner", True)
    with db.session() as session:
        listed = [service.describe(r) for r in service.rules(session, owner)]
    assert [r["id"] for r in listed] == ["cold-room", "hot-room"]
    assert listed[1]["trigger"] == {"type": "app.reading.temperature"}
    assert listed[1]["actions"] == ["emit"]


def test_a_single_rule_file_keeps_its_text(db: Database, owner: Principal) -> None:
    with db.session() as session:
        service.apply(session, owner, DOOR_FORCED, "door.yaml", T0)
    row = stored(db)["door-forced"]
    assert row.source == DOOR_FORCED
    with db.session() as session:
        shown = service.describe(service.get(session, owner, "door-forced"))
    assert (shown["window"], shown["actions"]) == ("30d", ["command", "email"])


def test_applying_again_replaces_by_id_and_bumps_the_version(
    db: Database, owner: Principal
) -> None:
    with db.session() as session:
        service.apply(session, owner, TWO, "house.yaml", T0)
    with db.session() as session:
        again = service.apply(session, owner, TWO, "house.yaml", later(1))
    assert [a.change for a in again] == ["unchanged", "unchanged"]
    hotter = TWO.replace("celsius > 30", "celsius > 35")
    with db.session() as session:
        changed = service.apply(session, owner, hotter, "house.yaml", later(2))
    assert [(a.rule_id, a.version, a.change) for a in changed] == [
        ("hot-room", 2, "updated"),
        ("cold-room", 1, "unchanged"),
    ]
    rows = stored(db)
    assert "celsius > 35" in rows["hot-room"].source
    assert rows["hot-room"].updated_at == later(2)
    assert rows["cold-room"].updated_at == T0


def test_a_file_with_one_bad_rule_changes_nothing(db: Database, owner: Principal) -> None:
    with db.session() as session:
        service.apply(session, owner, TWO, "house.yaml", T0)
    bad = TWO.replace("celsius > 30", "celsius > 35").replace("type: c}", "type: roost.c}")
    with pytest.raises(RuleError) as refused, db.session() as session:
        service.apply(session, owner, bad, "house.yaml", later(1))
    assert str(refused.value).startswith(
        "house.yaml:10:92: rules[1].actions[0].type: 'roost.c': roost.* events are the hub's own"
    )
    rows = stored(db)
    assert "celsius > 30" in rows["hot-room"].source
    assert rows["hot-room"].version == 1


def test_invoke_of_a_function_not_deployed_is_refused_at_its_place(
    db: Database, owner: Principal
) -> None:
    text = TWO.replace("{kind: emit, type: ops.hot}", "{kind: invoke, function: cool-down}")
    with pytest.raises(RuleError) as refused, db.session() as session:
        service.apply(session, owner, text, "house.yaml", T0)
    assert refused.value.problems == [
        "house.yaml:7:34: rules[0].actions[0].function: no function 'cool-down'; deploy it "
        "first (roost fn deploy)\n"
        "          - {kind: invoke, function: cool-down}\n"
        "                                     ^"
    ]
    single = "id: x\ntrigger: {type: t}\nactions:\n  - kind: invoke\n    function: f\n"
    with pytest.raises(RuleError, match=r"^r.yaml:5:15: actions\[0\]\.function: no function"):
        service.check(single, "r.yaml", lambda name: False)
    assert service.check(single, "r.yaml", lambda name: name == "f")[0].id == "x"
    assert service.dry_run_file(single, [event("t")], "r.yaml", T0) is not None
    assert stored(db) == {}


def test_invoke_is_named_among_the_files_other_problems_in_order() -> None:
    text = (
        "rules:\n"
        "  - id: a\n    trigger: {type: t}\n    actions: [{kind: invoke, function: f}]\n"
        "  - id: b\n    trigger: {type: t}\n    actions: [{kind: sms}]\n"
        "  - id: c\n    trigger: {type: t}\n    actions: [{kind: invoke, function: f}]\n"
    )
    with pytest.raises(RuleError) as refused:
        service.check(text, "r.yaml", lambda name: False)
    heads = [problem.split("\n")[0] for problem in refused.value.problems]
    assert [head.split(": ")[0:2] for head in heads] == [
        ["r.yaml:4:40", "rules[0].actions[0].function"],
        ["r.yaml:7:22", "rules[1].actions[0].kind"],
        ["r.yaml:10:40", "rules[2].actions[0].function"],
    ]
    assert "no function 'f'" in heads[2]
    with pytest.raises(RuleError) as broken:
        service.check("id: [\n", "r.yaml")
    assert len(broken.value.problems) == 1, "a YAML error is named once"


def test_rules_belong_to_their_tenant(db: Database, owner: Principal, acme: Principal) -> None:
    with db.session() as session:
        service.apply(session, owner, DOOR_FORCED, "door.yaml", T0)
        service.apply(session, acme, DOOR_FORCED.replace("count >= 10", "count >= 3"), "d", T0)
    assert stored(db, "acme")["door-forced"].version == 1
    with db.session() as session:
        assert [r.rule_id for r in service.rules(session, acme)] == ["door-forced"]
        service.remove(session, acme, "door-forced")
    assert list(stored(db)) == ["door-forced"]
    assert stored(db, "acme") == {}


def test_remove_and_unknown_rules(db: Database, owner: Principal) -> None:
    with db.session() as session:
        service.apply(session, owner, TWO, "house.yaml", T0)
        service.remove(session, owner, "hot-room")
    assert list(stored(db)) == ["cold-room"]
    for call in (
        lambda s: service.remove(s, owner, "hot-room"),
        lambda s: service.get(s, owner, "nope"),
        lambda s: service.set_enabled(s, owner, "nope", False, T0),
    ):
        with pytest.raises(NotFoundError, match="no rule"), db.session() as session:
            call(session)


def test_enable_and_disable_make_versions_and_apply_sets_it_back(
    db: Database, owner: Principal
) -> None:
    with db.session() as session:
        service.apply(session, owner, TWO, "house.yaml", T0)
        assert service.set_enabled(session, owner, "hot-room", False, later(1)).version == 2
        # Disabling what is disabled changes nothing.
        assert service.set_enabled(session, owner, "hot-room", False, later(2)).version == 2
    assert stored(db)["hot-room"].enabled is False
    with db.session() as session:
        again = service.apply(session, owner, TWO, "house.yaml", later(3))
    assert (again[0].change, again[0].version) == ("updated", 3)
    assert stored(db)["hot-room"].enabled is True
    off = TWO.replace("  - id: hot-room   # upstairs\n", "  - id: hot-room\n    enabled: false\n")
    with db.session() as session:
        service.apply(session, owner, off, "house.yaml", later(4))
    assert stored(db)["hot-room"].enabled is False


def test_a_rule_that_cannot_be_cut_out_is_written_afresh(db: Database, owner: Principal) -> None:
    # The second rule borrows the first one's actions through a YAML alias.
    text = (
        "rules:\n"
        "  - id: a\n    trigger: {type: t}\n    actions: &acts [{kind: emit, type: x}]\n"
        "  - id: b\n    trigger: {type: u}\n    actions: *acts\n"
    )
    with db.session() as session:
        service.apply(session, owner, text, "aliases.yaml", T0)
    second = stored(db)["b"].source
    assert "*acts" not in second
    assert yaml.safe_load(second) == {
        "id": "b",
        "trigger": {"type": "u"},
        "actions": [{"kind": "emit", "type": "x"}],
    }


def test_a_tenants_first_rules_start_at_the_newest_event(db: Database, owner: Principal) -> None:
    def newest() -> int:
        with db.session() as session:
            return session.scalar(select(func.max(EventRow.seq))) or 0

    def cursor() -> int:
        with db.session() as session:
            row = session.get(RuleCursor, "default")
            assert row is not None
            return row.seq

    with db.session() as session:
        insert_events(session, [hub_event("default", "roost.device.online", "d1", T0)])
        service.apply(session, owner, BLOOD_PRESSURE, "bp.yaml", T0)
    assert cursor() == newest() > 0
    with db.session() as session:
        insert_events(session, [hub_event("default", "roost.device.online", "d2", T0)])
        service.apply(session, owner, DOOR_FORCED, "door.yaml", T0)
    assert cursor() == newest() - 1, "more rules read on from where the first ones are"
    with db.session() as session:
        service.remove(session, owner, "alice-blood-pressure")
        service.remove(session, owner, "door-forced")
        insert_events(session, [hub_event("default", "roost.device.online", "d3", T0)])
    with db.session() as session:
        service.apply(session, owner, DOOR_FORCED, "door.yaml", T0)
    assert cursor() == newest(), "rules after none start at the newest event again"


def test_a_tenant_has_a_bounded_number_of_rules(
    db: Database, owner: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_TENANT_RULES", 2)
    with db.session() as session:
        service.apply(session, owner, TWO, "house.yaml", T0)
        service.apply(session, owner, TWO, "house.yaml", T0)  # replacing adds none
    limit = "at most 2 rules; it has 2, and the file adds 1"
    with pytest.raises(ValidationError, match=limit), db.session() as session:
        service.apply(session, owner, DOOR_FORCED, "door.yaml", T0)


def test_the_dry_run_and_the_outbox_view(db: Database, owner: Principal) -> None:
    high = event("app.reading.bp", {"systolic": 150, "diastolic": 85}, subject="alice/arm")
    report = service.dry_run_file(BLOOD_PRESSURE, [high], "bp.yaml", T0)
    outcome = report.events[0].outcomes[0]
    assert outcome.firing is not None
    assert [a.kind for a in outcome.firing.actions] == ["webhook", "email"]
    with pytest.raises(ValidationError, match="status 'lost' is not one of"), db.session() as s:
        service.actions(s, owner, status="lost")
