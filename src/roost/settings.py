"""The typed settings of the hub and the agent: one loader, read once at start.

Values come, lowest priority first, from the dataclass defaults, a TOML file (the
caller's — the CLI passes ``DATA/settings.toml`` — or ``ROOST_SETTINGS_FILE``; a file
that is not there is no error), environment variables
``ROOST_<FIELD>`` and finally explicit overrides (CLI flags). Every timeout, size limit,
batch size and retry count is a named, bounded field here.

Plain dataclasses and ``tomllib`` rather than pydantic-settings: the agent must stay
small on a router (pydantic alone costs ~13 MB of RSS), and the hub shares the loader.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from roost.errors import ConfigError

ENV_PREFIX = "ROOST_"


def default_data_dir(role: str) -> Path:
    """The per-user data dir for ``role`` ("hub" or "agent")."""
    import platformdirs

    return Path(platformdirs.user_data_dir("roost")) / role


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    """Turn a raw value (a string from the environment, or TOML) into ``kind``."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw is None or raw == "":
            return None
        return _coerce(name, raw, args[0])
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            # TOML gives real booleans and floats; neither is silently an int.
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if kind is Path:
            return Path(str(raw)).expanduser()
        if kind is str:
            return str(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"setting {name}: {raw!r} is not a valid {kind.__name__}") from err
    raise ConfigError(f"setting {name}: unsupported type {kind!r}")  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Shared loader; subclasses only declare fields and their bounds."""

    # (min, max) bounds checked after loading, by field name.
    _bounds: typing.ClassVar[Mapping[str, tuple[float, float]]] = {}

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Self:
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        if file is None and env.get(ENV_PREFIX + "SETTINGS_FILE"):
            file = Path(env[ENV_PREFIX + "SETTINGS_FILE"])
        if file is not None and file.exists():
            import tomllib  # only when there is a file: the agent rarely has one

            try:
                data = tomllib.loads(file.read_text())
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"settings file {file}: {err}") from err
            for key, raw in data.items():
                if key not in hints or key.startswith("_"):
                    raise ConfigError(f"settings file {file}: unknown setting {key!r}")
                values[key] = _coerce(key, raw, hints[key])
        for field in dataclasses.fields(cls):
            raw_env = env.get(ENV_PREFIX + field.name.upper())
            if raw_env is not None:
                values[field.name] = _coerce(field.name, raw_env, hints[field.name])
        for key, raw in overrides.items():
            if key not in hints or key.startswith("_"):
                raise ConfigError(f"unknown setting {key!r}")
            if raw is not None:
                values[key] = _coerce(key, raw, hints[key])
        settings = cls(**values)
        settings._check_bounds()
        return settings

    def _check_bounds(self) -> None:
        for name, (low, high) in self._bounds.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"setting {name}={value} is outside [{low}, {high}]")


@dataclasses.dataclass(frozen=True)
class HubSettings(_Settings):
    """Everything the hub reads at start."""

    data_dir: Path = dataclasses.field(default_factory=lambda: default_data_dir("hub"))
    listen_host: str = "0.0.0.0"
    listen_port: int = 7443
    # The address devices and people use to reach the hub; goes into join tokens.
    public_host: str = ""
    mqtt_port: int = 8883
    # Empty: the hub runs and supervises its own Mosquitto. Else host:port of an external
    # broker that is configured like ours (see docs/broker.md).
    external_broker: str = ""
    mosquitto_bin: str = "mosquitto"
    database_url: str = ""
    device_cert_ttl_s: int = 30 * 24 * 3600
    server_cert_ttl_s: int = 365 * 24 * 3600
    join_token_ttl_s: int = 3600
    heartbeat_interval_s: float = 30.0
    # A device is offline when nothing was heard for this many heartbeat intervals.
    offline_after_intervals: float = 3.0
    heartbeat_flush_s: float = 1.0
    heartbeat_batch_max: int = 5000
    max_payload_bytes: int = 64 * 1024
    max_twin_bytes: int = 16 * 1024
    command_timeout_s: float = 10.0
    command_timeout_max_s: float = 300.0
    request_clock_skew_s: int = 300
    broker_restart_backoff_max_s: float = 30.0
    # Stored events older than this are deleted (checked hourly).
    event_retention_days: float = 30.0
    # Answered or timed-out device commands older than this are deleted (checked hourly).
    command_retention_days: float = 7.0
    # Delivering rules' actions (``roost.rules.delivery``): at most this many at once; a
    # failed try is retried after a random delay up to base * 2^(tries - 1), at most cap
    # ("full jitter"), until max attempts, then kept as a dead letter. The outbox is also
    # looked at every poll interval (actions of other hubs, retries after a restart).
    delivery_concurrency: int = 64
    delivery_max_attempts: int = 12
    delivery_backoff_base_s: float = 1.0
    delivery_backoff_cap_s: float = 3600.0
    delivery_poll_s: float = 0.5
    # The SMTP server for email actions; none set: email actions become dead letters.
    # smtp_security: "starttls" (port 587), "ssl" (port 465) or "none".
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_from: str = ""
    smtp_security: str = "starttls"
    # A CA bundle (PEM) to check the SMTP server's certificate with; empty: the system's.
    smtp_ca_file: str = ""
    smtp_user: str = ""
    smtp_password: str = dataclasses.field(default="", repr=False)
    smtp_timeout_s: float = 30.0
    # The store's repair loop (``roost.storage.upkeep``): it looks every interval for
    # objects with a share known bad, on a device revoked, draining or offline past the
    # grace, or fewer healthy shares than the repair threshold, and rebuilds them, moving
    # at most about ``store_repair_bytes_per_s`` of shares.
    store_repair_interval_s: float = 60.0
    store_repair_grace_s: float = 3600.0
    store_repair_bytes_per_s: float = 20_000_000.0
    # Bytes of objects (their own size, not their shares') a tenant may keep in the store,
    # unless the owner set its own quota (``roost store quota set``); 0: no limit.
    store_tenant_quota_bytes: int = 0
    # Functions on the hub (``roost.functions``): the most a function may ask for, the
    # warm workers kept in all, and whether a function may ask for the network at all.
    function_max_timeout_s: float = 60.0
    function_max_memory_bytes: int = 1024 * 1024 * 1024
    function_max_concurrency: int = 16
    functions_max_workers: int = 32
    functions_allow_network: bool = False
    log_level: str = "info"

    _bounds: typing.ClassVar[Mapping[str, tuple[float, float]]] = {
        "listen_port": (0, 65535),
        "mqtt_port": (0, 65535),
        "device_cert_ttl_s": (10, 10 * 365 * 24 * 3600),
        "join_token_ttl_s": (1, 365 * 24 * 3600),
        "heartbeat_interval_s": (0.1, 24 * 3600),
        "offline_after_intervals": (1.5, 100),
        "heartbeat_flush_s": (0.05, 60),
        "heartbeat_batch_max": (1, 1_000_000),
        "max_payload_bytes": (256, 16 * 1024 * 1024),
        "max_twin_bytes": (64, 1024 * 1024),
        "command_timeout_s": (0.1, 3600),
        "command_timeout_max_s": (1, 24 * 3600),
        "server_cert_ttl_s": (3600, 20 * 365 * 24 * 3600),
        "request_clock_skew_s": (1, 24 * 3600),
        "broker_restart_backoff_max_s": (0.5, 3600),
        "event_retention_days": (0.001, 100 * 365),
        "command_retention_days": (0.001, 100 * 365),
        "delivery_concurrency": (1, 10_000),
        "delivery_max_attempts": (1, 100),
        "delivery_backoff_base_s": (0.001, 3600),
        "delivery_backoff_cap_s": (0.001, 7 * 24 * 3600),
        "delivery_poll_s": (0.01, 60),
        "smtp_port": (1, 65535),
        "smtp_timeout_s": (1, 60),
        "store_repair_interval_s": (0.1, 7 * 24 * 3600),
        "store_repair_grace_s": (0, 365 * 24 * 3600),
        "store_repair_bytes_per_s": (1000, 1e12),
        "store_tenant_quota_bytes": (0, 1 << 60),
        "function_max_timeout_s": (0.1, 3600),
        "function_max_memory_bytes": (64 * 1024 * 1024, 1 << 40),
        "function_max_concurrency": (1, 1000),
        "functions_max_workers": (1, 10_000),
    }

    @property
    def database(self) -> str:
        """The SQLAlchemy URL: ``database_url`` or SQLite in the data dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'roost.db'}"


@dataclasses.dataclass(frozen=True)
class AgentSettings(_Settings):
    """Everything the agent reads at start."""

    data_dir: Path = dataclasses.field(default_factory=lambda: default_data_dir("agent"))
    # Used only until the hub's desired state says otherwise.
    heartbeat_interval_s: float = 30.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    keepalive_s: int = 30
    # Outbox messages the hub has not acknowledged after this long are sent again.
    resend_after_s: float = 10.0
    outbox_max_messages: int = 100_000
    outbox_batch: int = 200
    # Renew the certificate when less than this fraction of its lifetime is left.
    renew_at_fraction: float = 1 / 3
    log_max_bytes: int = 1024 * 1024
    # A new agent version (its own update) must be online within this, or it is rolled back.
    self_update_grace_s: float = 120.0
    # The command that applies a system update (kind "system"), e.g. "rauc install"; the
    # release's [install] command words follow it. Empty: system updates are refused.
    system_installer: str = ""
    system_install_timeout_s: float = 1800.0
    # Events from apps (``roost.agent.appevents``): one event at most this big (keep it
    # under the hub's max_payload_bytes), and per app a sustained rate with a burst, and
    # a number of connections open at once.
    events_max_bytes: int = 32 * 1024
    events_rate_per_s: float = 10.0
    events_burst: int = 100
    events_max_connections: int = 16
    # Disk this device offers the fleet's store (``storage.quota``); 0 offers nothing.
    storage_quota_bytes: int = 0
    # Re-hash every share this often (each wait drawn within ±10 %, the first anywhere in
    # it, so devices do not scrub together); bad ones are reported to the hub.
    storage_scrub_interval_s: float = 24 * 3600.0

    _bounds: typing.ClassVar[Mapping[str, tuple[float, float]]] = {
        "heartbeat_interval_s": (0.1, 24 * 3600),
        "reconnect_min_s": (0.01, 60),
        "reconnect_max_s": (0.1, 3600),
        "resend_after_s": (0.1, 3600),
        "renew_at_fraction": (0.05, 0.9),
        "outbox_max_messages": (10, 10_000_000),
        "outbox_batch": (1, 10_000),
        "keepalive_s": (5, 3600),
        "log_max_bytes": (4096, 1024 * 1024 * 1024),
        "self_update_grace_s": (5, 3600),
        "system_install_timeout_s": (1, 24 * 3600),
        "events_max_bytes": (256, 16 * 1024 * 1024),
        "events_rate_per_s": (0.001, 100_000),
        "events_burst": (1, 1_000_000),
        "events_max_connections": (1, 1024),
        "storage_quota_bytes": (0, 1 << 60),
        "storage_scrub_interval_s": (0.1, 365 * 24 * 3600),
    }
