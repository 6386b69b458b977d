"""Window state: what each windowed rule has counted, per group, kept as plain data.

A window keeps the events that passed a rule's condition, per group (the value of its
``group_by``, as text; one group when there is none):

- **sliding**: the times (and values) of the events of the last ``over`` seconds; an
  event at ``t`` counts while ``now - t < over``. At most ``max_events`` per group are
  kept (the oldest go first), so a ``count`` saturates there.
- **tumbling**: the running count, sum, min and max of the current period; periods are
  aligned to the Unix epoch (a ``1d`` window runs from 00:00 to 24:00 UTC), and a new
  period starts empty.

At most ``max_groups`` groups are kept per rule; past that the group idle longest goes.
``dump()`` gives JSON-ready data and ``load()`` takes it back, so a hub that stores it can
restart inside a window. Time is whatever ``now`` the caller passes (seconds since the
epoch): the module has no clock, and does no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from roost.rules.spec import Window

STATE_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """Safety budgets of the window state."""

    max_events: int = 10_000  # per group of a sliding window
    max_groups: int = 100_000  # per rule


class _Sliding:
    __slots__ = ("times", "values")

    def __init__(self, times: list[float], values: list[float] | None) -> None:
        self.times = deque(times)
        self.values = deque(values) if values is not None else None

    def add(self, now: float, value: float | None, window: Window, limits: Limits) -> None:
        self.times.append(now)
        if self.values is not None:
            self.values.append(value if value is not None else 0.0)
        while self.times and (
            now - self.times[0] >= window.over or len(self.times) > limits.max_events
        ):
            self.times.popleft()
            if self.values is not None:
                self.values.popleft()

    def aggregate(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"count": len(self.times)}
        if self.values is not None and self.values:
            total = math.fsum(self.values)
            figures |= {
                "sum": total,
                "avg": total / len(self.values),
                "min": min(self.values),
                "max": max(self.values),
            }
        return figures

    def idle(self, now: float, window: Window) -> bool:
        return not self.times or now - self.times[-1] >= window.over

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": list(self.times)}
        if self.values is not None:
            out["v"] = list(self.values)
        return out


class _Tumbling:
    __slots__ = ("count", "max", "min", "start", "sum")

    def __init__(
        self, start: float, count: int = 0, total: float = 0.0, low: Any = None, high: Any = None
    ) -> None:
        self.start, self.count, self.sum, self.min, self.max = start, count, total, low, high

    def add(self, now: float, value: float | None, window: Window, limits: Limits) -> None:
        start = math.floor(now / window.over) * window.over
        if start != self.start:  # a new period starts empty
            self.start, self.count, self.sum, self.min, self.max = start, 0, 0.0, None, None
        self.count += 1
        if value is not None:
            self.sum += value
            self.min = value if self.min is None else min(self.min, value)
            self.max = value if self.max is None else max(self.max, value)

    def aggregate(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"count": self.count}
        if self.min is not None:
            figures |= {
                "sum": self.sum,
                "avg": self.sum / self.count,
                "min": self.min,
                "max": self.max,
            }
        return figures

    def idle(self, now: float, window: Window) -> bool:
        return now >= self.start + window.over

    def dump(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
        }


_Group = _Sliding | _Tumbling


def _new(window: Window, now: float) -> _Group:
    if window.kind == "tumbling":
        return _Tumbling(math.floor(now / window.over) * window.over)
    return _Sliding([], [] if window.value is not None else None)


def _restore(window: Window, data: Mapping[str, Any]) -> _Group:
    if window.kind == "tumbling":
        return _Tumbling(
            float(data["start"]), int(data["count"]), float(data["sum"]), data["min"], data["max"]
        )
    values = data.get("v")
    if (values is None) != (window.value is None) or (
        values is not None and len(values) != len(data["t"])
    ):
        raise ValueError("values do not match the window")
    return _Sliding(
        [float(t) for t in data["t"]], None if values is None else [float(v) for v in values]
    )


class WindowState:
    """The groups of every windowed rule, by rule id and group key."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._groups: dict[str, dict[str, _Group]] = {}
        self._fingerprints: dict[str, str] = {}

    def add(
        self, rule_id: str, window: Window, key: str, now: float, value: float | None
    ) -> dict[str, Any]:
        """Count one event into its group and return the group's figures (``count`` ...)."""
        groups = self._groups.get(rule_id)
        if groups is None or self._fingerprints.get(rule_id) != window.fingerprint:
            groups = self._groups[rule_id] = {}
            self._fingerprints[rule_id] = window.fingerprint
        group = groups.pop(key, None)  # re-inserted last: the dict's order is idleness
        if group is None:
            group = _new(window, now)
            if len(groups) >= self.limits.max_groups:
                del groups[next(iter(groups))]
        groups[key] = group
        group.add(now, value, window, self.limits)
        return group.aggregate()

    def clear(self, rule_id: str, key: str) -> None:
        """Empty one group (a window with ``reset`` that fired starts again)."""
        self._groups.get(rule_id, {}).pop(key, None)

    def expire(self, now: float, windows: Mapping[str, Window]) -> int:
        """Drop the groups with nothing left in their window, and rules no longer there."""
        dropped = 0
        for rule_id in list(self._groups):
            window = windows.get(rule_id)
            groups = self._groups[rule_id]
            if window is None or window.fingerprint != self._fingerprints.get(rule_id):
                dropped += len(self._groups.pop(rule_id))
                self._fingerprints.pop(rule_id, None)
                continue
            for key in [k for k, g in groups.items() if g.idle(now, window)]:
                del groups[key]
                dropped += 1
        return dropped

    def dump(self) -> dict[str, Any]:
        """Plain data (JSON-ready) that ``load`` reads back."""
        return {
            "version": STATE_VERSION,
            "rules": {
                rule_id: {
                    "window": self._fingerprints[rule_id],
                    "groups": {key: group.dump() for key, group in groups.items()},
                }
                for rule_id, groups in self._groups.items()
            },
        }

    @classmethod
    def load(
        cls, data: Mapping[str, Any], windows: Mapping[str, Window], limits: Limits | None = None
    ) -> WindowState:
        """State from ``dump()``, keeping only rules still there with the same window.

        A rule whose window changed (length, kind, group or value) starts empty, as does
        one whose stored state cannot be read: counting from zero is safer than counting
        with the wrong meaning.
        """
        state = cls(limits)
        if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
            return state
        for rule_id, stored in dict(data.get("rules") or {}).items():
            window = windows.get(rule_id)
            if (
                window is None
                or not isinstance(stored, Mapping)
                or stored.get("window") != window.fingerprint
            ):
                continue
            try:
                groups = {str(k): _restore(window, g) for k, g in dict(stored["groups"]).items()}
            except (KeyError, TypeError, ValueError):
                continue
            state._groups[rule_id] = groups
            state._fingerprints[rule_id] = window.fingerprint
        return state
