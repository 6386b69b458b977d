"""Settings: defaults, then the file, then ROOST_* variables, then overrides; all checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from roost.errors import ConfigError
from roost.settings import AgentSettings, HubSettings, default_data_dir

NO_ENV: dict[str, str] = {}


@pytest.fixture
def toml(tmp_path: Path) -> Any:
    def write(text: str) -> Path:
        path = tmp_path / "settings.toml"
        path.write_text(text)
        return path

    return write


# --- defaults -------------------------------------------------------------------------


def test_hub_defaults() -> None:
    hub = HubSettings.load(env=NO_ENV)
    assert hub == HubSettings()
    assert hub.data_dir == default_data_dir("hub")
    assert hub.listen_port == 7443
    assert hub.mqtt_port == 8883
    assert hub.external_broker == ""
    assert hub.max_payload_bytes == 64 * 1024
    assert hub.database == f"sqlite:///{hub.data_dir / 'roost.db'}"


def test_agent_defaults() -> None:
    agent = AgentSettings.load(env=NO_ENV)
    assert agent == AgentSettings()
    assert agent.data_dir == default_data_dir("agent")
    assert agent.data_dir != default_data_dir("hub")
    assert agent.renew_at_fraction == pytest.approx(1 / 3)


@pytest.mark.parametrize("cls", [HubSettings, AgentSettings])
def test_defaults_are_within_bounds(cls: type[Any]) -> None:
    settings = cls()
    for name, (low, high) in cls._bounds.items():
        assert low <= getattr(settings, name) <= high, name


@pytest.mark.parametrize("cls", [HubSettings, AgentSettings])
def test_bounds_name_real_fields(cls: type[Any]) -> None:
    names = {field.name for field in dataclasses.fields(cls)}
    assert set(cls._bounds) <= names


def test_database_url_wins_over_sqlite() -> None:
    url = "postgresql://roost@db/roost"
    assert HubSettings.load(env=NO_ENV, database_url=url).database == url


def test_settings_are_frozen() -> None:
    hub = HubSettings.load(env=NO_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hub.listen_port = 1  # type: ignore[misc]


# --- environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "field", "value"),
    [
        ("ROOST_LISTEN_PORT", "9000", "listen_port", 9000),
        ("ROOST_LISTEN_PORT", " 9000 ", "listen_port", 9000),
        ("ROOST_HEARTBEAT_INTERVAL_S", "2.5", "heartbeat_interval_s", 2.5),
        ("ROOST_HEARTBEAT_INTERVAL_S", "2", "heartbeat_interval_s", 2.0),
        ("ROOST_PUBLIC_HOST", "hub.example.org", "public_host", "hub.example.org"),
        ("ROOST_DATA_DIR", "/srv/roost", "data_dir", Path("/srv/roost")),
        ("ROOST_DATA_DIR", "~/roost", "data_dir", Path("~/roost").expanduser()),
        ("ROOST_DATABASE_URL", "postgresql://x@y/z", "database_url", "postgresql://x@y/z"),
        ("ROOST_EXTERNAL_BROKER", "", "external_broker", ""),
    ],
)
def test_environment_overrides(variable: str, raw: str, field: str, value: Any) -> None:
    hub = HubSettings.load(env={variable: raw})
    assert getattr(hub, field) == value
    assert type(getattr(hub, field)) is type(value)


def test_environment_is_read_from_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_KEEPALIVE_S", "45")
    assert AgentSettings.load().keepalive_s == 45


def test_unrelated_variables_are_ignored() -> None:
    env = {"ROOST_NO_SUCH_THING": "1", "LISTEN_PORT": "1", "roost_listen_port": "1"}
    assert HubSettings.load(env=env) == HubSettings()


def test_agent_and_hub_read_their_own_fields() -> None:
    env = {"ROOST_LISTEN_PORT": "9000", "ROOST_KEEPALIVE_S": "10"}
    assert HubSettings.load(env=env).listen_port == 9000
    assert AgentSettings.load(env=env).keepalive_s == 10


# --- file -----------------------------------------------------------------------------


def test_file_values(toml: Any) -> None:
    path = toml(
        'listen_port = 8000\nheartbeat_interval_s = 5\npublic_host = "hub.lan"\n'
        'data_dir = "/var/lib/roost"\n'
    )
    hub = HubSettings.load(file=path, env=NO_ENV)
    assert hub.listen_port == 8000
    assert hub.heartbeat_interval_s == 5.0
    assert isinstance(hub.heartbeat_interval_s, float)
    assert hub.public_host == "hub.lan"
    assert hub.data_dir == Path("/var/lib/roost")


def test_file_named_by_the_environment(toml: Any) -> None:
    path = toml("listen_port = 8001\n")
    hub = HubSettings.load(env={"ROOST_SETTINGS_FILE": str(path)})
    assert hub.listen_port == 8001


def test_explicit_file_wins_over_the_environments(toml: Any, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("listen_port = 1111\n")
    path = toml("listen_port = 2222\n")
    assert HubSettings.load(file=path, env={"ROOST_SETTINGS_FILE": str(other)}).listen_port == 2222


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    # The default file in the data dir is optional.
    assert HubSettings.load(file=tmp_path / "absent.toml", env=NO_ENV) == HubSettings()


def test_precedence_default_file_env_override(toml: Any) -> None:
    path = toml("listen_port = 1001\nmqtt_port = 1002\npublic_host = 'from-file'\n")
    env = {"ROOST_MQTT_PORT": "2002", "ROOST_PUBLIC_HOST": "from-env"}
    hub = HubSettings.load(file=path, env=env, public_host="from-flag", log_level=None)
    assert hub.listen_port == 1001  # file over default
    assert hub.mqtt_port == 2002  # env over file
    assert hub.public_host == "from-flag"  # override over env
    assert hub.log_level == "info"  # None override: not given
    assert hub.command_timeout_s == HubSettings().command_timeout_s  # untouched default


def test_overrides_are_coerced() -> None:
    hub = HubSettings.load(env=NO_ENV, listen_port="8443", data_dir="/tmp/x")
    assert hub.listen_port == 8443
    assert hub.data_dir == Path("/tmp/x")


# --- bad values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("ROOST_LISTEN_PORT", "http"),
        ("ROOST_LISTEN_PORT", "1.5"),
        ("ROOST_LISTEN_PORT", ""),
        ("ROOST_HEARTBEAT_INTERVAL_S", "fast"),
        ("ROOST_HEARTBEAT_INTERVAL_S", "1s"),
    ],
)
def test_bad_environment_values_raise(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable.removeprefix("ROOST_").lower()):
        HubSettings.load(env={variable: raw})


@pytest.mark.parametrize(
    "text",
    [
        'listen_port = "http"',
        "heartbeat_interval_s = 'often'",
        "listen_port = [1, 2]",
        "heartbeat_interval_s = {a = 1}",
    ],
)
def test_bad_file_values_raise(toml: Any, text: str) -> None:
    with pytest.raises(ConfigError):
        HubSettings.load(file=toml(text + "\n"), env=NO_ENV)


@pytest.mark.parametrize("text", ["listen_port = ", "[[[", "a = 1\na = 2", "listen_port = 08"])
def test_broken_toml_raises(toml: Any, text: str) -> None:
    with pytest.raises(ConfigError, match="settings file"):
        HubSettings.load(file=toml(text + "\n"), env=NO_ENV)


@pytest.mark.parametrize("key", ["no_such_setting", "keepalive_s", "_bounds", "ListenPort"])
def test_unknown_key_in_file_raises(toml: Any, key: str) -> None:
    # keepalive_s is an agent setting, not a hub one.
    with pytest.raises(ConfigError, match="unknown setting"):
        HubSettings.load(file=toml(f"{key} = 1\n"), env=NO_ENV)


def test_tables_in_file_are_unknown_keys(toml: Any) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'hub'"):
        HubSettings.load(file=toml("[hub]\nlisten_port = 1\n"), env=NO_ENV)


# (settings, field, lowest allowed, highest allowed, just below, just above)
BOUNDED = [
    (HubSettings, "listen_port", 0, 65535, -1, 65536),
    (HubSettings, "mqtt_port", 0, 65535, -1, 65536),
    (HubSettings, "heartbeat_interval_s", 0.1, 24 * 3600, 0.099, 24 * 3600 + 1),
    (HubSettings, "offline_after_intervals", 1.5, 100, 1.49, 100.01),
    (HubSettings, "max_payload_bytes", 256, 16 * 1024 * 1024, 255, 16 * 1024 * 1024 + 1),
    (HubSettings, "join_token_ttl_s", 1, 365 * 24 * 3600, 0, 365 * 24 * 3600 + 1),
    (HubSettings, "command_timeout_s", 0.1, 3600, 0, 3600.5),
    (AgentSettings, "reconnect_min_s", 0.01, 60, 0.0, 61),
    (AgentSettings, "renew_at_fraction", 0.05, 0.9, 0.04, 0.91),
    (AgentSettings, "outbox_max_messages", 10, 10_000_000, 9, 10_000_001),
]


@pytest.mark.parametrize(("cls", "field", "low", "high", "below", "above"), BOUNDED)
def test_bounds(
    cls: type[Any], field: str, low: float, high: float, below: float, above: float
) -> None:
    assert getattr(cls.load(env=NO_ENV, **{field: low}), field) == low
    assert getattr(cls.load(env=NO_ENV, **{field: high}), field) == high
    for value in (below, above):
        with pytest.raises(ConfigError, match=f"{field}=.* is outside"):
            cls.load(env=NO_ENV, **{field: value})


def test_out_of_bounds_from_env_and_file(toml: Any) -> None:
    with pytest.raises(ConfigError, match="listen_port"):
        HubSettings.load(env={"ROOST_LISTEN_PORT": "70000"})
    with pytest.raises(ConfigError, match="max_payload_bytes"):
        HubSettings.load(file=toml("max_payload_bytes = 10\n"), env=NO_ENV)
    with pytest.raises(ConfigError, match="heartbeat_interval_s"):
        HubSettings.load(env={"ROOST_HEARTBEAT_INTERVAL_S": "nan"})


def test_config_errors_answer_400() -> None:
    with pytest.raises(ConfigError) as caught:
        HubSettings.load(env={"ROOST_LISTEN_PORT": "x"})
    assert caught.value.status == 400


# Bugs in roost.settings, kept here until they are fixed (strict: a fix makes these
# fail, and the marker should then go).


def test_unknown_override_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        HubSettings.load(env=NO_ENV, no_such_setting=1)


@pytest.mark.parametrize("text", ["listen_port = true", "listen_port = 80.9"])
def test_file_int_refuses_bools_and_fractions(toml: Any, text: str) -> None:
    with pytest.raises(ConfigError):
        HubSettings.load(file=toml(text + "\n"), env=NO_ENV)
