"""The plan of a rollout: its spec, the order of its targets and the devices of each wave.

Pure values and arithmetic. Nothing here reads a clock, a database, the network or the
environment: times are UTC epoch seconds handed in by the caller, the targets are the
device ids the caller resolved from the label selector. Every value is frozen and
validated on construction; a bad spec raises one ``ValidationError`` line naming the
field at fault.

Invariants of ``wave_sizes`` (and so of ``plan_waves``):

- the sizes add up to the number of targets;
- every wave holds at least one device, and no wave is empty: a step that would add no
  device (``"1"`` then ``"10%"`` of 3 devices) is pushed to one more device than the
  step before it, and steps that can no longer add anyone are dropped;
- the same spec and the same number of targets give the same sizes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from roost.errors import ValidationError

DEFAULT_WAVES = ("1", "10%", "50%", "100%")
DEFAULT_SOAK_S = 60.0
DEFAULT_DEADLINE_S = 600.0
DEFAULT_FAILURE_THRESHOLD = 0.10
DEFAULT_CANARY_FAILURE_THRESHOLD = 0.0
MAX_WAVES = 20
# Soak and deadline are safety budgets: a month is already longer than anyone waits.
MAX_DURATION_S = 30 * 86_400.0
DAY_S = 86_400


@dataclass(frozen=True)
class WaveStep:
    """How far a wave reaches, cumulatively: a device count (``"5"``) or a share (``"10%"``)."""

    count: int | None = None
    percent: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise ValidationError("a wave is a device count or a percentage, not both")
        if self.count is not None and self.count < 1:
            raise ValidationError(f"wave {self.count}: a device count must be at least 1")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise ValidationError(f"wave {self.percent}%: a percentage must be in (0, 100]")

    @classmethod
    def parse(cls, text: str) -> WaveStep:
        """``"5"`` (devices) or ``"12.5%"`` (of the targets); spaces are ignored."""
        raw = text.replace(" ", "")
        try:
            if raw.endswith("%"):
                percent = Decimal(raw[:-1])
                if not percent.is_finite():
                    raise InvalidOperation
                return cls(percent=percent)
            if not raw.isdigit():
                raise InvalidOperation
            return cls(count=int(raw))
        except InvalidOperation:
            raise ValidationError(
                f'wave {text!r} is neither a device count ("5") nor a percentage ("10%")'
            ) from None

    def reach(self, targets: int) -> int:
        """How many of ``targets`` devices this step reaches, before the bumping of waves."""
        if self.count is not None:
            return min(self.count, targets)
        assert self.percent is not None
        return min(math.ceil(Fraction(self.percent) * targets / 100), targets)

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        assert self.percent is not None
        return f"{self.percent.normalize():f}%"


@dataclass(frozen=True)
class Window:
    """A daily maintenance window in UTC, ``"22:00-02:00"``; it may wrap midnight."""

    start_min: int
    end_min: int

    def __post_init__(self) -> None:
        for minute in (self.start_min, self.end_min):
            if not 0 <= minute < 24 * 60:
                raise ValidationError(f"window {self}: times must be in 00:00-23:59")
        if self.start_min == self.end_min:
            raise ValidationError(f"window {self} is empty: start and end are the same")

    @classmethod
    def parse(cls, text: str) -> Window:
        try:
            start, end = text.replace(" ", "").split("-")
            return cls(_minutes(start), _minutes(end))
        except ValueError:
            raise ValidationError(
                f'window {text!r} is not a daily UTC window like "22:00-02:00"'
            ) from None

    def spans(self) -> tuple[tuple[int, int], ...]:
        """The window as [start, end) seconds of a UTC day; a wrapping window is two spans."""
        start, end = self.start_min * 60, self.end_min * 60
        if start < end:
            return ((start, end),)
        return ((start, DAY_S), (0, end))

    def __str__(self) -> str:
        return f"{_hhmm(self.start_min)}-{_hhmm(self.end_min)}"


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    if len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
        raise ValueError(hhmm)
    if int(hours) > 23 or int(minutes) > 59:
        raise ValueError(hhmm)
    return int(hours) * 60 + int(minutes)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class RolloutSpec:
    """How a rollout goes: its waves, soak, deadline, failure thresholds and windows.

    ``waves`` are cumulative steps, the first one is the canary wave. ``soak_s`` is how
    long a device must have stayed healthy; ``deadline_s`` how long a wave waits for its
    devices to report healthy (counted inside the maintenance windows only, if any).
    A wave halts the rollout when its failures exceed ``canary_failure_threshold`` (wave
    0) or ``failure_threshold`` (the others) times its size. ``windows`` are daily UTC
    windows; none means "apply any time". Strings are kept in a canonical form.
    """

    waves: Sequence[str] = DEFAULT_WAVES
    soak_s: float = DEFAULT_SOAK_S
    deadline_s: float = DEFAULT_DEADLINE_S
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD
    canary_failure_threshold: float = DEFAULT_CANARY_FAILURE_THRESHOLD
    windows: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.waves, str) or isinstance(self.windows, str):
            raise ValidationError("waves and windows are lists of strings, not one string")
        steps = tuple(WaveStep.parse(text) for text in self.waves)
        _check_steps(steps)
        windows = tuple(Window.parse(text) for text in self.windows)
        _check_duration("soak_s", self.soak_s, allow_zero=True)
        _check_duration("deadline_s", self.deadline_s, allow_zero=False)
        _check_fraction("failure_threshold", self.failure_threshold)
        _check_fraction("canary_failure_threshold", self.canary_failure_threshold)
        object.__setattr__(self, "waves", tuple(str(step) for step in steps))
        object.__setattr__(self, "windows", tuple(str(window) for window in windows))

    @property
    def steps(self) -> tuple[WaveStep, ...]:
        return tuple(WaveStep.parse(text) for text in self.waves)

    def threshold(self, wave: int) -> Fraction:
        """The share of a wave's devices that may fail without halting the rollout."""
        value = self.canary_failure_threshold if wave == 0 else self.failure_threshold
        # Through the decimal text, so 0.1 of 10 devices is exactly 1 device.
        return Fraction(repr(value))

    def applies_at(self, now: float) -> bool:
        """Whether devices may apply (not only download) a new version at ``now``."""
        if not self.windows:
            return True
        second = now % DAY_S
        return any(start <= second < end for start, end in self._spans())

    def window_time(self, since: float, now: float) -> float:
        """Seconds of ``[since, now)`` inside the maintenance windows (all, without any)."""
        if now <= since:
            return 0.0
        if not self.windows:
            return now - since
        return self._window_seconds_before(now) - self._window_seconds_before(since)

    def _spans(self) -> tuple[tuple[int, int], ...]:
        spans = sorted(span for text in self.windows for span in Window.parse(text).spans())
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return tuple(merged)

    def _window_seconds_before(self, t: float) -> float:
        spans = self._spans()
        days, second = divmod(t, DAY_S)
        per_day = sum(end - start for start, end in spans)
        today = sum(max(0.0, min(end, second) - start) for start, end in spans)
        return days * per_day + today


def _check_steps(steps: tuple[WaveStep, ...]) -> None:
    if not steps:
        raise ValidationError("waves: a rollout needs at least one wave")
    if len(steps) > MAX_WAVES:
        raise ValidationError(f"waves: at most {MAX_WAVES} waves, not {len(steps)}")
    if steps[-1].percent != 100:
        raise ValidationError(f'waves: the last wave must be "100%", not "{steps[-1]}"')
    counts = [step.count for step in steps if step.count is not None]
    percents = [step.percent for step in steps if step.percent is not None]
    if any(b <= a for a, b in itertools.pairwise(counts)):
        raise ValidationError("waves: device counts must grow from wave to wave")
    if any(b <= a for a, b in itertools.pairwise(percents)):
        raise ValidationError("waves: percentages must grow from wave to wave")


def _check_duration(name: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and low_ok and value <= MAX_DURATION_S):
        bound = "0" if allow_zero else "more than 0"
        raise ValidationError(
            f"{name} must be {bound} and at most {MAX_DURATION_S:.0f} seconds, not {value}"
        )


def _check_fraction(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValidationError(f"{name} is a fraction of a wave in [0, 1], not {value}")


def wave_sizes(spec: RolloutSpec, targets: int) -> tuple[int, ...]:
    """How many devices each wave adds, for ``targets`` devices (see the invariants above)."""
    if targets < 0:
        raise ValidationError(f"cannot plan waves for {targets} devices")
    sizes: list[int] = []
    reached = 0
    for step in spec.steps:
        cumulative = min(max(step.reach(targets), reached + 1), targets)
        if cumulative > reached:
            sizes.append(cumulative - reached)
            reached = cumulative
    return tuple(sizes)


def order_targets(rollout_id: str, device_ids: Iterable[str]) -> tuple[str, ...]:
    """The devices in the order the rollout reaches them: by a hash of rollout and device.

    Deterministic, independent of the order given, and different for each rollout, so the
    canaries are spread over the fleet rather than always the same first few devices.
    """

    def key(device_id: str) -> tuple[bytes, str]:
        digest = hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).digest()
        return digest, device_id

    return tuple(sorted(set(device_ids), key=key))


def plan_waves(spec: RolloutSpec, ordered: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Cut the ordered targets into waves of ``wave_sizes``; wave 0 is the canary wave."""
    waves: list[tuple[str, ...]] = []
    begin = 0
    for size in wave_sizes(spec, len(ordered)):
        waves.append(tuple(ordered[begin : begin + size]))
        begin += size
    return tuple(waves)
