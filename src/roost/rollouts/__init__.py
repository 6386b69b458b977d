"""Rollouts: an app version reaches the targeted devices in waves, gated by their health.

The core is pure (see ``plan`` and ``core``): the hub's shell feeds it device reports and
the time, and carries out its decisions.
"""

from roost.rollouts.core import (
    Assignment,
    Decision,
    Desired,
    DeviceReport,
    DeviceState,
    Event,
    RolloutState,
    Status,
    abort,
    pause,
    resume,
    start,
    step,
)
from roost.rollouts.plan import (
    DEFAULT_WAVES,
    RolloutSpec,
    WaveStep,
    Window,
    order_targets,
    plan_waves,
    wave_sizes,
)

__all__ = [
    "DEFAULT_WAVES",
    "Assignment",
    "Decision",
    "Desired",
    "DeviceReport",
    "DeviceState",
    "Event",
    "RolloutSpec",
    "RolloutState",
    "Status",
    "WaveStep",
    "Window",
    "abort",
    "order_targets",
    "pause",
    "plan_waves",
    "resume",
    "start",
    "step",
    "wave_sizes",
]
