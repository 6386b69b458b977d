"""Rollout specs and states as JSON-ready dicts, and back. Pure.

The hub stores them in the database; ``load_*`` validates what it reads (the dataclasses
check themselves on construction), so a damaged row fails with one clear line instead
of a rollout doing something odd.
"""

from __future__ import annotations

from typing import Any, cast

from roost.errors import ValidationError
from roost.rollouts.core import Assignment, RolloutState, Status
from roost.rollouts.plan import RolloutSpec

SPEC_FIELDS = (
    "waves",
    "soak_s",
    "deadline_s",
    "failure_threshold",
    "canary_failure_threshold",
    "windows",
)


def dump_spec(spec: RolloutSpec) -> dict[str, Any]:
    return {
        "waves": list(spec.waves),
        "soak_s": spec.soak_s,
        "deadline_s": spec.deadline_s,
        "failure_threshold": spec.failure_threshold,
        "canary_failure_threshold": spec.canary_failure_threshold,
        "windows": list(spec.windows),
    }


def load_spec(data: dict[str, Any]) -> RolloutSpec:
    """A spec from its dict; absent fields take the defaults, unknown ones are refused."""
    unknown = sorted(set(data) - set(SPEC_FIELDS))
    if unknown:
        raise ValidationError(f"unknown rollout setting(s): {', '.join(unknown)}")
    values = {k: v for k, v in data.items() if v is not None}
    for key in ("waves", "windows"):
        if key in values:
            if not isinstance(values[key], list | tuple) or not all(
                isinstance(item, str) for item in values[key]
            ):
                raise ValidationError(f"{key} must be a list of strings")
            values[key] = tuple(values[key])
    for key in ("soak_s", "deadline_s", "failure_threshold", "canary_failure_threshold"):
        if key in values and (
            isinstance(values[key], bool) or not isinstance(values[key], int | float)
        ):
            raise ValidationError(f"{key} must be a number")
        if key in values:
            values[key] = float(values[key])
    return RolloutSpec(**values)


def dump_state(state: RolloutState) -> dict[str, Any]:
    return {
        "rollout_id": state.rollout_id,
        "version": state.version,
        "status": state.status,
        "waves": [list(wave) for wave in state.waves],
        "wave": state.wave,
        "started_at": list(state.started_at),
        "passed": state.passed,
        "elapsed_s": state.elapsed_s,
        "accounted_at": state.accounted_at,
        "assigned": {d: [a.previous, a.at] for d, a in sorted(state.assigned.items())},
        "failed": sorted(state.failed),
        "settled": sorted(state.settled),
        "released": dict(sorted(state.released.items())),
        "reason": state.reason,
    }


def load_state(data: dict[str, Any]) -> RolloutState:
    try:
        return RolloutState(
            rollout_id=str(data["rollout_id"]),
            version=str(data["version"]),
            status=cast(Status, data["status"]),
            waves=tuple(tuple(str(d) for d in wave) for wave in data["waves"]),
            wave=int(data["wave"]),
            started_at=tuple(float(t) for t in data["started_at"]),
            passed=int(data["passed"]),
            elapsed_s=float(data["elapsed_s"]),
            accounted_at=float(data["accounted_at"]),
            assigned={
                str(d): Assignment(None if prev is None else str(prev), float(at))
                for d, (prev, at) in data["assigned"].items()
            },
            failed=frozenset(str(d) for d in data["failed"]),
            settled=frozenset(str(d) for d in data["settled"]),
            released={
                str(d): None if at is None else float(at) for d, at in data["released"].items()
            },
            reason=str(data.get("reason", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValidationError(f"a stored rollout state is damaged: {err!r}") from None
