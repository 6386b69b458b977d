"""The rollout state machine: waves, gates, deadlines, halts and rollback, as pure functions.

``start`` plans a rollout and starts its canary wave; ``step`` takes the rollout's state,
the devices the selector targets now, what the devices last reported and the time, and
returns a ``Decision``: the new state, what every touched device should run, and events
for the hub to record. ``pause``, ``resume`` and ``abort`` are the operator's actions.

Deliberately no I/O: this module reads no clock (``now`` is given, UTC epoch seconds on
the hub's clock, and so is every ``since`` in a report), talks to no device, stores
nothing and logs nothing. The hub's shell loads the state, calls ``step`` when reports
arrive or a timer fires, stores the new state, sends ``desired`` and records ``events``.
The same inputs always give the same decision.

How devices are judged, in the wave they belong to:

- a report of ``failed`` or ``rolled-back`` dated at or after the device was told the new
  version is a failure; ``unhealthy`` and ``installing`` are "not healthy yet";
- a device passes once it runs the new version and has been ``healthy`` for ``soak_s``;
- an online device not healthy when the wave's deadline has passed has failed ("timed
  out"); a device healthy by then but still soaking keeps the wave open until it soaks or
  turns unhealthy (and then fails), so nothing stays in progress forever;
- an offline device (or one that never reported) blocks its wave until the deadline,
  then is *released*: the wave no longer waits for it, it keeps the new version as its
  desired one and catches up when it returns, with a deadline of its own that starts when
  it is first seen online again. A wave of only released devices proves nothing, so a
  wave passes only once at least one of its devices passed, unless all of them failed
  (which a threshold of 1 allows).

A failed device is told to roll back to the version it ran before the rollout (``None``:
it had none: remove the app). If a wave's failures exceed its threshold the rollout
halts and the whole wave rolls back; waves that passed keep the new version. An aborted
rollout rolls every touched device back. Devices that join the selector after the start
are *catch-up* devices: once a wave has passed they get its version, as released devices
do; before that they are left alone. Devices that leave the selector are no longer told
anything and no longer count in their wave. Rollbacks always apply at once; the new
version applies only inside the maintenance windows (``Desired.apply``), else it is
only downloaded ("staged").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeVar, get_args

from roost.errors import ValidationError
from roost.rollouts.plan import RolloutSpec, order_targets, plan_waves

Status = Literal["running", "paused", "halted", "aborted", "done"]
DeviceState = Literal["installing", "healthy", "unhealthy", "failed", "rolled-back"]
_Verdict = Literal["failed", "offline", "soaked", "soaking", "pending"]

DEVICE_STATES: frozenset[str] = frozenset(get_args(DeviceState))
STATUSES: frozenset[str] = frozenset(get_args(Status))


@dataclass(frozen=True)
class DeviceReport:
    """What a device last said about the app: ``version`` runs (or installs) in ``state``.

    ``since`` is when the device entered ``state`` on the hub's clock: for ``healthy``,
    since when it has been healthy.
    """

    device_id: str
    online: bool
    version: str | None
    state: DeviceState
    since: float

    def __post_init__(self) -> None:
        if self.state not in DEVICE_STATES:
            raise ValidationError(f"device {self.device_id}: unknown app state {self.state!r}")
        if not math.isfinite(self.since):
            raise ValidationError(f"device {self.device_id}: 'since' must be a finite time")


@dataclass(frozen=True)
class Desired:
    """The version a device should run (``None``: no version, remove the app) and whether it
    may apply it now (``False``: download it, apply it in the maintenance window)."""

    version: str | None
    apply: bool


class Event(NamedTuple):
    """Something for the hub to record: ``("wave-started", 1)``, ``("halted", reason)``."""

    kind: str
    subject: int | str


@dataclass(frozen=True)
class Assignment:
    """A device was told the new version at ``at``; it ran ``previous`` before."""

    previous: str | None
    at: float


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen_map(items: Mapping[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands. Built by ``start`` and changed only by this module.

    ``waves`` are fixed at the start. ``wave`` is the furthest wave started, at
    ``started_at[wave]``; waves ``[0, passed)`` have passed. ``assigned`` are the devices
    told the new version; ``failed`` those told to roll back; ``settled`` those verified
    healthy; ``released`` those the waves no longer wait for (catch-up devices), with when
    each was first seen online since. ``elapsed_s`` is the deadline time the current wave
    has used up to ``accounted_at`` (pauses and time outside the windows do not count).
    """

    rollout_id: str
    version: str
    status: Status
    waves: tuple[tuple[str, ...], ...]
    wave: int
    started_at: tuple[float, ...]
    passed: int
    elapsed_s: float
    accounted_at: float
    assigned: Mapping[str, Assignment] = field(default_factory=dict)
    failed: frozenset[str] = frozenset()
    settled: frozenset[str] = frozenset()
    released: Mapping[str, float | None] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValidationError(f"rollout {self.rollout_id}: unknown status {self.status!r}")
        if not (0 <= self.passed <= self.wave + 1 <= len(self.waves)):
            raise ValidationError(f"rollout {self.rollout_id}: inconsistent wave counters")
        if len(self.started_at) != self.wave + 1:
            raise ValidationError(f"rollout {self.rollout_id}: one start time per wave")
        object.__setattr__(self, "assigned", _frozen_map(self.assigned))
        object.__setattr__(self, "released", _frozen_map(self.released))

    @property
    def planned(self) -> frozenset[str]:
        """Every device of every wave, started or not."""
        return frozenset(device for wave in self.waves for device in wave)


@dataclass(frozen=True)
class Decision:
    """The outcome of one step: the new state, what devices should run, what happened.

    ``desired`` names only devices the rollout touched and still targets; a device absent
    from it is left as it is.
    """

    state: RolloutState
    desired: Mapping[str, Desired]
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "desired", _frozen_map(self.desired))


def start(
    spec: RolloutSpec,
    rollout_id: str,
    version: str,
    targets: Iterable[str],
    reports: Mapping[str, DeviceReport],
    now: float,
) -> Decision:
    """Plan the waves over ``targets`` (ordered by ``order_targets``) and start the canary."""
    if not rollout_id or not version:
        raise ValidationError("a rollout needs an id and a version")
    ordered = order_targets(rollout_id, targets)
    if not ordered:
        raise ValidationError(f"rollout {rollout_id}: the selector targets no device")
    waves = plan_waves(spec, ordered)
    state = RolloutState(
        rollout_id=rollout_id,
        version=version,
        status="running",
        waves=waves,
        wave=0,
        started_at=(now,),
        passed=0,
        elapsed_s=0.0,
        accounted_at=now,
        assigned={d: _assignment(reports.get(d), now) for d in waves[0]},
    )
    return Decision(
        state, _desired(spec, state, frozenset(ordered), now), (Event("wave-started", 0),)
    )


def step(
    spec: RolloutSpec,
    state: RolloutState,
    targets: Iterable[str],
    reports: Mapping[str, DeviceReport],
    now: float,
) -> Decision:
    """Advance the rollout as far as the reports allow at ``now``.

    ``targets`` are the devices the selector matches now (their order does not matter: the
    order was fixed by ``start``). A paused, halted or aborted rollout does not change;
    a done one still follows its catch-up devices and admits new ones.
    """
    targeted = frozenset(targets)
    if state.status in ("paused", "halted", "aborted"):
        return Decision(state, _desired(spec, state, targeted, now))
    draft = _Draft(state)
    if state.status == "running":
        draft.account(spec, now)
    draft.follow_catch_ups(spec, targeted, reports, now)
    if state.status == "running":
        draft.judge_wave(spec, targeted, reports, now)
    if draft.status in ("running", "done") and draft.passed > 0:
        draft.admit_joiners(targeted, reports, now)
    new = draft.freeze()
    return Decision(new, _desired(spec, new, targeted, now), tuple(draft.events))


def pause(spec: RolloutSpec, state: RolloutState, now: float) -> RolloutState:
    """Stop the rollout where it is: no wave starts, passes or halts, no deadline runs."""
    if state.status == "paused":
        return state
    if state.status != "running":
        raise ValidationError(f"rollout {state.rollout_id} is {state.status}; cannot pause it")
    elapsed = state.elapsed_s + spec.window_time(state.accounted_at, now)
    return replace(
        state, status="paused", elapsed_s=elapsed, accounted_at=max(now, state.accounted_at)
    )


def resume(state: RolloutState, now: float) -> RolloutState:
    """Let a paused rollout go on; the time it was paused does not count to its deadline."""
    if state.status == "running":
        return state
    if state.status != "paused":
        raise ValidationError(f"rollout {state.rollout_id} is {state.status}; cannot resume it")
    return replace(state, status="running", accounted_at=max(now, state.accounted_at))


def abort(state: RolloutState, reason: str = "aborted by an operator") -> RolloutState:
    """End the rollout; the next ``step`` tells every touched device to roll back."""
    if state.status == "aborted":
        return state
    if state.status == "done":
        raise ValidationError(
            f"rollout {state.rollout_id} is done; roll out the previous version instead"
        )
    return replace(state, status="aborted", reason=reason)


def _assignment(report: DeviceReport | None, now: float) -> Assignment:
    return Assignment(report.version if report is not None else None, now)


def _verdict(
    spec: RolloutSpec, version: str, told: Assignment, report: DeviceReport | None, now: float
) -> _Verdict:
    if report is None:
        return "offline"
    # A failure from before the device was told this version is about another attempt.
    if report.state in ("failed", "rolled-back") and report.since >= told.at:
        return "failed"
    if not report.online:
        return "offline"
    if report.version == version and report.state == "healthy":
        return "soaked" if now - report.since >= spec.soak_s else "soaking"
    return "pending"


def _desired(
    spec: RolloutSpec, state: RolloutState, targeted: frozenset[str], now: float
) -> dict[str, Desired]:
    applies = spec.applies_at(now)
    halted_wave = frozenset(state.waves[state.wave]) if state.status == "halted" else frozenset()
    desired: dict[str, Desired] = {}
    for device, told in state.assigned.items():
        if device not in targeted:
            continue
        back = state.status == "aborted" or device in state.failed or device in halted_wave
        desired[device] = Desired(told.previous, True) if back else Desired(state.version, applies)
    return desired


class _Draft:
    """The mutable scratch copy of a state inside one ``step``; ``freeze`` makes it a value."""

    def __init__(self, state: RolloutState) -> None:
        self.base = state
        self.status: Status = state.status
        self.wave = state.wave
        self.started_at = list(state.started_at)
        self.passed = state.passed
        self.elapsed_s = state.elapsed_s
        self.accounted_at = state.accounted_at
        self.assigned = dict(state.assigned)
        self.failed = set(state.failed)
        self.settled = set(state.settled)
        self.released = dict(state.released)
        self.reason = state.reason
        self.events: list[Event] = []

    def freeze(self) -> RolloutState:
        return replace(
            self.base,
            status=self.status,
            wave=self.wave,
            started_at=tuple(self.started_at),
            passed=self.passed,
            elapsed_s=self.elapsed_s,
            accounted_at=self.accounted_at,
            assigned=self.assigned,
            failed=frozenset(self.failed),
            settled=frozenset(self.settled),
            released=self.released,
            reason=self.reason,
        )

    def account(self, spec: RolloutSpec, now: float) -> None:
        self.elapsed_s += spec.window_time(self.accounted_at, now)
        self.accounted_at = max(now, self.accounted_at)

    def fail(self, device: str, kind: str) -> None:
        self.failed.add(device)
        self.events.append(Event(kind, device))

    def follow_catch_ups(
        self,
        spec: RolloutSpec,
        targeted: frozenset[str],
        reports: Mapping[str, DeviceReport],
        now: float,
    ) -> None:
        for device, seen_at in list(self.released.items()):
            if device not in targeted or device in self.failed or device in self.settled:
                continue
            verdict = _verdict(
                spec, self.base.version, self.assigned[device], reports.get(device), now
            )
            if verdict == "failed":
                self.fail(device, "device-failed")
            elif verdict == "soaked":
                self.settled.add(device)
                self.events.append(Event("caught-up", device))
            elif verdict == "offline":
                continue
            elif seen_at is None:
                self.released[device] = now
            elif verdict == "pending" and spec.window_time(seen_at, now) >= spec.deadline_s:
                self.fail(device, "device-timed-out")

    def judge_wave(
        self,
        spec: RolloutSpec,
        targeted: frozenset[str],
        reports: Mapping[str, DeviceReport],
        now: float,
    ) -> None:
        members = [d for d in self.base.waves[self.wave] if d in targeted]
        past_deadline = self.elapsed_s >= spec.deadline_s
        soaked: set[str] = set()
        open_ = False
        for device in members:
            if device in self.failed or device in self.released:
                continue
            told = self.assigned[device]
            verdict = _verdict(spec, self.base.version, told, reports.get(device), now)
            if verdict == "failed":
                self.fail(device, "device-failed")
            elif verdict == "soaked":
                soaked.add(device)
            elif past_deadline and verdict == "offline":
                self.released[device] = None
                self.events.append(Event("device-waiting", device))
            elif past_deadline and verdict == "pending":
                self.fail(device, "device-timed-out")
            else:
                open_ = True
        failures = sum(1 for d in members if d in self.failed)
        if failures > spec.threshold(self.wave) * len(members):
            self.halt(f"wave {self.wave}: {failures} of {len(members)} devices failed")
            return
        verified = soaked | (self.settled & set(members))
        waiting = [d for d in members if d in self.released and d not in self.settled | self.failed]
        if open_ or (waiting and not verified):
            return
        self.settled |= soaked
        self.passed += 1
        self.events.append(Event("wave-passed", self.wave))
        self.start_next(reports, now)

    def halt(self, reason: str) -> None:
        self.status = "halted"
        self.reason = reason
        self.events.append(Event("halted", reason))

    def start_next(self, reports: Mapping[str, DeviceReport], now: float) -> None:
        if self.wave + 1 == len(self.base.waves):
            self.status = "done"
            self.events.append(Event("done", self.base.version))
            return
        self.wave += 1
        self.started_at.append(now)
        self.elapsed_s = 0.0
        self.accounted_at = now
        for device in self.base.waves[self.wave]:
            self.assigned.setdefault(device, _assignment(reports.get(device), now))
        self.events.append(Event("wave-started", self.wave))

    def admit_joiners(
        self, targeted: frozenset[str], reports: Mapping[str, DeviceReport], now: float
    ) -> None:
        newcomers = targeted - self.base.planned - self.assigned.keys()
        for device in order_targets(self.base.rollout_id, newcomers):
            report = reports.get(device)
            self.assigned[device] = _assignment(report, now)
            self.released[device] = now if report is not None and report.online else None
            self.events.append(Event("joined", device))
