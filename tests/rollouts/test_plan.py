"""The rollout core, table-driven and with hypothesis: plans, waves, gates, halts, rollback.

A small fake fleet stands in for the devices: it does what the decisions say (at once,
when allowed to apply) and reports back the way each device is scripted to behave.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import ValidationError
from roost.rollouts import (
    Decision,
    Desired,
    DeviceReport,
    DeviceState,
    Event,
    RolloutSpec,
    RolloutState,
    WaveStep,
    Window,
    abort,
    order_targets,
    pause,
    plan_waves,
    resume,
    start,
    step,
    wave_sizes,
)

OLD, NEW = "1.0", "2.0"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MIDNIGHT = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC


# --- plans --------------------------------------------------------------------------------

SIZES = [
    (RolloutSpec(), 1, (1,)),
    (RolloutSpec(), 2, (1, 1)),
    (RolloutSpec(), 3, (1, 1, 1)),
    (RolloutSpec(), 4, (1, 1, 1, 1)),
    (RolloutSpec(), 10, (1, 1, 3, 5)),
    (RolloutSpec(), 20, (1, 1, 8, 10)),
    (RolloutSpec(), 1000, (1, 99, 400, 500)),
    (RolloutSpec(waves=["100%"]), 7, (7,)),
    (RolloutSpec(waves=["5", "100%"]), 3, (3,)),
    (RolloutSpec(waves=["5", "100%"]), 12, (5, 7)),
    (RolloutSpec(waves=["2", "10", "100%"]), 25, (2, 8, 15)),
    (RolloutSpec(waves=["12.5%", "100%"]), 16, (2, 14)),
    (RolloutSpec(waves=["12.5%", "100%"]), 17, (3, 14)),  # 2.125 devices round up
    (RolloutSpec(waves=["25%", "3", "100%"]), 8, (2, 1, 5)),
    (RolloutSpec(waves=["25%", "3", "100%"]), 40, (10, 1, 29)),  # a count below: +1
    (RolloutSpec(waves=["1", "2", "3", "100%"]), 2, (1, 1)),
]


@pytest.mark.parametrize(("spec", "targets", "sizes"), SIZES)
def test_wave_sizes(spec: RolloutSpec, targets: int, sizes: tuple[int, ...]) -> None:
    assert wave_sizes(spec, targets) == sizes


def test_no_targets_no_waves() -> None:
    assert wave_sizes(RolloutSpec(), 0) == ()


SPEC_STEPS = st.lists(
    st.one_of(
        st.integers(1, 50).map(str),
        st.integers(1, 999).map(lambda tenths: f"{tenths / 10}%"),
    ),
    max_size=5,
).map(lambda steps: [*steps, "100%"])


@given(SPEC_STEPS, st.integers(0, 3000))
def test_wave_sizes_cover_every_target_once(steps: list[str], targets: int) -> None:
    try:
        spec = RolloutSpec(waves=steps)
    except ValidationError:
        return  # steps that do not grow; refusal is tested below
    sizes = wave_sizes(spec, targets)
    assert sum(sizes) == targets
    assert all(size >= 1 for size in sizes)
    assert len(sizes) <= len(spec.waves)
    ordered = order_targets("r", (f"d{i}" for i in range(targets)))
    waves = plan_waves(spec, ordered)
    assert [d for wave in waves for d in wave] == list(ordered)


BAD_SPECS = [
    ({"waves": []}, "at least one wave"),
    ({"waves": ["1", "50%"]}, 'last wave must be "100%"'),
    ({"waves": ["1", "5"]}, 'last wave must be "100%"'),
    ({"waves": ["0", "100%"]}, "at least 1"),
    ({"waves": ["-1", "100%"]}, "neither a device count"),
    ({"waves": ["1.5", "100%"]}, "neither a device count"),
    ({"waves": ["ten", "100%"]}, "neither a device count"),
    ({"waves": ["0%", "100%"]}, r"in \(0, 100\]"),
    ({"waves": ["150%"]}, r"in \(0, 100\]"),
    ({"waves": ["nan%"]}, "neither a device count"),
    ({"waves": ["50%", "10%", "100%"]}, "percentages must grow"),
    ({"waves": ["5", "5", "100%"]}, "device counts must grow"),
    ({"waves": "1,100%"}, "lists of strings"),
    ({"waves": [f"{i}" for i in range(1, 30)] + ["100%"]}, "at most 20 waves"),
    ({"soak_s": -1}, "soak_s must be 0"),
    ({"soak_s": float("inf")}, "soak_s"),
    ({"deadline_s": 0}, "deadline_s must be more than 0"),
    ({"deadline_s": 1e12}, "at most"),
    ({"failure_threshold": 1.5}, "failure_threshold is a fraction"),
    ({"canary_failure_threshold": -0.1}, "canary_failure_threshold is a fraction"),
    ({"failure_threshold": float("nan")}, "failure_threshold"),
    ({"windows": ["22:00"]}, "not a daily UTC window"),
    ({"windows": ["25:00-02:00"]}, "not a daily UTC window"),
    ({"windows": ["2:00-04:00"]}, "not a daily UTC window"),
    ({"windows": ["02:00-02:00"]}, "empty"),
    ({"windows": "02:00-04:00"}, "lists of strings"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SPECS)
def test_bad_specs_are_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        RolloutSpec(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_spec_is_kept_in_canonical_form() -> None:
    spec = RolloutSpec(waves=[" 2", "12.50 %", "100%"], windows=["22:00 - 02:00"])
    assert spec.waves == ("2", "12.5%", "100%")
    assert spec.windows == ("22:00-02:00",)
    assert spec == RolloutSpec(waves=("2", "12.5%", "100%"), windows=("22:00-02:00",))
    assert spec.steps[1] == WaveStep.parse("12.5%")
    assert RolloutSpec().waves == ("1", "10%", "50%", "100%")


def test_thresholds_are_exact_fractions() -> None:
    spec = RolloutSpec(failure_threshold=0.1)
    assert spec.threshold(0) == 0
    assert spec.threshold(1) * 10 == 1


def test_order_is_deterministic_spread_and_per_rollout() -> None:
    devices = [f"dev-{i:03d}" for i in range(200)]
    shuffled = random.Random(7).sample(devices, len(devices))
    order = order_targets("r1", devices)
    assert order == order_targets("r1", shuffled) == order_targets("r1", devices + devices)
    assert sorted(order) == devices
    assert order != tuple(devices)
    assert order != order_targets("r2", devices)


WINDOW_TIME = [
    # windows, since, now, seconds inside
    ((), T0, T0 + 90, 90),
    (("00:00-01:00",), MIDNIGHT - 600, MIDNIGHT + 600, 600),
    (("00:00-01:00",), MIDNIGHT, MIDNIGHT + 86_400 + 1800, 3600 + 1800),
    (("23:00-01:00",), MIDNIGHT - 7200, MIDNIGHT + 7200, 7200),
    (("23:00-01:00", "00:30-02:00"), MIDNIGHT, MIDNIGHT + 86_400, 3 * 3600),  # overlap once
    (("01:00-02:00",), MIDNIGHT, MIDNIGHT + 3600, 0),
    (("01:00-02:00",), MIDNIGHT + 10, MIDNIGHT, 0),  # time does not run backwards
]


@pytest.mark.parametrize(("windows", "since", "now", "inside"), WINDOW_TIME)
def test_window_time(windows: tuple[str, ...], since: float, now: float, inside: float) -> None:
    assert RolloutSpec(windows=windows).window_time(since, now) == pytest.approx(inside)


APPLIES = [
    ((), MIDNIGHT + 12 * 3600, True),
    (("01:00-03:00",), MIDNIGHT + 3600, True),
    (("01:00-03:00",), MIDNIGHT + 3 * 3600, False),  # the end is not inside
    (("01:00-03:00",), MIDNIGHT + 12 * 3600, False),
    (("22:00-02:00",), MIDNIGHT - 1800, True),  # 23:30, before midnight
    (("22:00-02:00",), MIDNIGHT + 1800, True),  # 00:30, after midnight
    (("22:00-02:00",), MIDNIGHT + 3 * 3600, False),
    (("22:00-02:00",), MIDNIGHT - 3 * 3600, False),  # 21:00
    (("01:00-02:00", "13:00-14:00"), MIDNIGHT + 13.5 * 3600, True),
]


@pytest.mark.parametrize(("windows", "now", "applies"), APPLIES)
def test_applies_at(windows: tuple[str, ...], now: float, applies: bool) -> None:
    assert RolloutSpec(windows=windows).applies_at(now) is applies


def test_window_and_step_print_back() -> None:
    assert str(Window.parse("22:05-01:30")) == "22:05-01:30"
    assert Window.parse("22:05-01:30").spans() == ((22 * 3600 + 300, 86_400), (0, 5400))
    assert [str(WaveStep.parse(t)) for t in ["7", "10%", "0.5%", "100.0%"]] == [
        "7",
        "10%",
        "0.5%",
        "100%",
    ]


# --- a fake fleet ---------------------------------------------------------------------------


@dataclass
class Fleet:
    """Devices that do what they are told: ``good`` ones turn healthy, ``bad`` ones fail,
    ``silent`` ones keep installing; ``offline`` ones hear nothing until brought back."""

    devices: list[str]
    behaviour: dict[str, str] = field(default_factory=dict)
    offline: set[str] = field(default_factory=set)
    reports: dict[str, DeviceReport] = field(default_factory=dict)
    told: dict[str, Desired] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for device in self.devices:
            self.reports[device] = DeviceReport(device, True, OLD, "healthy", 0.0)
        for device in self.offline:
            self.go_offline(device)

    def go_offline(self, device: str) -> None:
        self.offline.add(device)
        old = self.reports[device]
        self.reports[device] = DeviceReport(device, False, old.version, old.state, old.since)

    def come_back(self, device: str, now: float) -> None:
        self.offline.discard(device)
        old = self.reports[device]
        self.reports[device] = DeviceReport(device, True, old.version, old.state, old.since)
        self.obey(now)

    def hear(self, decision: Decision, now: float) -> None:
        self.told.update(decision.desired)
        self.obey(now)

    def obey(self, now: float) -> None:
        for device, desired in self.told.items():
            current = self.reports[device]
            if device in self.offline or not desired.apply or current.version == desired.version:
                continue
            if desired.version != NEW:  # a rollback: the old version is known to work
                self.reports[device] = DeviceReport(device, True, desired.version, "healthy", now)
                continue
            state = {"good": "healthy", "bad": "failed", "silent": "installing"}[
                self.behaviour.get(device, "good")
            ]
            self.reports[device] = DeviceReport(device, True, NEW, state, now)  # type: ignore[arg-type]


def drive(
    spec: RolloutSpec,
    fleet: Fleet,
    decision: Decision,
    times: Iterable[float],
    targets: Iterable[str] | None = None,
) -> tuple[Decision, list[Event]]:
    """Step at each time, letting the fleet obey each decision; return the last decision
    and the events of these steps."""
    events: list[Event] = []
    fleet.hear(decision, decision.state.accounted_at)
    chosen = list(targets) if targets is not None else fleet.devices
    for now in times:
        decision = step(spec, decision.state, chosen, fleet.reports, now)
        events.extend(decision.events)
        fleet.hear(decision, now)
    return decision, events


def devices(n: int) -> list[str]:
    return [f"dev-{i:02d}" for i in range(n)]


def started(fleet: Fleet, spec: RolloutSpec, now: float = T0, rid: str = "r1") -> Decision:
    return start(spec, rid, NEW, fleet.devices, fleet.reports, now)


def ticks(begin: float, end: float, every: float = 10) -> list[float]:
    return [begin + every * i for i in range(int((end - begin) // every) + 1)]


def on(desired: Mapping[str, Desired], version: str | None) -> set[str]:
    return {d for d, want in desired.items() if want.version == version}


# --- the happy path -------------------------------------------------------------------------


def test_happy_path_goes_through_every_wave_after_soaking() -> None:
    spec = RolloutSpec()
    fleet = Fleet(devices(10))
    first = started(fleet, spec)
    waves = first.state.waves
    assert [len(w) for w in waves] == [1, 1, 3, 5]
    assert first.desired == {waves[0][0]: Desired(NEW, apply=True)}
    assert first.events == (Event("wave-started", 0),)

    # Healthy at T0, but not for the soak period yet.
    soaking, _ = drive(spec, fleet, first, [T0 + 59])
    assert soaking.state.passed == 0
    assert soaking.events == ()

    last, events = drive(spec, fleet, soaking, ticks(T0 + 60, T0 + 300))
    assert events == [
        ("wave-passed", 0),
        ("wave-started", 1),
        ("wave-passed", 1),
        ("wave-started", 2),
        ("wave-passed", 2),
        ("wave-started", 3),
        ("wave-passed", 3),
        ("done", NEW),
    ]
    assert last.state.status == "done"
    assert last.state.passed == 4
    assert last.state.started_at == (T0, T0 + 60, T0 + 120, T0 + 180)
    assert last.desired == dict.fromkeys(order_targets("r1", fleet.devices), Desired(NEW, True))
    assert last.state.settled == frozenset(fleet.devices)
    assert last.state.failed == frozenset()


def test_a_device_flapping_restarts_its_soak() -> None:
    spec = RolloutSpec(waves=["100%"], soak_s=60)
    fleet = Fleet(devices(2))
    decision, _ = drive(spec, fleet, started(fleet, spec), [T0 + 30])
    flappy = decision.state.waves[0][0]
    fleet.reports[flappy] = DeviceReport(flappy, True, NEW, "healthy", T0 + 40)
    decision, _ = drive(spec, fleet, decision, [T0 + 60, T0 + 99])
    assert decision.state.passed == 0
    decision, events = drive(spec, fleet, decision, [T0 + 100])
    assert events == [("wave-passed", 0), ("done", NEW)]


# --- halts and rollback ---------------------------------------------------------------------


def test_a_bad_canary_halts_and_rolls_back_the_canary_only() -> None:
    spec = RolloutSpec()
    fleet = Fleet(devices(10))
    first = started(fleet, spec)
    canary = first.state.waves[0][0]
    fleet.behaviour[canary] = "bad"
    halted, events = drive(spec, fleet, first, [T0 + 5])
    assert halted.state.status == "halted"
    assert events == [
        ("device-failed", canary),
        ("halted", "wave 0: 1 of 1 devices failed"),
    ]
    assert halted.desired == {canary: Desired(OLD, apply=True)}
    assert fleet.reports[canary].version == OLD

    later, more = drive(spec, fleet, halted, ticks(T0 + 10, T0 + 3600, 100))
    assert more == []
    assert later.state == halted.state
    assert later.desired == {canary: Desired(OLD, apply=True)}
    assert {d for d, r in fleet.reports.items() if r.version == NEW} == set()


def test_a_canary_that_rolled_back_by_itself_is_a_failure() -> None:
    spec = RolloutSpec()
    fleet = Fleet(devices(5))
    first = started(fleet, spec)
    canary = first.state.waves[0][0]
    fleet.reports[canary] = DeviceReport(canary, True, OLD, "rolled-back", T0 + 3)
    decision = step(spec, first.state, fleet.devices, fleet.reports, T0 + 4)
    assert decision.state.status == "halted"


def test_a_failure_from_before_the_rollout_is_not_held_against_a_device() -> None:
    spec = RolloutSpec(waves=["100%"])
    fleet = Fleet(devices(1))
    fleet.reports["dev-00"] = DeviceReport("dev-00", True, OLD, "rolled-back", T0 - 100)
    first = started(fleet, spec)
    decision = step(spec, first.state, fleet.devices, fleet.reports, T0 + 1)
    assert decision.state.status == "running"
    assert decision.state.failed == frozenset()


THRESHOLDS = [
    # wave-1 failures, threshold, halts: wave 1 holds 10 devices
    (1, 0.1, False),
    (2, 0.1, True),
    (2, 0.2, False),
    (3, 0.2, True),
    (1, 0.0, True),
    (10, 1.0, False),
]


@pytest.mark.parametrize(("failures", "threshold", "halts"), THRESHOLDS)
def test_the_failure_threshold_of_a_later_wave(
    failures: int, threshold: float, halts: bool
) -> None:
    spec = RolloutSpec(waves=["1", "11", "100%"], failure_threshold=threshold)
    fleet = Fleet(devices(21))
    first = started(fleet, spec)
    wave1 = first.state.waves[1]
    assert len(wave1) == 10
    for device in wave1[:failures]:
        fleet.behaviour[device] = "bad"
    decision, _ = drive(spec, fleet, first, ticks(T0 + 60, T0 + 120, 5))
    state = decision.state
    assert state.status == ("halted" if halts else "running")
    assert set(wave1[:failures]) <= state.failed
    canary = first.state.waves[0][0]
    assert decision.desired[canary] == Desired(NEW, True)  # a passed wave keeps its version
    if halts:
        assert state.wave == 1
        assert on(decision.desired, OLD) == set(wave1)
        assert set(decision.desired) == {canary, *wave1}
    else:
        assert state.wave == 2
        assert state.passed == 2
        assert on(decision.desired, OLD) == set(wave1[:failures])
        assert set(wave1[failures:]) <= on(decision.desired, NEW)


# --- deadlines and offline devices ----------------------------------------------------------


def test_the_deadline_turns_a_silent_online_device_into_a_failure() -> None:
    spec = RolloutSpec(deadline_s=600)
    fleet = Fleet(devices(4))
    first = started(fleet, spec)
    canary = first.state.waves[0][0]
    fleet.behaviour[canary] = "silent"
    before, _ = drive(spec, fleet, first, ticks(T0 + 60, T0 + 590, 60))
    assert before.state.status == "running"
    assert before.state.failed == frozenset()
    after, events = drive(spec, fleet, before, [T0 + 600])
    assert events == [
        ("device-timed-out", canary),
        ("halted", "wave 0: 1 of 1 devices failed"),
    ]
    assert after.desired == {canary: Desired(OLD, True)}


def test_a_device_healthy_by_the_deadline_finishes_its_soak() -> None:
    spec = RolloutSpec(waves=["100%"], deadline_s=100, soak_s=60)
    fleet = Fleet(devices(1), behaviour={"dev-00": "silent"})
    decision, _ = drive(spec, fleet, started(fleet, spec), [T0 + 10])
    fleet.reports["dev-00"] = DeviceReport("dev-00", True, NEW, "healthy", T0 + 90)
    decision, events = drive(spec, fleet, decision, [T0 + 100, T0 + 149])
    assert events == []
    decision, events = drive(spec, fleet, decision, [T0 + 150])
    assert events == [("wave-passed", 0), ("done", NEW)]


def test_offline_devices_wait_until_the_deadline_then_catch_up() -> None:
    spec = RolloutSpec(waves=["1", "5", "100%"], deadline_s=600)
    order = order_targets("r1", devices(8))
    away = order[3]  # in wave 1
    fleet = Fleet(devices(8), offline={away})
    decision, _ = drive(spec, fleet, started(fleet, spec), [T0 + 60, T0 + 120, T0 + 500])
    assert decision.state.wave == 1
    assert decision.state.passed == 1  # the offline device blocks before the deadline
    assert decision.desired[away] == Desired(NEW, True)

    decision, events = drive(spec, fleet, decision, [T0 + 660])
    assert events == [("device-waiting", away), ("wave-passed", 1), ("wave-started", 2)]
    assert decision.state.released == {away: None}

    decision, events = drive(spec, fleet, decision, [T0 + 720])
    assert events == [("wave-passed", 2), ("done", NEW)]
    assert fleet.reports[away].version == OLD

    fleet.come_back(away, T0 + 5000)
    decision, events = drive(spec, fleet, decision, [T0 + 5010, T0 + 5060])
    assert events == [("caught-up", away)]
    assert fleet.reports[away].version == NEW
    assert away in decision.state.settled


def test_a_catch_up_device_that_stays_silent_times_out_on_its_own_clock() -> None:
    spec = RolloutSpec(waves=["1", "100%"], deadline_s=300)
    order = order_targets("r1", devices(3))
    away = order[2]
    fleet = Fleet(devices(3), offline={away}, behaviour={away: "silent"})
    decision, _ = drive(spec, fleet, started(fleet, spec), ticks(T0 + 60, T0 + 400, 20))
    assert decision.state.status == "done"
    fleet.come_back(away, T0 + 9000)
    decision, _ = drive(spec, fleet, decision, [T0 + 9000, T0 + 9290])
    assert decision.state.failed == frozenset()
    decision, events = drive(spec, fleet, decision, [T0 + 9300])
    assert events == [("device-timed-out", away)]
    assert decision.desired[away] == Desired(OLD, True)
    assert decision.state.status == "done"  # a straggler does not halt a finished rollout


def test_a_wave_of_only_offline_devices_waits_for_one_to_prove_the_version() -> None:
    spec = RolloutSpec(deadline_s=600)
    fleet = Fleet(devices(10))
    canary = order_targets("r1", fleet.devices)[0]
    fleet.go_offline(canary)
    decision, events = drive(spec, fleet, started(fleet, spec), ticks(T0, T0 + 3000, 100))
    assert events == [("device-waiting", canary)]
    assert set(decision.desired) == {canary}
    fleet.come_back(canary, T0 + 3000)
    decision, events = drive(spec, fleet, decision, [T0 + 3010, T0 + 3060])
    assert events == [("caught-up", canary), ("wave-passed", 0), ("wave-started", 1)]


# --- targets that change --------------------------------------------------------------------


def test_devices_added_after_the_start_catch_up_to_the_last_passed_wave() -> None:
    spec = RolloutSpec(waves=["1", "100%"])
    fleet = Fleet(devices(4))
    first = started(fleet, spec)
    fleet.devices.append("late-1")
    fleet.reports["late-1"] = DeviceReport("late-1", True, OLD, "healthy", 0.0)
    # No wave has passed: the newcomer is left alone.
    decision, _ = drive(spec, fleet, first, [T0 + 30])
    assert "late-1" not in decision.desired
    assert "late-1" not in decision.state.planned

    decision, events = drive(spec, fleet, decision, [T0 + 60])
    assert ("joined", "late-1") in events
    assert decision.desired["late-1"] == Desired(NEW, True)
    assert decision.state.released["late-1"] == T0 + 60
    decision, events = drive(spec, fleet, decision, [T0 + 120])
    assert ("caught-up", "late-1") in events

    # After the rollout is done, newcomers still catch up.
    fleet.devices.append("late-2")
    fleet.reports["late-2"] = DeviceReport("late-2", False, None, "installing", 0.0)
    decision, events = drive(spec, fleet, decision, [T0 + 500])
    assert decision.state.status == "done"
    assert events == [("joined", "late-2")]
    assert decision.desired["late-2"] == Desired(NEW, True)
    assert decision.state.assigned["late-2"].previous is None


def test_devices_that_leave_the_selector_are_no_longer_told_nor_counted() -> None:
    spec = RolloutSpec(waves=["1", "100%"])
    fleet = Fleet(devices(4))
    first = started(fleet, spec)
    canary = first.state.waves[0][0]
    fleet.behaviour[canary] = "silent"
    fleet.hear(first, T0)
    rest = [d for d in fleet.devices if d != canary]
    decision, events = drive(spec, fleet, first, [T0 + 10], targets=rest)
    assert canary not in decision.desired
    # An empty wave holds nobody to wait for, so it passes and the next one starts.
    assert events == [("wave-passed", 0), ("wave-started", 1)]
    assert set(decision.desired) == set(rest)


# --- operator actions -----------------------------------------------------------------------


def test_pause_holds_everything_and_resume_goes_on_without_losing_deadline_time() -> None:
    spec = RolloutSpec(waves=["1", "100%"], deadline_s=600)
    fleet = Fleet(devices(3))
    first = started(fleet, spec)
    canary = first.state.waves[0][0]
    fleet.behaviour[canary] = "silent"
    running, _ = drive(spec, fleet, first, [T0 + 500])
    paused = pause(spec, running.state, T0 + 500)
    assert paused.status == "paused"
    assert pause(spec, paused, T0 + 550) == paused

    fleet.reports[canary] = DeviceReport(canary, True, NEW, "healthy", T0 + 510)
    held = step(spec, paused, fleet.devices, fleet.reports, T0 + 5000)
    assert held.state == paused
    assert held.events == ()
    assert held.desired == {canary: Desired(NEW, True)}

    # 500 s of the 600 s deadline were used before the pause; the pause does not count.
    fleet.reports[canary] = DeviceReport(canary, True, NEW, "installing", T0 + 5000)
    resumed = resume(paused, T0 + 5000)
    assert resume(resumed, T0 + 5001) == resumed
    decision = step(spec, resumed, fleet.devices, fleet.reports, T0 + 5099)
    assert decision.state.status == "running"
    decision = step(spec, decision.state, fleet.devices, fleet.reports, T0 + 5100)
    assert decision.events == (
        ("device-timed-out", canary),
        ("halted", "wave 0: 1 of 1 devices failed"),
    )


def test_abort_rolls_every_touched_device_back() -> None:
    spec = RolloutSpec()
    fleet = Fleet(devices(10))
    decision, _ = drive(spec, fleet, started(fleet, spec), [T0 + 60, T0 + 120])
    touched = set(decision.desired)
    assert len(touched) == 5
    assert on(decision.desired, NEW) == touched
    aborted = abort(decision.state, "bad release notes")
    assert aborted.reason == "bad release notes"
    assert abort(aborted) == aborted
    rolled, events = drive(spec, fleet, Decision(aborted, {}), ticks(T0 + 130, T0 + 2000, 100))
    assert events == []
    assert rolled.state == aborted
    assert rolled.desired == dict.fromkeys(decision.desired, Desired(OLD, True))
    assert {d for d, r in fleet.reports.items() if r.version == NEW} == set()


OPERATOR_REFUSALS = [
    ("halted", "pause", "is halted; cannot pause"),
    ("halted", "resume", "is halted; cannot resume"),
    ("done", "abort", "is done"),
    ("done", "pause", "is done; cannot pause"),
    ("aborted", "resume", "is aborted; cannot resume"),
]


@pytest.mark.parametrize(("status", "action", "message"), OPERATOR_REFUSALS)
def test_operator_actions_that_make_no_sense_are_refused(
    status: str, action: str, message: str
) -> None:
    spec = RolloutSpec(waves=["100%"])
    fleet = Fleet(devices(1), behaviour={"dev-00": "bad" if status == "halted" else "good"})
    first = started(fleet, spec)
    if status == "aborted":
        state = abort(first.state)
    else:
        state = drive(spec, fleet, first, [T0 + 100])[0].state
    assert state.status == status
    actions = {
        "pause": lambda: pause(spec, state, T0 + 200),
        "resume": lambda: resume(state, T0 + 200),
        "abort": lambda: abort(state),
    }
    with pytest.raises(ValidationError, match=message):
        actions[action]()


def test_a_halted_rollout_can_be_aborted_and_rolls_everyone_back() -> None:
    spec = RolloutSpec(waves=["1", "11", "100%"])
    fleet = Fleet(devices(21))
    first = started(fleet, spec)
    for device in first.state.waves[1][:2]:
        fleet.behaviour[device] = "bad"
    halted, _ = drive(spec, fleet, first, [T0 + 60, T0 + 65])
    assert halted.state.status == "halted"
    assert on(halted.desired, NEW) == {first.state.waves[0][0]}
    aborted = step(spec, abort(halted.state), fleet.devices, fleet.reports, T0 + 70)
    assert on(aborted.desired, NEW) == set()
    assert set(aborted.desired) == set(halted.desired)


# --- maintenance windows --------------------------------------------------------------------


def test_outside_the_window_devices_stage_and_apply_inside_it() -> None:
    spec = RolloutSpec(waves=["100%"], windows=["22:00-02:00"], deadline_s=600)
    fleet = Fleet(devices(3))
    noon = MIDNIGHT + 12 * 3600
    first = start(spec, "r1", NEW, fleet.devices, fleet.reports, noon)
    assert set(first.desired.values()) == {Desired(NEW, apply=False)}
    # Ten hours outside the window: nothing applied, and no deadline used up.
    waiting, events = drive(spec, fleet, first, ticks(noon, noon + 10 * 3600 - 1, 600))
    assert events == []
    assert waiting.state.failed == frozenset()
    assert {r.version for r in fleet.reports.values()} == {OLD}
    # 22:00: the window opens, devices apply and pass.
    opened, events = drive(spec, fleet, waiting, [noon + 10 * 3600, noon + 10 * 3600 + 60])
    assert set(opened.desired.values()) == {Desired(NEW, apply=True)}
    assert events == [("wave-passed", 0), ("done", NEW)]


def test_the_window_may_wrap_midnight_and_its_deadline_runs_only_inside() -> None:
    spec = RolloutSpec(waves=["1", "100%"], windows=["23:30-00:30"], deadline_s=1800)
    fleet = Fleet(devices(3))
    first = start(spec, "r1", NEW, fleet.devices, fleet.reports, MIDNIGHT - 600)  # 23:50
    canary, *wave1 = first.state.waves[0] + first.state.waves[1]
    fleet.behaviour.update(dict.fromkeys(wave1, "silent"))
    assert first.desired == {canary: Desired(NEW, True)}
    decision, _ = drive(spec, fleet, first, [MIDNIGHT + 60])  # 00:01, soaked
    assert decision.state.wave == 1
    assert set(decision.desired.values()) == {Desired(NEW, True)}
    decision, _ = drive(spec, fleet, decision, [MIDNIGHT + 1200, MIDNIGHT + 12 * 3600])
    # At noon the window is shut: new versions only stage, and of the 12 hours since
    # wave 1 started only the 29 minutes inside the window count to its deadline.
    assert decision.state.status == "running"
    assert decision.state.elapsed_s == pytest.approx(1740)
    assert set(decision.desired.values()) == {Desired(NEW, False)}
    # A rollback does not wait for the window.
    rolled = step(spec, abort(decision.state), fleet.devices, fleet.reports, MIDNIGHT + 12 * 3600)
    assert set(rolled.desired.values()) == {Desired(OLD, True)}
    # The next evening at 23:31 the last minute of the deadline is used up.
    decision, events = drive(spec, fleet, decision, [MIDNIGHT + 86_400 - 1741])
    assert decision.state.status == "running"
    decision, events = drive(spec, fleet, decision, [MIDNIGHT + 86_400 - 1740])
    assert events == [
        *(("device-timed-out", d) for d in wave1),
        ("halted", "wave 1: 2 of 2 devices failed"),
    ]
    assert on(decision.desired, OLD) == set(wave1)
    assert decision.desired[canary] == Desired(NEW, True)


# --- determinism and properties -------------------------------------------------------------


def test_same_inputs_same_decision() -> None:
    spec = RolloutSpec(windows=["00:00-12:00"])
    fleet = Fleet(devices(30))
    a = start(spec, "r9", NEW, fleet.devices, fleet.reports, MIDNIGHT)
    b = start(spec, "r9", NEW, list(reversed(fleet.devices)), dict(fleet.reports), MIDNIGHT)
    assert a == b
    fleet.hear(a, MIDNIGHT)
    for now in (MIDNIGHT + 61, MIDNIGHT + 130):
        a = step(spec, a.state, fleet.devices, fleet.reports, now)
        b = step(spec, b.state, reversed(fleet.devices), dict(fleet.reports), now)
        assert a == b
        assert list(a.desired) == list(b.desired)
        fleet.hear(a, now)
    assert a.state.wave == 2


STATES: st.SearchStrategy[DeviceState] = st.sampled_from(
    ["installing", "healthy", "unhealthy", "failed", "rolled-back"]
)


@st.composite
def runs(
    draw: st.DrawFn,
) -> tuple[RolloutSpec, list[str], list[tuple[str, float, dict[str, DeviceReport]]]]:
    spec = RolloutSpec(
        waves=draw(st.sampled_from([["1", "10%", "50%", "100%"], ["100%"], ["2", "100%"]])),
        soak_s=draw(st.sampled_from([0, 30, 60])),
        deadline_s=draw(st.sampled_from([60, 300])),
        failure_threshold=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        windows=draw(st.sampled_from([(), ("00:00-06:00",), ("22:00-02:00",)])),
    )
    pool = [f"d{i}" for i in range(14)]
    initial = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10, unique=True))
    now = MIDNIGHT
    script: list[tuple[str, float, dict[str, DeviceReport]]] = []
    for _ in range(draw(st.integers(1, 25))):
        now += draw(st.sampled_from([1, 10, 30, 60, 300, 3600]))
        action = draw(st.sampled_from(["step"] * 6 + ["pause", "resume", "abort"]))
        reports = {
            d: DeviceReport(
                d,
                draw(st.booleans()),
                draw(st.sampled_from([OLD, NEW, None])),
                draw(STATES),
                now - draw(st.sampled_from([0, 5, 40, 100, 5000])),
            )
            for d in draw(st.lists(st.sampled_from(pool), max_size=14, unique=True))
        }
        script.append((action, now, reports))
    return spec, initial, script


@given(runs(), st.data())
def test_no_device_runs_ahead_and_stopped_rollouts_never_advance(
    run: tuple[RolloutSpec, list[str], list[tuple[str, float, dict[str, DeviceReport]]]],
    data: st.DataObject,
) -> None:
    spec, initial, script = run
    decision = start(spec, "prop", NEW, initial, {}, MIDNIGHT)
    targets = list(initial)
    for action, now, reports in script:
        before: RolloutState = decision.state
        told_new = on(decision.desired, NEW)
        stepped = False
        if data.draw(st.booleans(), label="a device joins"):
            targets.append(f"d{len(targets) + 20}")
        if action == "pause" and before.status == "running":
            decision = Decision(pause(spec, before, now), decision.desired)
        elif action == "resume" and before.status == "paused":
            decision = Decision(resume(before, now), decision.desired)
        elif action == "abort" and before.status != "done":
            decision = Decision(abort(before), decision.desired)
        else:
            stepped = True
            decision = step(spec, before, targets, reports, now)
            assert decision == step(spec, before, list(reversed(targets)), dict(reports), now)
        state = decision.state
        started_waves = {d for wave in state.waves[: state.wave + 1] for d in wave}
        for device in on(decision.desired, NEW):
            joined_late = device not in state.planned and state.passed > 0
            assert device in started_waves or joined_late, device
        if before.status in ("halted", "aborted", "paused") and stepped:
            assert state == before
        if before.status in ("halted", "aborted"):
            assert state.status in ("halted", "aborted")
            assert (state.wave, state.passed, state.started_at) == (
                before.wave,
                before.passed,
                before.started_at,
            )
            assert set(state.assigned) == set(before.assigned)
            assert on(decision.desired, NEW) <= told_new
        if before.status == "done":
            assert state.status == "done"
        if state.status == "aborted" and stepped:
            # Back to what each ran before: the new version only if it already ran it.
            for device, want in decision.desired.items():
                assert want == Desired(state.assigned[device].previous, apply=True)
        assert state.passed <= len(state.waves)
        assert (state.status == "done") == (state.passed == len(state.waves))
