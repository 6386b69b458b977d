"""A virtual device's apps: what it fetches for a desired state, and what it reports.

``SimApps`` and ``VirtualDevice`` are pure, so these tests drive them with desired states,
fetch outcomes and times, and read the reported ``apps`` the hub would get.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from roost.sim.apps import Fetch, Outcome, SimApps
from roost.sim.device import VirtualDevice
from roost.wire import Desired, Reported, topics
from roost.wire.apps import WantedApp
from roost.wire.topics import Down, Up

NOW = 1_800_000_000.0
V1, V2 = WantedApp("1.0.0"), WantedApp("2.0.0")


def entry(
    version: str | None, wanted: str, state: str, since: float, error: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "app",
        "version": version,
        "wanted": wanted,
        "state": state,
        "since": since,
    }
    if error is not None:
        out["error"] = error
    return out


def running(version: str, since: float = NOW) -> SimApps:
    apps = SimApps()
    apps.want({"web": WantedApp(version)}, since)
    assert apps.fetched(Outcome("web", version), since)
    return apps


def test_a_wanted_app_is_fetched_then_reported_running() -> None:
    apps = SimApps()
    apps.want({"web": V1, "db": V2}, NOW)
    assert apps.fetches() == [Fetch("db", "2.0.0"), Fetch("web", "1.0.0")]
    assert apps.report()["web"] == entry(None, "1.0.0", "installing", NOW)
    assert apps.fetched(Outcome("web", "1.0.0"), NOW + 2)
    assert apps.report()["web"] == entry("1.0.0", "1.0.0", "running", NOW + 2)
    assert apps.fetches() == [Fetch("db", "2.0.0")]


def test_an_upgrade_keeps_reporting_the_running_version_until_verified() -> None:
    apps = running("1.0.0")
    apps.want({"web": V2}, NOW + 10)
    assert apps.report()["web"] == entry("1.0.0", "2.0.0", "installing", NOW + 10)
    apps.fetched(Outcome("web", "2.0.0"), NOW + 11)
    assert apps.report()["web"] == entry("2.0.0", "2.0.0", "running", NOW + 11)


def test_a_refused_release_fails_for_good_until_another_version_is_wanted() -> None:
    apps = running("1.0.0")
    apps.want({"web": V2}, NOW + 10)
    assert apps.fetched(Outcome("web", "2.0.0", "refused: expired", final=True), NOW + 11)
    failed = entry("1.0.0", "2.0.0", "failed", NOW + 11, "refused: expired")
    assert apps.report()["web"] == failed
    assert apps.fetches() == []
    # The same desired version again (another desired change): still failed, no fetch.
    apps.want({"web": V2}, NOW + 20)
    assert apps.report()["web"] == failed
    assert apps.fetches() == []
    # A rollback to the version it runs needs no fetch.
    apps.want({"web": V1}, NOW + 30)
    assert apps.report()["web"] == entry("1.0.0", "1.0.0", "running", NOW + 30)
    assert apps.fetches() == []


def test_a_fetch_the_hub_did_not_answer_stays_installing_and_is_fetched_again() -> None:
    apps = SimApps()
    apps.want({"web": V1}, NOW)
    assert apps.fetched(Outcome("web", "1.0.0", "the hub did not answer"), NOW + 1)
    assert apps.report()["web"] == entry(None, "1.0.0", "installing", NOW, "the hub did not answer")
    assert apps.fetches() == [Fetch("web", "1.0.0")]
    apps.fetched(Outcome("web", "1.0.0"), NOW + 5)
    assert apps.report()["web"] == entry("1.0.0", "1.0.0", "running", NOW + 5)


def test_apply_false_stages_the_release_then_switches_without_fetching_again() -> None:
    apps = running("1.0.0")
    apps.want({"web": WantedApp("2.0.0", apply=False)}, NOW + 10)
    assert apps.fetches() == [Fetch("web", "2.0.0")]
    apps.fetched(Outcome("web", "2.0.0"), NOW + 11)
    assert apps.report()["web"] == entry("1.0.0", "2.0.0", "staged", NOW + 11)
    apps.want({"web": V2}, NOW + 100)
    assert apps.fetches() == []
    assert apps.report()["web"] == entry("2.0.0", "2.0.0", "running", NOW + 100)


def test_an_outcome_for_a_version_no_longer_wanted_is_ignored() -> None:
    apps = SimApps()
    apps.want({"web": V2}, NOW)
    apps.want({"web": V1}, NOW + 1)
    assert not apps.fetched(Outcome("web", "2.0.0"), NOW + 2)
    assert not apps.fetched(Outcome("gone", "1.0.0"), NOW + 2)
    assert apps.report()["web"]["state"] == "installing"
    assert apps.fetches() == [Fetch("web", "1.0.0")]


def test_since_stays_while_state_and_version_do() -> None:
    apps = running("1.0.0", since=NOW)
    apps.want({"web": V1}, NOW + 50)
    assert apps.report()["web"]["since"] == NOW
    assert not apps.fetched(Outcome("web", "1.0.0"), NOW + 60)
    assert apps.report()["web"]["since"] == NOW


def test_an_app_dropped_from_the_desired_state_is_no_longer_reported() -> None:
    apps = running("1.0.0")
    apps.want({}, NOW + 1)
    assert apps.report() == {}
    assert len(apps) == 0


# -- through the virtual device ----------------------------------------------------------

DEVICE = "d" + "c" * 20


def desired(version: int, apps: dict[str, Any]) -> bytes:
    return Desired(version=version, state={"apps": apps}).encode()


def reported_apps(payload: bytes) -> dict[str, Any]:
    apps: dict[str, Any] = Reported.decode(payload, 1 << 20).state["apps"]
    return apps


@pytest.mark.parametrize("apply", [True, False])
def test_the_device_reports_installing_then_what_the_fetch_gave(apply: bool) -> None:
    device = VirtualDevice(DEVICE, 0, 30.0, random.Random(1), NOW)
    topic = topics.down(DEVICE, Down.DESIRED)
    body = desired(2, {"web": {"version": "1.0.0", "apply": apply}})
    (first,) = device.receive(topic, body, NOW)
    assert first.topic == topics.up(DEVICE, Up.REPORTED)
    assert reported_apps(first.payload)["web"]["state"] == "installing"
    assert device.app_fetches() == [Fetch("web", "1.0.0")]

    (second,) = device.apps_fetched([Outcome("web", "1.0.0")], NOW + 1)
    decoded = Reported.decode(second.payload, 1 << 20)
    assert decoded.desired_version == 2
    assert decoded.state["apps"]["web"]["state"] == ("running" if apply else "staged")
    assert device.app_fetches() == []
    # Only the newest reported state waits for the hub's ack: an older one resent after
    # it would undo it.
    assert [p.payload for p in device.resend(NOW + 100)] == [second.payload]
    # Nothing changed, nothing said.
    assert device.apps_fetched([Outcome("web", "1.0.0")], NOW + 2) == []


def test_a_device_without_apps_reports_no_apps_key() -> None:
    device = VirtualDevice(DEVICE, 0, 30.0, random.Random(1), NOW)
    topic = topics.down(DEVICE, Down.DESIRED)
    (out,) = device.receive(topic, Desired(version=1, state={"labels": {}}).encode(), NOW)
    assert "apps" not in Reported.decode(out.payload, 1 << 20).state
    assert device.app_fetches() == []
