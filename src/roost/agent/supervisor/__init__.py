"""The agent's app supervisor: runs a device's apps confined, restarts them, reports them.

It knows nothing about manifests or bundles: it is given one ``RunSpec`` per app and
keeps the device running exactly those. Standard library only (the agent stays small).

- ``spec``: ``RunSpec``, ``HealthCheck``, ``RestartPolicy``, ``AppState``, ``AppStatus``.
- ``isolation``: what the device allows (bubblewrap, cgroup v2/v1, else rlimits) and the
  pure launch decision.
- ``policy``: the pure restart / state machine with exponential backoff.
- ``health``: http, tcp and command probes, and the pure verdict over them.
- ``logs``: per-app size-rotated logs and their tail.
- ``process``: spawning and stopping a whole app (cgroup, process group, descendants).
- ``supervisor``: ``Supervisor``, the async context manager that drives them all.
"""

from roost.agent.supervisor.isolation import (
    Capabilities,
    CgroupSupport,
    Launch,
    detect_isolation,
    plan_launch,
)
from roost.agent.supervisor.logs import tail
from roost.agent.supervisor.policy import PolicyLimits
from roost.agent.supervisor.spec import AppState, AppStatus, HealthCheck, RestartPolicy, RunSpec
from roost.agent.supervisor.supervisor import Supervisor, SupervisorSettings

__all__ = [
    "AppState",
    "AppStatus",
    "Capabilities",
    "CgroupSupport",
    "HealthCheck",
    "Launch",
    "PolicyLimits",
    "RestartPolicy",
    "RunSpec",
    "Supervisor",
    "SupervisorSettings",
    "detect_isolation",
    "plan_launch",
    "tail",
]
