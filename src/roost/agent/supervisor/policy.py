"""When an exited app starts again, and what state it is in: a pure state machine.

The supervisor's driver feeds it events (``started``, ``exited``, ``health_changed``,
``settled``, ``stopped``) with the time it read from its own clock, and gets back a new
``Lifecycle`` and, on an exit, the delay before the next start or ``None`` for no restart.
This module reads no clock, sleeps on nothing and starts no process.

Backoff: the first restart waits ``initial_backoff_s``; every further quick exit doubles
the wait, up to the app's ``max_backoff_s``. A run that lasted ``stable_after_s`` resets
both the backoff and the count of quick exits. ``crash_loop_exits`` quick exits within
``crash_loop_window_s`` mark the app crash-looping; it is still restarted (at its backoff)
and leaves that state once a run lasts ``stable_after_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from roost.agent.supervisor.spec import AppState, RestartPolicy
from roost.errors import AppError

# 2**_MAX_LEVEL seconds is far beyond any sane max_backoff_s; the cap keeps floats finite.
_MAX_LEVEL = 30
_ALIVE = frozenset({AppState.STARTING, AppState.RUNNING, AppState.UNHEALTHY})


@dataclass(frozen=True)
class PolicyLimits:
    """Safety budgets of the restart policy, the same for every app on a device."""

    initial_backoff_s: float = 1.0
    stable_after_s: float = 10.0
    crash_loop_exits: int = 5
    crash_loop_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_backoff_s <= 0 or self.stable_after_s <= 0:
            raise AppError("initial_backoff_s and stable_after_s must be > 0")
        if self.crash_loop_exits < 1 or self.crash_loop_window_s <= 0:
            raise AppError("crash_loop_exits must be >= 1 and crash_loop_window_s > 0")


@dataclass(frozen=True)
class Lifecycle:
    """Where one app is in its life; every event returns a new one."""

    state: AppState = AppState.STARTING
    restarts: int = 0
    last_exit: int | None = None
    healthy: bool | None = None
    has_check: bool = False
    started_at: float | None = None
    quick_exits: tuple[float, ...] = ()
    level: int = 0  # the next restart waits initial_backoff_s * 2**level


def started(lc: Lifecycle, now: float) -> Lifecycle:
    """The process was launched at ``now``."""
    if lc.state is AppState.CRASH_LOOPING:
        state = AppState.CRASH_LOOPING
    else:
        state = AppState.STARTING if lc.has_check else AppState.RUNNING
    return replace(lc, state=state, started_at=now, healthy=None)


def exited(
    lc: Lifecycle, now: float, returncode: int, policy: RestartPolicy, limits: PolicyLimits
) -> tuple[Lifecycle, float | None]:
    """The process exited with ``returncode``: the new lifecycle and the restart delay."""
    ran = now - lc.started_at if lc.started_at is not None else 0.0
    quick: tuple[float, ...] = ()
    if ran >= limits.stable_after_s:
        level = 0
    else:
        window_start = now - limits.crash_loop_window_s
        quick = (*(t for t in lc.quick_exits if t >= window_start), now)
        level = lc.level
    base = replace(lc, last_exit=returncode, healthy=None, started_at=None, quick_exits=quick)
    if not policy.restarts_after(returncode):
        state = AppState.STOPPED if returncode == 0 else AppState.FAILED
        return replace(base, state=state, level=level), None
    delay = min(policy.max_backoff_s, limits.initial_backoff_s * 2.0**level)
    looping = len(quick) >= limits.crash_loop_exits
    state = AppState.CRASH_LOOPING if looping else AppState.STARTING
    return (
        replace(base, state=state, level=min(level + 1, _MAX_LEVEL), restarts=lc.restarts + 1),
        delay,
    )


def settled(lc: Lifecycle, now: float, limits: PolicyLimits) -> Lifecycle:
    """Called while the process runs: a run of ``stable_after_s`` forgives past crashes."""
    if lc.started_at is None or now - lc.started_at < limits.stable_after_s:
        return lc
    lc = replace(lc, level=0, quick_exits=())
    if lc.state is not AppState.CRASH_LOOPING:
        return lc
    return replace(lc, state=_state_for(lc.healthy, lc.has_check))


def health_changed(lc: Lifecycle, healthy: bool | None) -> Lifecycle:
    """The health verdict of a running app changed (``None``: not known yet)."""
    lc = replace(lc, healthy=healthy)
    if lc.state not in _ALIVE:
        return lc
    return replace(lc, state=_state_for(healthy, lc.has_check))


def stopped(lc: Lifecycle) -> Lifecycle:
    """The supervisor stopped the app on purpose."""
    return replace(lc, state=AppState.STOPPED, healthy=None, started_at=None)


def _state_for(healthy: bool | None, has_check: bool) -> AppState:
    if healthy is False:
        return AppState.UNHEALTHY
    if healthy is None and has_check:
        return AppState.STARTING
    return AppState.RUNNING
