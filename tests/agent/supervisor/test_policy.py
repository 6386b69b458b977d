"""The pure restart policy: backoff, crash-looping, states, table-driven."""

from __future__ import annotations

import pytest

from roost.agent.supervisor import policy
from roost.agent.supervisor.spec import AppState, RestartPolicy

LIMITS = policy.PolicyLimits(
    initial_backoff_s=1.0, stable_after_s=10.0, crash_loop_exits=3, crash_loop_window_s=60.0
)


@pytest.mark.parametrize(
    ("mode", "returncode", "restarts", "state"),
    [
        ("always", 0, True, AppState.STARTING),
        ("always", 1, True, AppState.STARTING),
        ("always", -9, True, AppState.STARTING),
        ("on-failure", 0, False, AppState.STOPPED),
        ("on-failure", 2, True, AppState.STARTING),
        ("on-failure", -15, True, AppState.STARTING),
        ("never", 0, False, AppState.STOPPED),
        ("never", 1, False, AppState.FAILED),
    ],
)
def test_policy_decides_restart(
    mode: str, returncode: int, restarts: bool, state: AppState
) -> None:
    lc = policy.started(policy.Lifecycle(), now=0.0)
    lc, delay = policy.exited(lc, 100.0, returncode, RestartPolicy(mode, 30.0), LIMITS)  # type: ignore[arg-type]
    assert (delay is not None) == restarts
    assert lc.state is state
    assert lc.last_exit == returncode
    assert lc.restarts == (1 if restarts else 0)


def _crash_times(
    run_s: float, count: int, max_backoff: float = 8.0
) -> list[tuple[float, AppState]]:
    """Start, run for run_s, exit 1, wait the delay, again; the (delay, state) of each exit."""
    lc, now, seen = policy.Lifecycle(), 0.0, []
    for _ in range(count):
        lc = policy.started(lc, now)
        now += run_s
        lc, delay = policy.exited(lc, now, 1, RestartPolicy("always", max_backoff), LIMITS)
        assert delay is not None
        seen.append((delay, lc.state))
        now += delay
    return seen


def test_backoff_doubles_up_to_max_and_quick_exits_crash_loop() -> None:
    assert _crash_times(0.1, 6) == [
        (1.0, AppState.STARTING),
        (2.0, AppState.STARTING),
        (4.0, AppState.CRASH_LOOPING),
        (8.0, AppState.CRASH_LOOPING),
        (8.0, AppState.CRASH_LOOPING),
        (8.0, AppState.CRASH_LOOPING),
    ]


def test_long_runs_reset_backoff_and_never_crash_loop() -> None:
    assert _crash_times(20.0, 4) == [(1.0, AppState.STARTING)] * 4


def test_quick_exits_outside_the_window_do_not_count() -> None:
    # Each exit after 0.1 s but the backoff grows past the window: 3 in 60 s never happen.
    limits = policy.PolicyLimits(crash_loop_exits=3, crash_loop_window_s=1.5)
    lc, now = policy.Lifecycle(), 0.0
    for _ in range(5):
        lc = policy.started(lc, now)
        lc, delay = policy.exited(lc, now + 0.1, 1, RestartPolicy("always", 300), limits)
        assert delay is not None
        now += 0.1 + delay
    assert lc.state is AppState.STARTING


@pytest.mark.parametrize(
    ("has_check", "events", "state"),
    [
        (False, [], AppState.RUNNING),
        (True, [], AppState.STARTING),
        (True, [True], AppState.RUNNING),
        (True, [True, False], AppState.UNHEALTHY),
        (True, [True, False, True], AppState.RUNNING),
        (True, [False], AppState.UNHEALTHY),
    ],
)
def test_health_moves_a_running_app(has_check: bool, events: list[bool], state: AppState) -> None:
    lc = policy.started(policy.Lifecycle(has_check=has_check), 0.0)
    for healthy in events:
        lc = policy.health_changed(lc, healthy)
    assert lc.state is state


def test_crash_looping_ends_after_a_stable_run() -> None:
    lc = policy.Lifecycle(state=AppState.CRASH_LOOPING, level=5, quick_exits=(1.0, 2.0, 3.0))
    lc = policy.started(lc, 100.0)
    assert lc.state is AppState.CRASH_LOOPING
    assert policy.settled(lc, 105.0, LIMITS).state is AppState.CRASH_LOOPING
    settled = policy.settled(lc, 110.0, LIMITS)
    assert (settled.state, settled.level, settled.quick_exits) == (AppState.RUNNING, 0, ())


def test_stopped_and_failed_ignore_health() -> None:
    lc = policy.stopped(policy.started(policy.Lifecycle(has_check=True), 0.0))
    assert policy.health_changed(lc, True).state is AppState.STOPPED
