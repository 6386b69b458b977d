"""The pure parts of the agent's apps: what the desired state wants, what each app's
reported entry says and since when, and the rule by which the agent rolls a new version
back by itself."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.agent.appstate import Outcome, Watch, entry, judge, stamp, watch
from roost.agent.runtime import stored_apps
from roost.agent.supervisor import AppState, AppStatus, HealthCheck
from roost.wire.apps import WantedApp, wanted_apps

# -- what the desired state wants ----------------------------------------------------------


@pytest.mark.parametrize(
    ("apps", "wanted"),
    [
        ({"web": {"version": "1.0.0"}}, {"web": WantedApp("1.0.0", True)}),
        ({"web": {"version": "1.0.0", "apply": True}}, {"web": WantedApp("1.0.0")}),
        ({"fw": {"version": "2.0.0", "apply": False}}, {"fw": WantedApp("2.0.0", False)}),
        ({"web": {"version": "1.0.0", "apply": "no"}}, {}),
        ({"web": {"version": "1.0.0", "apply": 0}}, {}),
        ({"web": {"version": ""}}, {}),
        ({"web": {"version": 1}}, {}),
        ({"web": "1.0.0"}, {}),
        ({"web": {"apply": True}}, {}),
        ([{"version": "1.0.0"}], {}),
        (None, {}),
        (
            {"a": {"version": "1.0.0"}, "b": "junk", "c": {"version": "3.0.0", "apply": False}},
            {"a": WantedApp("1.0.0"), "c": WantedApp("3.0.0", False)},
        ),
    ],
)
def test_wanted_apps(apps: Any, wanted: dict[str, WantedApp]) -> None:
    assert wanted_apps({"apps": apps}) == wanted


def test_wanted_apps_without_apps() -> None:
    assert wanted_apps({"labels": {}}) == {}


@given(st.dictionaries(st.text(max_size=5), st.recursive(st.none(), lambda c: st.lists(c))))
def test_wanted_apps_never_raises_on_junk(apps: dict[str, Any]) -> None:
    assert wanted_apps({"apps": apps}) == {}


@pytest.mark.parametrize(
    ("stored", "wanted"),
    [
        # What the agent keeps now: WantedApp._asdict().
        (
            {"web": {"version": "1.1.0", "apply": False}, "db": {"version": "2.0.0"}},
            {"web": WantedApp("1.1.0", False), "db": WantedApp("2.0.0")},
        ),
        # What agents before "apply" kept: {name: version}.
        ({"web": "1.0.0", "db": "2.0.0"}, {"web": WantedApp("1.0.0"), "db": WantedApp("2.0.0")}),
        (None, {}),
        (["web"], {}),
    ],
)
def test_stored_apps_load_in_both_formats(stored: Any, wanted: dict[str, WantedApp]) -> None:
    assert stored_apps(stored) == wanted


def test_wanted_apps_round_trip_through_storage() -> None:
    wanted = {"web": WantedApp("1.0.0"), "fw": WantedApp("2.0.0", False)}
    assert stored_apps({n: w._asdict() for n, w in wanted.items()}) == wanted


# -- reported entries ------------------------------------------------------------------------


def running(version: str, state: AppState = AppState.RUNNING) -> AppStatus:
    return AppStatus(state=state, version=version, isolation="rlimits", restarts=2)


W = WantedApp
STAGED = Outcome("1.1.0", "staged")
FETCHING = Outcome("1.1.0", "installing", "cannot reach the hub")
REFUSED = Outcome("1.1.0", "failed", "refused: expired")
ROLLED = Outcome("1.1.0", "rolled-back", "rolled back to 1.0.0: unhealthy", judged=True)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # An app running the wanted version reports its supervisor's state.
        (("app", W("1.0.0"), "1.0.0", running("1.0.0"), None), ("1.0.0", "running", None)),
        (
            ("app", W("1.0.0"), "1.0.0", running("1.0.0", AppState.UNHEALTHY), None),
            ("1.0.0", "unhealthy", None),
        ),
        # A new version being fetched: the old one keeps running.
        (("app", W("1.1.0"), "1.0.0", running("1.0.0"), None), ("1.0.0", "installing", None)),
        (
            ("app", W("1.1.0"), "1.0.0", running("1.0.0"), FETCHING),
            ("1.0.0", "installing", "cannot reach the hub"),
        ),
        (("app", W("1.1.0", False), "1.0.0", running("1.0.0"), STAGED), ("1.0.0", "staged", None)),
        (
            ("app", W("1.1.0"), "1.0.0", running("1.0.0"), REFUSED),
            ("1.0.0", "failed", "refused: expired"),
        ),
        (
            ("app", W("1.1.0"), "1.0.0", running("1.0.0"), ROLLED),
            ("1.0.0", "rolled-back", "rolled back to 1.0.0: unhealthy"),
        ),
        # ... even while the bad version is still stopping.
        (
            ("app", W("1.1.0"), "1.0.0", running("1.1.0", AppState.STOPPED), ROLLED),
            ("1.0.0", "rolled-back", "rolled back to 1.0.0: unhealthy"),
        ),
        # Switching: the old version is stopping, the new one is about to start.
        (
            ("app", W("1.1.0"), "1.1.0", running("1.0.0", AppState.STOPPED), None),
            ("1.1.0", "starting", None),
        ),
        # An outcome about another version than the wanted one says nothing.
        (
            ("app", W("1.2.0"), "1.0.0", running("1.0.0"), ROLLED),
            ("1.0.0", "installing", None),
        ),
        # Judged bad with nothing to go back to: stopped, nothing runs.
        (
            ("app", W("1.1.0"), "1.1.0", None, Outcome("1.1.0", "failed", "stopped", judged=True)),
            (None, "failed", "stopped"),
        ),
        (
            (
                "app",
                W("1.1.0"),
                "1.1.0",
                running("1.1.0", AppState.STOPPED),
                Outcome("1.1.0", "failed", "stopped", judged=True),
            ),
            (None, "failed", "stopped"),
        ),
        (("app", W("1.0.0"), None, None, None), (None, "installing", None)),
        (("app", None, "1.0.0", running("1.0.0"), None), ("1.0.0", "running", None)),
        (("app", W("1.0.0"), "1.0.0", None, None), (None, "stopped", None)),
        # A system update reports what is installed.
        (("system", W("2.0.0"), "2.0.0", None, None), ("2.0.0", "installed", None)),
        (
            ("system", W("2.1.0"), "2.0.0", None, Outcome("2.1.0", "installing")),
            ("2.0.0", "installing", None),
        ),
        (
            ("system", W("2.1.0"), "2.0.0", None, Outcome("2.1.0", "failed", "exit 1")),
            ("2.0.0", "failed", "exit 1"),
        ),
        (("system", None, None, None, None), (None, "not-installed", None)),
        (("agent", W("0.2.0"), "0.2.0", None, None), ("0.2.0", "installed", None)),
    ],
)
def test_entry(args: tuple[Any, ...], expected: tuple[str | None, str, str | None]) -> None:
    kind, wanted = args[0], args[1]
    got = entry(*args)
    assert (got["version"], got["state"], got.get("error")) == expected
    assert got["kind"] == kind
    assert got["wanted"] == (wanted.version if wanted else None)
    assert "since" not in got


def test_entry_carries_isolation_and_restarts_of_a_running_app() -> None:
    got = entry("app", W("1.0.0"), "1.0.0", running("1.0.0"), None, "spec error")
    assert got["isolation"] == "rlimits"
    assert got["restarts"] == 2
    assert got["error"] == "spec error"
    assert "isolation" not in entry("system", W("1.0.0"), "1.0.0", None, None)


def test_since_stays_while_state_and_version_stay() -> None:
    first = stamp({"web": {"state": "starting", "version": "1.0.0"}}, {}, 100.0)
    assert first["web"]["since"] == 100.0
    same = stamp({"web": {"state": "starting", "version": "1.0.0", "restarts": 1}}, first, 105.0)
    assert same["web"]["since"] == 100.0
    assert same["web"]["restarts"] == 1
    healthy = stamp({"web": {"state": "running", "version": "1.0.0"}}, same, 110.0)
    assert healthy["web"]["since"] == 110.0
    upgraded = stamp({"web": {"state": "running", "version": "1.1.0"}}, healthy, 120.0)
    assert upgraded["web"]["since"] == 120.0


def test_an_entry_with_a_since_of_its_own_keeps_it() -> None:
    before = {"roost-agent": {"state": "installing", "version": "0.1.0", "since": 5.0}}
    now = {"roost-agent": {"state": "installing", "version": "0.1.0", "since": 7.0}}
    assert stamp(now, before, 60.0)["roost-agent"]["since"] == 7.0


def test_since_is_per_app_and_ignores_junk_before() -> None:
    before = {"web": {"state": "running", "version": "1.0.0", "since": 50.0}, "db": "junk"}
    now = {
        "web": {"state": "running", "version": "1.0.0"},
        "db": {"state": "running", "version": "1.0.0"},
        "fw": {"state": "installed", "version": "2.0.0"},
    }
    out = stamp(now, before, 60.0)
    assert {n: e["since"] for n, e in out.items()} == {"web": 50.0, "db": 60.0, "fw": 60.0}


@given(
    st.lists(
        st.tuples(st.sampled_from(["starting", "running", "unhealthy"]), st.sampled_from("ab")),
        min_size=1,
        max_size=20,
    )
)
def test_since_changes_exactly_when_state_or_version_does(steps: list[tuple[str, str]]) -> None:
    before: dict[str, Any] = {}
    for now, (state, version) in enumerate(steps):
        out = stamp({"x": {"state": state, "version": version}}, before, float(now))
        old = before.get("x") or {}
        changed = (old.get("state"), old.get("version")) != (state, version)
        assert out["x"]["since"] == (float(now) if changed else old["since"])
        before = out


def test_only_judged_outcomes_load_from_storage() -> None:
    assert Outcome.from_json(ROLLED.to_json()) == ROLLED
    judged_failure = Outcome("1.1.0", "failed", "stopped", judged=True)
    assert Outcome.from_json(judged_failure.to_json()) == judged_failure
    assert Outcome.from_json(STAGED.to_json()) is None
    assert Outcome.from_json({"version": 1, "state": "failed"}) is None
    assert Outcome.from_json("junk") is None


# -- the rollback rule ---------------------------------------------------------------------

CHECK = HealthCheck(kind="tcp", port=80, interval_s=1.0, timeout_s=0.5, grace_s=2.0, retries=3)


def new_watch(check: HealthCheck | None = CHECK) -> Watch:
    return watch("1.1.0", check, 1000.0, stable_after_s=10.0, crash_loop_window_s=60.0)


def judge_all(w: Watch, steps: list[tuple[float, AppState | None]]) -> list[str]:
    """Judge one status after another; what each step decided."""
    said = []
    current: Watch | None = w
    for at, state in steps:
        assert current is not None, "judged after the watch ended"
        status = None if state is None else AppStatus(state=state, version="1.1.0", last_exit=3)
        verdict = judge(current, status, 1000.0 + at)
        current = verdict.watch
        said.append(verdict.rollback or ("watching" if current else "proven"))
    return said


def test_the_watch_of_a_version_with_a_health_check() -> None:
    w = new_watch()
    assert w.unhealthy_for_s == 3.0  # retries * interval
    assert w.proven_after_s == 10.0  # max(stable_after, retries * interval)
    assert w.deadline_s == 2.0 + 2 * 3 * 1.5  # grace + 2 * retries * (interval + timeout)
    plain = new_watch(None)
    assert (plain.unhealthy_for_s, plain.proven_after_s, plain.deadline_s) == (None, 10.0, 70.0)


def test_a_version_that_runs_healthy_long_enough_proves_itself() -> None:
    said = judge_all(
        new_watch(),
        [(0.1, AppState.STARTING), (3.0, AppState.RUNNING), (13.0, AppState.RUNNING)],
    )
    assert said == ["watching", "watching", "proven"]


def test_a_crash_looping_version_is_rolled_back() -> None:
    said = judge_all(new_watch(), [(0.1, AppState.STARTING), (5.0, AppState.CRASH_LOOPING)])
    assert said[0] == "watching"
    assert "crash-looping" in said[1]


def test_a_version_that_exits_for_good_is_rolled_back() -> None:
    (said,) = judge_all(new_watch(), [(1.0, AppState.FAILED)])
    assert "exited with code 3" in said


def test_a_version_that_finishes_on_its_own_is_not_held_against() -> None:
    assert judge_all(new_watch(), [(1.0, AppState.STOPPED)]) == ["proven"]


def test_unhealthy_for_another_round_of_retries_is_rolled_back() -> None:
    said = judge_all(
        new_watch(),
        [(5.0, AppState.UNHEALTHY), (7.0, AppState.UNHEALTHY), (8.0, AppState.UNHEALTHY)],
    )
    assert said[:2] == ["watching", "watching"]
    assert "stayed unhealthy for 3s" in said[2]


def test_a_healthy_spell_resets_the_unhealthy_clock() -> None:
    said = judge_all(
        new_watch(),
        [
            (5.0, AppState.UNHEALTHY),
            (7.0, AppState.RUNNING),
            (7.5, AppState.UNHEALTHY),
            (10.0, AppState.UNHEALTHY),
        ],
    )
    assert said == ["watching"] * 4


def test_a_restart_before_proving_itself_starts_the_healthy_spell_again() -> None:
    said = judge_all(
        new_watch(),
        [
            (3.0, AppState.RUNNING),
            (9.0, AppState.RUNNING),
            (10.0, AppState.STARTING),
            (10.5, AppState.RUNNING),
            (19.0, AppState.RUNNING),
            (20.5, AppState.RUNNING),
        ],
    )
    assert said == ["watching"] * 5 + ["proven"]


def test_not_healthy_by_the_deadline_is_rolled_back() -> None:
    said = judge_all(new_watch(), [(1.0, AppState.STARTING), (11.0, AppState.STARTING)])
    assert said[0] == "watching"
    assert "not healthy 11s after the switch" in said[1]


def test_a_hiccup_after_the_deadline_is_no_rollback_once_it_ran_healthy() -> None:
    said = judge_all(
        new_watch(),
        [
            (3.0, AppState.RUNNING),
            (12.0, AppState.UNHEALTHY),
            (13.0, AppState.STARTING),
            (14.0, AppState.RUNNING),
            (24.5, AppState.RUNNING),
        ],
    )
    assert said == ["watching"] * 4 + ["proven"]


def test_running_at_the_deadline_is_given_its_time() -> None:
    said = judge_all(new_watch(), [(10.5, AppState.RUNNING), (11.5, AppState.RUNNING)])
    assert said == ["watching", "watching"]


def test_a_status_of_another_version_counts_only_towards_the_deadline() -> None:
    w = new_watch()
    old = AppStatus(state=AppState.CRASH_LOOPING, version="1.0.0")
    assert judge(w, old, 1001.0).watch is not None
    assert judge(w, None, 1001.0).watch is not None
    late = judge(w, old, 1000.0 + w.deadline_s)
    assert late.rollback is not None
    assert late.watch is None


def test_without_a_health_check_only_crashes_and_the_deadline_count() -> None:
    said = judge_all(new_watch(None), [(1.0, AppState.RUNNING), (11.0, AppState.RUNNING)])
    assert said == ["watching", "proven"]
    said = judge_all(new_watch(None), [(30.0, AppState.STARTING), (70.0, AppState.STARTING)])
    assert said[0] == "watching"
    assert "not healthy" in said[1]
