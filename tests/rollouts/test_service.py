"""The hub's rollout shell on a real (in-memory SQLite) database: deploy, step, act, undeploy.

Devices are rows whose reported state the tests write the way an agent reports it; time
is handed in, so soak periods and deadlines pass without waiting.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import roost.catalog.models
import roost.rollouts.models  # noqa: F401  (registers the tables)
from fleet.conftest import NOW
from roost.access import Principal
from roost.catalog.models import AppRelease
from roost.db import Database
from roost.errors import NotFoundError, ValidationError
from roost.events.models import EventRow
from roost.fleet.models import Device
from roost.rollouts import service
from roost.rollouts.models import RolloutRow
from roost.rollouts.serial import dump_spec, dump_state, load_spec, load_state

FAST = {"waves": ["1", "50%", "100%"], "soak_s": 10, "deadline_s": 60}


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.fixture
def fleet(db: Database) -> Database:
    with db.session() as session:
        for version in ("1.0.0", "1.1.0"):
            session.add(
                AppRelease(
                    tenant_id="default",
                    name="web",
                    version=version,
                    kind="app",
                    target_path=f"apps/web/web-{version}.tar.gz",
                    sha256="0" * 64,
                    size=1,
                    manifest={},
                    published_by="t-owner",
                )
            )
        for n in range(4):
            add_device(session, f"d{n}", {"role": "router"}, running="1.0.0")
        add_device(session, "other", {"role": "kiosk"}, running="1.0.0")
    return db


def add_device(session: Any, device_id: str, labels: dict[str, str], running: str = "") -> None:
    apps = {"web": {"version": running}} if running else {}
    reported = {}
    if running:
        entry = {"version": running, "wanted": running, "state": "running", "since": 0.0}
        reported = {"apps": {"web": entry}}
    session.add(
        Device(
            id=device_id,
            tenant_id="default",
            labels=labels,
            online=True,
            cert_pem="",
            cert_not_after=NOW + dt.timedelta(days=365),
            desired={"apps": apps},
            reported=reported,
        )
    )


def report(db: Database, device_id: str, state: str, since: float, version: str = "1.1.0") -> None:
    """The device says it runs ``version`` in ``state`` since ``since`` (seconds after NOW)."""
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        running = "1.0.0" if state == "rolled-back" else version
        entry = {
            "version": running,
            "wanted": version,
            "state": state,
            "since": at(since).timestamp(),
        }
        device.reported = {"apps": {"web": entry}}


def wanted(db: Database) -> dict[str, Any]:
    with db.session() as session:
        return {d.id: (d.desired.get("apps") or {}).get("web") for d in session.query(Device).all()}


def step(db: Database, seconds: float) -> None:
    with db.session() as session:
        service.step_rollouts(session, at(seconds))


def deploy(db: Database, principal: Principal, selector: str = "role=router", **spec: Any) -> str:
    with db.session() as session:
        row, _ = service.deploy(
            session, principal, "web", "1.1.0", selector, {**FAST, **spec}, at(0)
        )
        return row.id


def status(db: Database, rollout_id: str) -> str:
    with db.session() as session:
        row = session.get(RolloutRow, rollout_id)
        assert row is not None
        return row.status


def told(db: Database) -> set[str]:
    return {d for d, entry in wanted(db).items() if entry == {"version": "1.1.0"}}


def test_a_rollout_goes_wave_by_wave_and_ends_done(fleet: Database, owner: Principal) -> None:
    rollout_id = deploy(fleet, owner)
    canary = told(fleet)
    assert len(canary) == 1, "only the canary is told first"
    (first,) = canary
    report(fleet, first, "running", since=1)
    step(fleet, 5)
    assert told(fleet) == canary, "the canary has not soaked yet"
    step(fleet, 12)
    second = told(fleet) - canary
    assert len(second) == 1  # 50 % of 4 is 2 devices, one of them the canary
    for device in second:
        report(fleet, device, "running", since=13)
    step(fleet, 24)
    assert told(fleet) == {"d0", "d1", "d2", "d3"}
    for device in told(fleet) - canary - second:
        report(fleet, device, "running", since=25)
    step(fleet, 36)
    assert status(fleet, rollout_id) == "done"
    assert wanted(fleet)["other"] == {"version": "1.0.0"}, "the kiosk is not targeted"
    with fleet.session() as session:
        row = session.get(RolloutRow, rollout_id)
        assert row is not None
        view = service.progress(session, row, at(36))
    assert [w["status"] for w in view["waves"]] == ["passed"] * 3
    assert sum(w["healthy"] for w in view["waves"]) == 4


def test_a_failing_canary_halts_and_rolls_back_with_no_other_device_touched(
    fleet: Database,
    owner: Principal,
) -> None:
    rollout_id = deploy(fleet, owner)
    (canary,) = told(fleet)
    report(fleet, canary, "rolled-back", since=3)
    step(fleet, 4)
    assert status(fleet, rollout_id) == "halted"
    desired = wanted(fleet)
    assert desired[canary] == {"version": "1.0.0"}, "the canary goes back"
    assert all(entry == {"version": "1.0.0"} for entry in desired.values())
    with fleet.session() as session:
        types = [e.type for e in session.query(EventRow).order_by(EventRow.seq)]
    assert "roost.rollout.halted" in types
    assert "roost.rollout.device-failed" in types


def test_an_online_device_that_never_reports_times_out_at_the_deadline(
    fleet: Database,
    owner: Principal,
) -> None:
    rollout_id = deploy(fleet, owner)
    step(fleet, 30)
    assert status(fleet, rollout_id) == "running"
    step(fleet, 61)
    assert status(fleet, rollout_id) == "halted"


def test_a_device_that_joins_after_the_rollout_gets_the_version(
    fleet: Database,
    owner: Principal,
) -> None:
    rollout_id = deploy(fleet, owner, waves=["100%"])
    for device in ("d0", "d1", "d2", "d3"):
        report(fleet, device, "running", since=1)
    step(fleet, 12)
    assert status(fleet, rollout_id) == "done"
    with fleet.session() as session:
        add_device(session, "late", {"role": "router"})
    step(fleet, 13)
    assert wanted(fleet)["late"] == {"version": "1.1.0"}


def test_pause_holds_and_abort_rolls_every_touched_device_back(
    fleet: Database,
    owner: Principal,
) -> None:
    rollout_id = deploy(fleet, owner)
    (canary,) = told(fleet)
    report(fleet, canary, "running", since=1)
    with fleet.session() as session:
        service.act(session, owner, rollout_id, "pause", at(2))
    step(fleet, 30)
    assert told(fleet) == {canary}, "a paused rollout starts no wave"
    with fleet.session() as session:
        service.act(session, owner, rollout_id, "resume", at(31))
        service.act(session, owner, rollout_id, "abort", at(32))
    assert status(fleet, rollout_id) == "aborted"
    assert wanted(fleet)[canary] == {"version": "1.0.0"}
    with fleet.session() as session, pytest.raises(ValidationError, match="aborted"):
        service.act(session, owner, rollout_id, "pause", at(33))


def test_outside_its_window_a_release_is_only_staged(fleet: Database, owner: Principal) -> None:
    # NOW is 12:00 UTC; the window opens at 12:10.
    deploy(fleet, owner, windows=["12:10-13:00"])
    ((device, entry),) = [(d, e) for d, e in wanted(fleet).items() if e.get("apply") is False]
    assert entry == {"version": "1.1.0", "apply": False}
    step(fleet, 601)
    assert wanted(fleet)[device] == {"version": "1.1.0"}


def test_the_newest_deployment_of_an_app_owns_the_devices_both_select(
    fleet: Database,
    owner: Principal,
) -> None:
    deploy(fleet, owner, selector="role", waves=["100%"])
    assert told(fleet) == {"d0", "d1", "d2", "d3", "other"}
    with fleet.session() as session:
        service.deploy(session, owner, "web", "1.0.0", "role=kiosk", {"waves": ["100%"]}, at(1))
    step(fleet, 2)
    assert wanted(fleet)["other"] == {"version": "1.0.0"}
    with fleet.session() as session:
        deployment = service.find_deployment(session, owner, "web", "role")
        service.undeploy(session, owner, deployment.id, at(3))
    desired = wanted(fleet)
    assert all(desired[d] is None for d in ("d0", "d1", "d2", "d3"))
    assert desired["other"] == {"version": "1.0.0"}, "the kiosk belongs to the newer one"


def test_a_new_deploy_supersedes_the_running_rollout(fleet: Database, owner: Principal) -> None:
    first = deploy(fleet, owner)
    with fleet.session() as session:
        service.deploy(session, owner, "web", "1.0.0", "role=router", {}, at(1))
    assert status(fleet, first) == "superseded"


def test_a_selector_with_no_device_yet_waits_for_one(fleet: Database, owner: Principal) -> None:
    rollout_id = deploy(fleet, owner, selector="site=nowhere")
    assert status(fleet, rollout_id) == "waiting"
    with fleet.session() as session:
        add_device(session, "new", {"site": "nowhere"})
    step(fleet, 1)
    assert status(fleet, rollout_id) == "running"
    assert wanted(fleet)["new"] == {"version": "1.1.0"}


def test_other_tenants_and_unknown_releases_are_refused(
    fleet: Database,
    owner: Principal,
    acme: Principal,
) -> None:
    rollout_id = deploy(fleet, owner)
    with fleet.session() as session:
        with pytest.raises(NotFoundError):
            service.get_rollout(session, acme, rollout_id)
        with pytest.raises(NotFoundError):
            service.act(session, acme, rollout_id, "abort", at(1))
        with pytest.raises(NotFoundError, match="publish it first"):
            service.deploy(session, acme, "web", "1.1.0", "role=router", {}, at(1))
        assert service.rollouts(session, acme) == []
    with fleet.session() as session, pytest.raises(ValidationError, match="bogus"):
        service.deploy(session, owner, "web", "1.1.0", "", {"bogus": 1}, at(1))
    assert status(fleet, rollout_id) == "running"


@pytest.mark.parametrize(
    ("entry", "state", "version"),
    [
        (None, "installing", None),
        ({"version": "1.0.0", "wanted": "1.0.0", "state": "running"}, "installing", "1.0.0"),
        ({"version": "1.1.0", "wanted": "1.1.0", "state": "running"}, "healthy", "1.1.0"),
        ({"version": "1.1.0", "wanted": "1.1.0", "state": "installed"}, "healthy", "1.1.0"),
        ({"version": "1.1.0", "wanted": "1.1.0", "state": "starting"}, "installing", "1.1.0"),
        ({"version": "1.0.0", "wanted": "1.1.0", "state": "staged"}, "installing", "1.0.0"),
        ({"version": "1.1.0", "wanted": "1.1.0", "state": "unhealthy"}, "unhealthy", "1.1.0"),
        ({"version": "1.1.0", "wanted": "1.1.0", "state": "crash-looping"}, "failed", "1.1.0"),
        ({"version": "1.0.0", "wanted": "1.1.0", "state": "failed"}, "failed", "1.0.0"),
        ({"version": "1.0.0", "wanted": "1.1.0", "state": "rolled-back"}, "rolled-back", "1.0.0"),
        ({"version": 7, "wanted": "1.1.0", "state": "nonsense"}, "installing", None),
    ],
)
def test_what_a_device_reports_is_judged_for_the_rollout(
    entry: Any, state: str, version: str | None
) -> None:
    report = service.device_report("d", True, entry, "1.1.0", 1000.0)
    assert (report.state, report.version) == (state, version)


def test_a_since_in_the_future_or_missing_counts_from_now() -> None:
    entry = {"version": "1.1.0", "wanted": "1.1.0", "state": "running", "since": 5000.0}
    assert service.device_report("d", True, entry, "1.1.0", 1000.0).since == 1000.0
    del entry["since"]
    assert service.device_report("d", True, entry, "1.1.0", 1000.0).since == 1000.0


def test_specs_and_states_survive_the_database(fleet: Database, owner: Principal) -> None:
    rollout_id = deploy(fleet, owner, windows=["22:00-02:00"])
    with fleet.session() as session:
        row = session.get(RolloutRow, rollout_id)
        assert row is not None
        assert row.state is not None
        assert dump_state(load_state(row.state)) == row.state
        assert dump_spec(load_spec(row.spec)) == row.spec
    with pytest.raises(ValidationError, match="damaged"):
        load_state({"rollout_id": "x"})
