"""App manifests: the ``roost.toml`` at the root of every app folder and bundle.

An app is ``kind = "app"``: a process the agent runs with ``command``, limited by
``[resources]``, watched by ``[health]`` and restarted by ``[restart]``. A system update
is ``kind = "system"``: no process, only ``[install] command``, which the device's
configured installer runs. The agent's own update is ``kind = "agent"``, named
``roost-agent``: the bundle carries the ``roost`` Python package (``roost/``, whose
``__version__`` is the manifest's version) and ``[agent] python``, the oldest Python it
runs on; no process, no health check, no resources (``roost.agent.selfupdate``).

Pure: ``Manifest.from_toml`` and ``Manifest.from_dict`` take text or data and return a
frozen value; ``Manifest.load`` is the only function that reads a file. Every value is
validated on construction, so a ``Manifest`` that exists is a valid one. Every refusal is
one ``BundleError`` line that names the field at fault by its dotted path, e.g.
``roost.toml: resources.memory: '12Q' is not a size like 64M or 1G``. Unknown keys are
refused at every level, so a typo never silently falls back to a default.

``SemVer`` is SemVer 2.0.0: ``<``/``>`` follow its precedence (pre-releases before the
release, numeric identifiers below alphanumeric ones, build metadata ignored), while
``==`` compares the whole value, build metadata included.
"""

from __future__ import annotations

import datetime
import math
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from roost.errors import BundleError

MANIFEST_NAME: Final = "roost.toml"
MAX_MANIFEST_BYTES: Final = 64 * 1024
MiB: Final = 1024 * 1024

KINDS: Final = ("app", "system", "agent")
# The one name of kind "agent", and only of it: the agent's own update.
AGENT_NAME: Final = "roost-agent"
RUNTIMES: Final = ("process",)
PROTOCOLS: Final = ("tcp", "udp")
HEALTH_KINDS: Final = ("http", "tcp", "command")
RESTART_POLICIES: Final = ("always", "on-failure", "never")

APP_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_NAME = APP_NAME_RE
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IDENT = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(
    rf"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?(?:\+({_IDENT}(?:\.{_IDENT})*))?"
)
_NUMERIC = re.compile(r"[0-9]+")
_SIZE = re.compile(r"([0-9]+)([KMG])")
_SIZE_UNITS: Final = {"K": 1024, "M": MiB, "G": 1024 * MiB}
_MAX_VERSION_CHARS: Final = 128
_MAX_DESCRIPTION: Final = 500
_MAX_CPU: Final = 64.0
_MIN_MEMORY: Final = 4 * MiB
_MAX_SECONDS: Final = 3600.0
_MAX_RETRIES: Final = 100
_PYTHON = re.compile(r"(3)\.(0|[1-9][0-9]?)")


def _refuse(where: str, problem: str) -> BundleError:
    return BundleError(f"{MANIFEST_NAME}: {where}: {problem}")


def _show(value: object) -> str:
    """A value as a person wrote it in TOML, with its TOML type."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({_toml_type(value)})"


def _toml_type(value: object) -> str:
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime.date, "datetime"),
        (datetime.time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


# -- SemVer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemVer:
    """A SemVer 2.0.0 version; ordered by precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        text = str(self)
        numbers = (self.major, self.minor, self.patch)
        if (
            any(isinstance(n, bool) or not isinstance(n, int) for n in numbers)
            or not _SEMVER.fullmatch(text)
            or len(text) > _MAX_VERSION_CHARS
        ):
            raise _refuse("version", f"{text!r} is not a semantic version like 1.2.3")
        for ident in self.prerelease:
            if len(ident) > 1 and _NUMERIC.fullmatch(ident) and ident.startswith("0"):
                raise _refuse(
                    "version", f"{text!r}: pre-release number {ident!r} has a leading zero"
                )

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """``1.2.3``, ``1.2.3-rc.1``, ``1.2.3+build.7``; anything else is refused."""
        match = _SEMVER.fullmatch(text)
        if match is None:
            raise _refuse("version", f"{text!r} is not a semantic version like 1.2.3 or 1.2.3-rc.1")
        return cls(
            int(match[1]),
            int(match[2]),
            int(match[3]),
            tuple(match[4].split(".")) if match[4] else (),
            tuple(match[5].split(".")) if match[5] else (),
        )

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    @property
    def precedence(self) -> tuple[object, ...]:
        """The sort key of SemVer §11: a release sorts after its pre-releases."""
        idents = tuple(
            (0, int(i), "") if _NUMERIC.fullmatch(i) else (1, 0, i) for i in self.prerelease
        )
        return (self.major, self.minor, self.patch, not self.prerelease, idents)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self.precedence < other.precedence

    def __le__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self.precedence <= other.precedence

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self.precedence > other.precedence

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self.precedence >= other.precedence


# -- sizes and checks --------------------------------------------------------------------


def parse_size(text: object, where: str = "resources.memory") -> int:
    """``"64M"``, ``"1G"``, ``"512K"`` (powers of 1024) or a number of bytes."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise _refuse(where, f"expected a size like 64M or 1G, got {_show(text)}")
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if match is None:
        raise _refuse(where, f"{text!r} is not a size like 64M or 1G")
    return int(match[1]) * _SIZE_UNITS[match[2]]


def _check_seconds(where: str, value: float, *, zero_ok: bool = False) -> None:
    low_ok = value >= 0 if zero_ok else value > 0
    if not (math.isfinite(value) and low_ok and value <= _MAX_SECONDS):
        bound = "0" if zero_ok else "more than 0"
        raise _refuse(where, f"{value} seconds is not {bound} to {_MAX_SECONDS:g}")


def _check_command(where: str, command: tuple[str, ...]) -> None:
    if not command or not command[0]:
        raise _refuse(where, "must not be empty")
    for word in command:
        if "\0" in word:
            raise _refuse(where, f"{word!r} contains a NUL character")


def _check_port(where: str, port: int) -> None:
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise _refuse(where, f"{port} is not a port in 1-65535")


# -- sections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What the app may use: ``cpu`` in cores, ``memory`` in bytes."""

    cpu: float = 1.0
    memory: int = 256 * MiB

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpu) and 0 < self.cpu <= _MAX_CPU):
            raise _refuse("resources.cpu", f"{self.cpu} is not more than 0 to 64 cores")
        if self.memory < _MIN_MEMORY:
            raise _refuse("resources.memory", f"{self.memory} bytes is less than 4M")


@dataclass(frozen=True)
class Port:
    """A port the app listens on."""

    port: int
    protocol: str = "tcp"

    def __post_init__(self) -> None:
        _check_port("ports.port", self.port)
        if self.protocol not in PROTOCOLS:
            raise _refuse("ports.protocol", f"{self.protocol!r} is not tcp or udp")


@dataclass(frozen=True)
class Health:
    """How the agent knows the app is well; ``grace`` seconds pass before failures count."""

    kind: str
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    interval: float = 10.0
    timeout: float = 3.0
    grace: float = 10.0
    retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in HEALTH_KINDS:
            raise _refuse("health.kind", f"{self.kind!r} is not http, tcp or command")
        if self.kind == "command":
            _check_command("health.command", self.command)
            if self.port is not None:
                raise _refuse("health.port", "only for kind http or tcp")
        else:
            if self.port is None:
                raise _refuse("health.port", f"required for kind {self.kind}")
            _check_port("health.port", self.port)
            if self.command:
                raise _refuse("health.command", "only for kind command")
        if not self.path.startswith("/") or not self.path.isprintable() or " " in self.path:
            raise _refuse("health.path", f"{self.path!r} is not a URL path like /healthz")
        _check_seconds("health.interval", self.interval)
        _check_seconds("health.timeout", self.timeout)
        if self.timeout > self.interval:
            raise _refuse("health.timeout", f"{self.timeout} is longer than the interval")
        _check_seconds("health.grace", self.grace, zero_ok=True)
        if isinstance(self.retries, bool) or not 1 <= self.retries <= _MAX_RETRIES:
            raise _refuse("health.retries", f"{self.retries} is not 1 to {_MAX_RETRIES}")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind}
        if self.kind == "http":
            out["path"] = self.path
        if self.port is not None:
            out["port"] = self.port
        if self.command:
            out["command"] = list(self.command)
        out |= {
            "interval": self.interval,
            "timeout": self.timeout,
            "grace": self.grace,
            "retries": self.retries,
        }
        return out


@dataclass(frozen=True)
class Restart:
    """When the agent restarts the app, backing off up to ``max_backoff`` seconds."""

    policy: str = "on-failure"
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.policy not in RESTART_POLICIES:
            raise _refuse("restart.policy", f"{self.policy!r} is not always, on-failure or never")
        _check_seconds("restart.max_backoff", self.max_backoff)


@dataclass(frozen=True)
class Data:
    """Whether the app's data dir is kept across versions."""

    persistent: bool = True


@dataclass(frozen=True)
class Install:
    """How a system update is installed: ``command`` for the device's installer."""

    command: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_command("install.command", self.command)


@dataclass(frozen=True)
class AgentNeeds:
    """What a release of the agent itself needs from the device: ``python``, the oldest
    Python (major, minor) its code runs on (it runs on the device's interpreter, with the
    libraries the installed agent has)."""

    python: tuple[int, int] = (3, 11)

    def __post_init__(self) -> None:
        if not _PYTHON.fullmatch(self.python_text):
            raise _refuse("agent.python", f"{self.python_text!r} is not a Python version like 3.11")

    @property
    def python_text(self) -> str:
        return ".".join(map(str, self.python))

    @classmethod
    def parse_python(cls, text: str) -> tuple[int, int]:
        match = _PYTHON.fullmatch(text)
        if match is None:
            raise _refuse("agent.python", f"{text!r} is not a Python version like 3.11")
        return int(match[1]), int(match[2])


# -- the manifest ------------------------------------------------------------------------

_COMMON_KEYS: Final = ("name", "version", "description", "kind", "environment")
_APP_KEYS: Final = (
    *_COMMON_KEYS,
    *("runtime", "command", "resources", "ports", "health", "restart", "network", "data"),
)
_SYSTEM_KEYS: Final = (*_COMMON_KEYS, "install")
_AGENT_KEYS: Final = ("name", "version", "description", "kind", "agent")


@dataclass(frozen=True)
class Manifest:
    """A valid ``roost.toml``; ``environment`` is sorted ``(name, value)`` pairs."""

    name: str
    version: SemVer
    description: str = ""
    kind: str = "app"
    runtime: str | None = "process"
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    resources: Resources = field(default_factory=Resources)
    ports: tuple[Port, ...] = ()
    health: Health | None = None
    restart: Restart = field(default_factory=Restart)
    network: bool = False
    data: Data = field(default_factory=Data)
    install: Install | None = None
    agent: AgentNeeds | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise _refuse(
                "name", f"{self.name!r} is not a lowercase name like my-app (a-z, 0-9, -)"
            )
        if len(self.description) > _MAX_DESCRIPTION:
            raise _refuse("description", f"longer than {_MAX_DESCRIPTION} characters")
        if self.kind not in KINDS:
            raise _refuse("kind", f"{self.kind!r} is not app, system or agent")
        if self.kind == "agent" and self.name != AGENT_NAME:
            raise _refuse("name", f"{self.name!r} must be {AGENT_NAME} for kind agent")
        if self.kind != "agent" and self.name == AGENT_NAME:
            raise _refuse("name", f'{AGENT_NAME!r} is reserved for kind = "agent"')
        names = [name for name, _ in self.environment]
        for name, value in self.environment:
            if not _ENV_NAME.fullmatch(name):
                raise _refuse(f"environment.{name}", "is not a variable name like MY_VAR")
            if "\0" in value:
                raise _refuse(f"environment.{name}", "contains a NUL character")
        if names != sorted(set(names)):
            raise _refuse("environment", "names must be unique and sorted")
        if self.kind == "system":
            self._check_system()
        elif self.kind == "agent":
            self._check_agent()
        else:
            self._check_app()
        if self.agent is not None and self.kind != "agent":
            raise _refuse("agent", 'only for kind = "agent"')

    def _check_system(self) -> None:
        if self.install is None:
            raise _refuse("install.command", "required for kind system")
        for key, value in (
            ("runtime", self.runtime),
            ("command", self.command),
            ("ports", self.ports),
            ("health", self.health),
        ):
            if value:
                raise _refuse(key, "only for kind app; a system update has [install]")

    def _check_agent(self) -> None:
        if self.agent is None:
            raise _refuse("agent", "required for kind agent")
        for key, value in (
            ("runtime", self.runtime),
            ("command", self.command),
            ("environment", self.environment),
            ("ports", self.ports),
            ("health", self.health),
            ("install", self.install),
        ):
            if value:
                raise _refuse(key, _NOT_FOR_AGENT)

    def _check_app(self) -> None:
        if self.install is not None:
            raise _refuse("install", "only for kind system")
        if self.runtime not in RUNTIMES:
            raise _refuse("runtime", f"{self.runtime!r} is not process")
        _check_command("command", self.command)
        seen: set[tuple[int, str]] = set()
        for index, port in enumerate(self.ports):
            key = (port.port, port.protocol)
            if key in seen:
                raise _refuse(f"ports[{index}]", f"{port.port}/{port.protocol} is declared twice")
            seen.add(key)
        if self.health is not None and self.health.port is not None:
            tcp = [p.port for p in self.ports if p.protocol == "tcp"]
            if self.health.port not in tcp:
                declared = ", ".join(map(str, tcp)) or "none"
                raise _refuse(
                    "health.port",
                    f"{self.health.port} is not one of the declared tcp ports ({declared})",
                )

    @property
    def env(self) -> dict[str, str]:
        """The environment as a fresh dict."""
        return dict(self.environment)

    @classmethod
    def from_toml(cls, text: str) -> Manifest:
        """Parse and validate the text of a ``roost.toml``."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise BundleError(f"{MANIFEST_NAME}: not valid TOML: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read ``<directory>/roost.toml``."""
        path = directory / MANIFEST_NAME
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError as err:
            raise BundleError(f"{MANIFEST_NAME}: missing in {directory}") from err
        except OSError as err:
            raise BundleError(f"{MANIFEST_NAME}: cannot read {path}: {err.strerror}") from err
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse a ``roost.toml`` as read from a file or a bundle member."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{MANIFEST_NAME}: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BundleError(f"{MANIFEST_NAME}: not UTF-8 text") from err
        return cls.from_toml(text)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Manifest:
        """Validate a manifest given as data (parsed TOML, or ``to_dict`` output)."""
        return _parse(data)

    def to_dict(self) -> dict[str, object]:
        """JSON-able, every default filled in; ``from_dict`` gives this manifest back."""
        out: dict[str, object] = {
            "name": self.name,
            "version": str(self.version),
            "description": self.description,
            "kind": self.kind,
            "environment": dict(self.environment),
        }
        if self.install is not None:
            return out | {"install": {"command": list(self.install.command)}}
        if self.agent is not None:
            del out["environment"]
            return out | {"agent": {"python": self.agent.python_text}}
        out |= {
            "runtime": self.runtime,
            "command": list(self.command),
            "resources": {"cpu": self.resources.cpu, "memory": self.resources.memory},
            "ports": [{"port": p.port, "protocol": p.protocol} for p in self.ports],
            "restart": {"policy": self.restart.policy, "max_backoff": self.restart.max_backoff},
            "network": self.network,
            "data": {"persistent": self.data.persistent},
        }
        if self.health is not None:
            out["health"] = self.health.to_dict()
        return out


# -- parsing -----------------------------------------------------------------------------

_MISSING: Final = object()


class _Table:
    """One TOML table being read: each value type-checked, unknown keys refused."""

    def __init__(self, raw: object, path: str, known: Iterable[str]) -> None:
        if not isinstance(raw, Mapping):
            raise _refuse(path, f"expected a table, got {_show(raw)}")
        allowed = tuple(known)
        for key in raw:
            if key not in allowed:
                raise _refuse(self._join(path, key), f"unknown key (known: {', '.join(allowed)})")
        self.raw: Mapping[str, object] = raw
        self.path = path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def at(self, key: str) -> str:
        return self._join(self.path, key)

    def _get(self, key: str, default: object, expected: str) -> object:
        value = self.raw.get(key, default)
        if value is _MISSING:
            raise _refuse(self.at(key), f"required ({expected})")
        return value

    def text(self, key: str, default: object = _MISSING) -> str:
        value = self._get(key, default, "a string")
        if not isinstance(value, str):
            raise _refuse(self.at(key), f"expected a string, got {_show(value)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default, "true or false")
        if not isinstance(value, bool):
            raise _refuse(self.at(key), f"expected true or false, got {_show(value)}")
        return value

    def integer(self, key: str, default: object = _MISSING) -> int:
        value = self._get(key, default, "an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(self.at(key), f"expected an integer, got {_show(value)}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key, default, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(self.at(key), f"expected a number, got {_show(value)}")
        return float(value)

    def words(self, key: str, default: object = _MISSING) -> tuple[str, ...]:
        """A command: an array of strings, or one string split like a shell would."""
        value = self._get(key, default, "an array of strings")
        where = self.at(key)
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as err:
                raise _refuse(where, f"cannot be split into words: {err}") from err
        if not isinstance(value, list | tuple):
            raise _refuse(where, f"expected an array of strings, got {_show(value)}")
        for index, word in enumerate(value):
            if not isinstance(word, str):
                raise _refuse(f"{where}[{index}]", f"expected a string, got {_show(word)}")
        return tuple(value)

    def table(self, key: str, known: Iterable[str]) -> _Table:
        return _Table(self.raw.get(key, {}), self.at(key), known)


_NOT_FOR_AGENT: Final = "not for kind agent: the agent's own update carries the roost package"


def _parse(data: Mapping[str, object]) -> Manifest:
    kind = data.get("kind", "app")
    if kind not in KINDS:
        raise _refuse("kind", f"{kind!r} is not app, system or agent")
    if kind == "agent":
        return _parse_agent(data)
    for key in data:
        if kind == "system" and key in _APP_KEYS and key not in _SYSTEM_KEYS:
            raise _refuse(key, "only for kind app; a system update has [install] command")
        if kind == "app" and key == "install":
            raise _refuse(key, 'only for kind = "system"')
        if key == "agent":
            raise _refuse(key, 'only for kind = "agent"')
    top = _Table(data, "", _APP_KEYS if kind == "app" else _SYSTEM_KEYS)
    name = top.text("name")
    version = SemVer.parse(top.text("version"))
    description = top.text("description", "")
    environment = _parse_environment(top)
    if kind == "system":
        install = top.table("install", ("command",))
        return Manifest(
            name,
            version,
            description,
            kind="system",
            runtime=None,
            environment=environment,
            install=Install(install.words("command")),
        )
    ports = _parse_ports(top)
    return Manifest(
        name,
        version,
        description,
        kind="app",
        runtime=top.text("runtime", "process"),
        command=top.words("command"),
        environment=environment,
        resources=_parse_resources(top.table("resources", ("cpu", "memory"))),
        ports=ports,
        health=_parse_health(top, ports),
        restart=_parse_restart(top.table("restart", ("policy", "max_backoff"))),
        network=top.flag("network", False),
        data=Data(top.table("data", ("persistent",)).flag("persistent", True)),
    )


def _parse_agent(data: Mapping[str, object]) -> Manifest:
    for key in data:
        if key not in _AGENT_KEYS and key in (*_APP_KEYS, *_SYSTEM_KEYS):
            raise _refuse(key, _NOT_FOR_AGENT)
    top = _Table(data, "", _AGENT_KEYS)
    needs = top.table("agent", ("python",))
    python = needs.text("python", AgentNeeds().python_text)
    return Manifest(
        top.text("name"),
        SemVer.parse(top.text("version")),
        top.text("description", ""),
        kind="agent",
        runtime=None,
        agent=AgentNeeds(AgentNeeds.parse_python(python)),
    )


def _parse_environment(top: _Table) -> tuple[tuple[str, str], ...]:
    raw = top.raw.get("environment", {})
    if not isinstance(raw, Mapping):
        raise _refuse("environment", f"expected a table, got {_show(raw)}")
    table = _Table(raw, "environment", raw.keys())
    return tuple(sorted((name, table.text(name)) for name in raw))


def _parse_resources(table: _Table) -> Resources:
    defaults = Resources()
    memory = table.raw.get("memory", defaults.memory)
    return Resources(
        cpu=table.number("cpu", defaults.cpu),
        memory=parse_size(memory, table.at("memory")),
    )


def _parse_ports(top: _Table) -> tuple[Port, ...]:
    raw = top.raw.get("ports", [])
    if not isinstance(raw, list | tuple):
        raise _refuse("ports", f"expected an array of tables, got {_show(raw)}")
    ports = []
    for index, item in enumerate(raw):
        entry = _Table(item, f"ports[{index}]", ("port", "protocol"))
        port = entry.integer("port")
        _check_port(entry.at("port"), port)
        protocol = entry.text("protocol", "tcp")
        if protocol not in PROTOCOLS:
            raise _refuse(entry.at("protocol"), f"{protocol!r} is not tcp or udp")
        if Port(port, protocol) in ports:
            raise _refuse(f"ports[{index}]", f"{port}/{protocol} is declared twice")
        ports.append(Port(port, protocol))
    return tuple(ports)


_HEALTH_KEYS: Final = {
    "http": ("path", "port"),
    "tcp": ("port",),
    "command": ("command",),
}
_HEALTH_COMMON: Final = ("kind", "interval", "timeout", "grace", "retries")


def _parse_health(top: _Table, ports: tuple[Port, ...]) -> Health | None:
    if "health" not in top.raw:
        return None
    table = top.table("health", (*_HEALTH_COMMON, "path", "port", "command"))
    kind = table.text("kind")
    if kind not in HEALTH_KINDS:
        raise _refuse("health.kind", f"{kind!r} is not http, tcp or command")
    for key in table.raw:
        if key not in (*_HEALTH_COMMON, *_HEALTH_KEYS[kind]):
            raise _refuse(f"health.{key}", f"not for kind {kind}")
    defaults = Health(kind="command", command=("true",))
    port: int | None = None
    if kind != "command":
        tcp = [p.port for p in ports if p.protocol == "tcp"]
        if "port" in table.raw:
            port = table.integer("port")
        elif len(tcp) == 1:
            port = tcp[0]
        else:
            raise _refuse("health.port", "required: the app does not declare exactly one tcp port")
    return Health(
        kind=kind,
        port=port,
        path=table.text("path", defaults.path),
        command=table.words("command") if kind == "command" else (),
        interval=table.number("interval", defaults.interval),
        timeout=table.number("timeout", defaults.timeout),
        grace=table.number("grace", defaults.grace),
        retries=table.integer("retries", defaults.retries),
    )


def _parse_restart(table: _Table) -> Restart:
    defaults = Restart()
    return Restart(
        policy=table.text("policy", defaults.policy),
        max_backoff=table.number("max_backoff", defaults.max_backoff),
    )
