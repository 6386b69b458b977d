"""What the supervisor is asked to run, and what it reports back.

``RunSpec`` is everything the supervisor needs to run one app: it knows nothing about
manifests or bundles. Values are frozen and validated on construction; a bad value raises
``AppError`` naming the app and the field. ``AppStatus`` is what ``Supervisor.states()``
reports per app. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from roost.errors import AppError

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

HealthKind = Literal["http", "tcp", "command"]
RestartMode = Literal["always", "on-failure", "never"]


class AppState(StrEnum):
    """The life of one app on a device."""

    STARTING = "starting"  # launched, its health check has not passed yet
    RUNNING = "running"  # alive, and healthy when it has a check
    UNHEALTHY = "unhealthy"  # alive, ``retries`` health probes failed in a row
    CRASH_LOOPING = "crash-looping"  # exits quickly again and again; restarted slowly
    STOPPED = "stopped"  # stopped on purpose, or exited 0 with nothing to restart it
    FAILED = "failed"  # exited with an error and its policy does not restart it


@dataclass(frozen=True)
class HealthCheck:
    """How to tell that a running app works; probed every ``interval_s``.

    Failures count only ``grace_s`` after a start; ``retries`` failures in a row make the
    app unhealthy, one success makes it healthy again.
    """

    kind: HealthKind
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    interval_s: float = 10.0
    timeout_s: float = 3.0
    grace_s: float = 10.0
    retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("http", "tcp", "command"):
            raise AppError(f"health check kind {self.kind!r} is not http, tcp or command")
        if self.kind in ("http", "tcp") and (self.port is None or not 0 < self.port < 65536):
            raise AppError(f"a {self.kind} health check needs a port in 1..65535")
        if self.kind == "http" and not self.path.startswith("/"):
            raise AppError(f"health check path {self.path!r} must start with /")
        if self.kind == "http" and any(c in self.path for c in " \r\n"):
            raise AppError("health check path must not contain spaces or line breaks")
        if self.kind == "command" and not self.command:
            raise AppError("a command health check needs a command")
        object.__setattr__(self, "command", tuple(self.command))
        if not (self.interval_s > 0 and self.timeout_s > 0 and self.grace_s >= 0):
            raise AppError("health check interval and timeout must be > 0, grace >= 0")
        if self.retries < 1:
            raise AppError("health check retries must be at least 1")


@dataclass(frozen=True)
class RestartPolicy:
    """When an exited app is started again; delays double from 1 s up to ``max_backoff_s``."""

    policy: RestartMode = "on-failure"
    max_backoff_s: float = 300.0

    def __post_init__(self) -> None:
        if self.policy not in ("always", "on-failure", "never"):
            raise AppError(f"restart policy {self.policy!r} is not always, on-failure or never")
        if self.max_backoff_s <= 0:
            raise AppError("restart max_backoff_s must be > 0")

    def restarts_after(self, returncode: int) -> bool:
        """Whether an exit with ``returncode`` (negative: killed by a signal) restarts."""
        if self.policy == "always":
            return True
        return self.policy == "on-failure" and returncode != 0


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One app as the supervisor runs it. A changed spec (say a new version) is a restart."""

    name: str
    version: str
    command: tuple[str, ...]
    app_dir: Path
    log_dir: Path
    data_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    memory_bytes: int | None = None
    cpu: float | None = None
    network: bool = False
    health: HealthCheck | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    # The Unix socket the app emits events on (``roost.agent.appevents``), if any.
    events_socket: Path | None = None
    # Directories a sandbox shows empty (the agent's data dir); what the app may see
    # inside them (its app dir, data dir, events socket) is bound back.
    hidden: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise AppError(f"app name {self.name!r} must be lowercase letters, digits, . _ -")
        if not self.version:
            raise AppError(f"app {self.name}: version must not be empty")
        if not self.command or not all(self.command):
            raise AppError(f"app {self.name}: command must be non-empty strings")
        object.__setattr__(self, "command", tuple(self.command))
        for label, path in (("app_dir", self.app_dir), ("log_dir", self.log_dir)):
            if not Path(path).is_absolute():
                raise AppError(f"app {self.name}: {label} must be an absolute path")
        if self.data_dir is not None and not Path(self.data_dir).is_absolute():
            raise AppError(f"app {self.name}: data_dir must be an absolute path")
        if self.events_socket is not None and not Path(self.events_socket).is_absolute():
            raise AppError(f"app {self.name}: events_socket must be an absolute path")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not all(Path(p).is_absolute() for p in self.hidden):
            raise AppError(f"app {self.name}: hidden paths must be absolute")
        if self.memory_bytes is not None and self.memory_bytes < 1 << 20:
            raise AppError(f"app {self.name}: memory_bytes must be at least 1 MiB")
        if self.cpu is not None and not 0.01 <= self.cpu <= 1024:
            raise AppError(f"app {self.name}: cpu must be between 0.01 and 1024 cores")
        if any("=" in k or "\0" in k + v or not k for k, v in self.env.items()):
            raise AppError(f"app {self.name}: env names must be non-empty, without = or NUL")
        if self.health is not None and self.health.kind != "command" and not self.network:
            # Without network the app gets its own loopback: no probe from outside reaches it.
            raise AppError(f"app {self.name}: a {self.health.kind} health check needs network=True")
        # Frozen means frozen: a caller's dict changing later must not change the spec.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def __hash__(self) -> int:
        return hash((self.name, self.version, self.command))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunSpec):
            return NotImplemented
        return _key(self) == _key(other)


def _key(spec: RunSpec) -> tuple[object, ...]:
    return (
        spec.name,
        spec.version,
        spec.command,
        spec.app_dir,
        spec.log_dir,
        spec.data_dir,
        sorted(spec.env.items()),
        spec.memory_bytes,
        spec.cpu,
        spec.network,
        spec.health,
        spec.restart,
        spec.events_socket,
        spec.hidden,
    )


@dataclass(frozen=True)
class AppStatus:
    """What ``Supervisor.states()`` says about one app."""

    state: AppState
    version: str
    pid: int | None = None
    isolation: str = ""
    restarts: int = 0
    last_exit: int | None = None
    healthy: bool | None = None  # None: no health check, or none has counted yet
