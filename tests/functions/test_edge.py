"""Where a function runs and what starts it, as written and as placed on devices, and
the invocations devices report, kept once per key."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from roost.access.service import Principal
from roost.db import Database, utcnow
from roost.errors import ValidationError
from roost.functions import service
from roost.functions.edge import record_invocations, wanted
from roost.functions.models import Invocation
from roost.functions.service import Limits, Start, deploy
from roost.settings import HubSettings

OWNER = Principal(tenant_id="default", role="owner", token_id="t")


def test_edge_functions_go_to_the_devices_their_selectors_pick() -> None:
    functions = [("door", 3, "role=sensor"), ("all", 1, ""), ("cams", 2, "role=camera,site=hq")]
    assert wanted(functions, {"role": "sensor"}) == {"all": {"version": 1}, "door": {"version": 3}}
    assert wanted(functions, {"role": "camera", "site": "hq"}) == {
        "all": {"version": 1},
        "cams": {"version": 2},
    }


def test_on_names_the_hub_every_device_or_a_selector() -> None:
    assert Start.parse("hub", None, "").on_hub
    assert Start.parse("all", None, "").placement == ""
    start = Start.parse(
        " role = sensor ", {"type": "app.door.*", "subject": ["front"]}, "0 * * * *"
    )
    assert start.placement == "role=sensor"
    assert start.trigger is not None
    assert start.trigger.to_dict() == {"type": ["app.door.*"], "source": [], "subject": ["front"]}
    assert start.cron == "0 * * * *"


@pytest.mark.parametrize(
    ("on", "trigger", "cron", "message"),
    [
        ("", None, "", '--on must be "hub", "all" or a label selector'),
        ("=x", None, "", "has no label key"),
        ("hub", {"kind": ["x"]}, "", "a trigger has type, source and subject"),
        ("hub", {"subject": ["x"]}, "", "needs at least one event type pattern"),
        ("hub", {"type": [""]}, "", "patterns of 1 to 200 characters"),
        ("hub", None, "every minute", "is not a cron expression"),
    ],
)
def test_bad_placements_triggers_and_crons_are_named(
    on: str, trigger: dict[str, list[str]] | None, cron: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Start.parse(on, trigger, cron)


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return migrated_db


def _deploy(db: Database, name: str, on: str) -> None:
    with db.session() as session:
        deploy(
            session,
            OWNER,
            name,
            {"main.py": "def handle(event, ctx):\n    return 1\n"},
            "main",
            Limits(),
            HubSettings(),
            utcnow(),
            Start.parse(on, None, ""),
        )


def _invoked(name: str, key: str) -> dict[str, object]:
    return {
        "id": key,
        "source": f"functions/{name}",
        "type": "roost.function.invoked",
        "data": {"ok": True, "result": 1, "version": 1, "duration_ms": "not a number"},
    }


def test_a_device_reports_each_invocation_once_and_only_of_edge_functions(db: Database) -> None:
    _deploy(db, "door", "role=sensor")
    _deploy(db, "greet", "hub")
    reports = [_invoked("door", "k1"), _invoked("door", "k2"), _invoked("greet", "k1")]
    for _ in range(2):
        with db.session() as session:
            record_invocations(session, "default", "dev1", reports)
    with db.session() as session:
        rows = session.scalars(select(Invocation).order_by(Invocation.key)).all()
        kept = [(r.key, r.device_id, r.trigger, r.duration_ms) for r in rows]
    assert kept == [("k1", "dev1", "edge", 0.0), ("k2", "dev1", "edge", 0.0)]
    with db.session() as session:
        record_invocations(session, "default", "dev2", [_invoked("door", "k1")])
        assert len(session.scalars(select(Invocation)).all()) == 3, "keys are per device"


def test_a_device_reporting_many_invocations_keeps_only_the_newest(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "KEEP_INVOCATIONS", 20)
    _deploy(db, "door", "role=sensor")
    kept = []
    for batch in range(4):
        reports = [_invoked("door", f"k{batch}-{i:02d}") for i in range(30)]
        with db.session() as session:
            record_invocations(session, "default", "dev1", reports)
            kept.append(session.scalars(select(Invocation.key).order_by(Invocation.id)).all())
    # Ids 1-120 in batches of 30: only the batches holding ids 50 and 100 end with a sweep.
    assert [len(keys) for keys in kept] == [30, 20, 50, 20]
    assert kept[-1] == [f"k3-{i:02d}" for i in range(10, 30)]
