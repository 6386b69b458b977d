"""Manifests: defaults, round trips, every refusal naming its field, SemVer precedence."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.apps.manifest import (
    AgentNeeds,
    Health,
    Manifest,
    Port,
    Resources,
    Restart,
    SemVer,
    parse_size,
)
from roost.errors import BundleError

BASE: dict[str, object] = {
    "name": "web",
    "version": "1.0.0",
    "command": ["bin/web", "--port", "8080"],
    "ports": [{"port": 8080}],
    "health": {"kind": "http"},
}
DROP = object()


def variant(path: str, value: object) -> dict[str, object]:
    """BASE with the dotted ``path`` set to ``value`` (or removed with ``DROP``)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    table: dict[str, object] = data
    for key in parents:
        table = table.setdefault(key, {})  # type: ignore[assignment]
    if value is DROP:
        del table[last]
    else:
        table[last] = value
    return data


def test_defaults() -> None:
    m = Manifest.from_toml('name = "web"\nversion = "1.0.0"\ncommand = "bin/web --quiet"\n')
    assert m.command == ("bin/web", "--quiet")
    assert (m.description, m.kind, m.runtime) == ("", "app", "process")
    assert m.resources == Resources(cpu=1.0, memory=256 * 1024 * 1024)
    assert m.restart == Restart(policy="on-failure", max_backoff=60.0)
    assert (m.ports, m.health, m.environment, m.install) == ((), None, (), None)
    assert m.network is False
    assert m.data.persistent is True


def test_a_full_manifest() -> None:
    m = Manifest.from_toml(
        """
        name = "web"
        version = "2.1.0-rc.1+sha.5114f85"
        description = "a web app"
        command = ["bin/web", "--port", "8080"]
        network = true
        ports = [{port = 8080}, {port = 5353, protocol = "udp"}]
        [environment]
        PORT = "8080"
        _DEBUG = "1"
        [resources]
        cpu = 0.5
        memory = "64M"
        [health]
        kind = "http"
        path = "/healthz"
        interval = 5
        timeout = 2
        grace = 0
        retries = 5
        [restart]
        policy = "always"
        max_backoff = 30
        [data]
        persistent = false
        """
    )
    assert m.version == SemVer(2, 1, 0, ("rc", "1"), ("sha", "5114f85"))
    assert m.env == {"PORT": "8080", "_DEBUG": "1"}
    assert m.resources == Resources(cpu=0.5, memory=64 * 1024 * 1024)
    assert m.ports == (Port(8080), Port(5353, "udp"))
    assert m.health == Health("http", port=8080, path="/healthz", interval=5, timeout=2,
                              grace=0, retries=5)  # fmt: skip
    assert m.restart == Restart("always", 30)
    assert (m.network, m.data.persistent) == (True, False)


def test_system_update() -> None:
    m = Manifest.from_toml(
        'name = "os"\nversion = "24.4.1"\nkind = "system"\n'
        '[install]\ncommand = "apt-get install -y ./os.deb"\n'
    )
    assert m.install is not None
    assert m.install.command == ("apt-get", "install", "-y", "./os.deb")
    assert (m.runtime, m.command, m.ports, m.health) == (None, (), (), None)
    assert m.to_dict() == {
        "name": "os",
        "version": "24.4.1",
        "description": "",
        "kind": "system",
        "environment": {},
        "install": {"command": ["apt-get", "install", "-y", "./os.deb"]},
    }


@pytest.mark.parametrize(
    "data",
    [
        BASE,
        variant("health", {"kind": "command", "command": "curl -f localhost"}),
        variant("health", {"kind": "tcp", "port": 8080, "grace": 2.5}),
        {"name": "os", "version": "1.0.0", "kind": "system", "install": {"command": ["x"]}},
        {"name": "roost-agent", "version": "0.2.0", "kind": "agent"},
        {"name": "roost-agent", "version": "1.0.0", "kind": "agent", "agent": {"python": "3.12"}},
    ],
)
def test_to_dict_is_json_and_round_trips(data: dict[str, object]) -> None:
    m = Manifest.from_dict(data)
    as_json = json.loads(json.dumps(m.to_dict()))
    assert Manifest.from_dict(as_json) == m


def test_health_port_defaults_to_the_only_tcp_port() -> None:
    m = Manifest.from_dict(variant("health", {"kind": "tcp"}))
    assert m.health is not None
    assert m.health.port == 8080


BAD: list[tuple[str, object, str]] = [
    # name
    ("name", "Web", "name: 'Web' is not a lowercase name like my-app (a-z, 0-9, -)"),
    ("name", "-web", "name: '-web' is not a lowercase name like my-app (a-z, 0-9, -)"),
    ("name", "a" * 64, f"name: {'a' * 64!r} is not a lowercase name like my-app (a-z, 0-9, -)"),
    ("name", 5, "name: expected a string, got 5 (integer)"),
    ("name", DROP, "name: required (a string)"),
    # version
    ("version", "1.0", "version: '1.0' is not a semantic version like 1.2.3 or 1.2.3-rc.1"),
    ("version", "01.0.0", "version: '01.0.0' is not a semantic version like 1.2.3 or 1.2.3-rc.1"),
    ("version", "1.0.0-01", "version: '1.0.0-01': pre-release number '01' has a leading zero"),
    ("version", 1.0, "version: expected a string, got 1.0 (float)"),
    ("version", DROP, "version: required (a string)"),
    # description, kind, runtime
    ("description", "x" * 501, "description: longer than 500 characters"),
    ("description", ["x"], "description: expected a string, got ['x'] (array)"),
    ("kind", "vm", "kind: 'vm' is not app, system or agent"),
    ("runtime", "docker", "runtime: 'docker' is not process"),
    ("runtime", 1, "runtime: expected a string, got 1 (integer)"),
    # command
    ("command", [], "command: must not be empty"),
    ("command", "", "command: must not be empty"),
    ("command", ["bin/web", 1], "command[1]: expected a string, got 1 (integer)"),
    ("command", "bin/web 'x", "command: cannot be split into words: No closing quotation"),
    ("command", 5, "command: expected an array of strings, got 5 (integer)"),
    ("command", ["a\0b"], "command: 'a\\x00b' contains a NUL character"),
    ("command", DROP, "command: required (an array of strings)"),
    # environment
    ("environment", "x", "environment: expected a table, got 'x' (string)"),
    ("environment", {"1X": "a"}, "environment.1X: is not a variable name like MY_VAR"),
    ("environment", {"A-B": "a"}, "environment.A-B: is not a variable name like MY_VAR"),
    ("environment", {"X": 1}, "environment.X: expected a string, got 1 (integer)"),
    # resources
    ("resources", 1, "resources: expected a table, got 1 (integer)"),
    ("resources.cpu", 0, "resources.cpu: 0.0 is not more than 0 to 64 cores"),
    ("resources.cpu", 64.5, "resources.cpu: 64.5 is not more than 0 to 64 cores"),
    ("resources.cpu", float("nan"), "resources.cpu: nan is not more than 0 to 64 cores"),
    ("resources.cpu", "1", "resources.cpu: expected a number, got '1' (string)"),
    ("resources.cpu", True, "resources.cpu: expected a number, got True (boolean)"),
    ("resources.memory", "12Q", "resources.memory: '12Q' is not a size like 64M or 1G"),
    ("resources.memory", "64 M", "resources.memory: '64 M' is not a size like 64M or 1G"),
    ("resources.memory", "1M", "resources.memory: 1048576 bytes is less than 4M"),
    ("resources.memory", 1.5, "resources.memory: expected a size like 64M or 1G, got 1.5 (float)"),
    ("resources.memory", False,
     "resources.memory: expected a size like 64M or 1G, got False (boolean)"),
    ("resources.gpu", 1, "resources.gpu: unknown key"),
    # ports
    ("ports", "8080", "ports: expected an array of tables, got '8080' (string)"),
    ("ports", [8080], "ports[0]: expected a table, got 8080 (integer)"),
    ("ports", [{"port": 0}], "ports[0].port: 0 is not a port in 1-65535"),
    ("ports", [{"port": 8080}, {"port": 65536}], "ports[1].port: 65536 is not a port in 1-65535"),
    ("ports", [{"port": "80"}], "ports[0].port: expected an integer, got '80' (string)"),
    ("ports", [{"protocol": "tcp"}], "ports[0].port: required (an integer)"),
    ("ports", [{"port": 80, "protocol": "sctp"}], "ports[0].protocol: 'sctp' is not tcp or udp"),
    ("ports", [{"port": 80, "host": "x"}], "ports[0].host: unknown key"),
    ("ports", [{"port": 8080}, {"port": 8080}], "ports[1]: 8080/tcp is declared twice"),
    # health
    ("health", "http", "health: expected a table, got 'http' (string)"),
    ("health.kind", "grpc", "health.kind: 'grpc' is not http, tcp or command"),
    ("health.kind", DROP, "health.kind: required (a string)"),
    ("health.port", 9090, "health.port: 9090 is not one of the declared tcp ports (8080)"),
    ("health.port", 0, "health.port: 0 is not a port in 1-65535"),
    ("health.command", ["x"], "health.command: not for kind http"),
    ("health.path", "healthz", "health.path: 'healthz' is not a URL path like /healthz"),
    ("health.interval", 0, "health.interval: 0.0 seconds is not more than 0 to 3600"),
    ("health.interval", "10s", "health.interval: expected a number, got '10s' (string)"),
    ("health.timeout", 20, "health.timeout: 20.0 is longer than the interval"),
    ("health.grace", -1, "health.grace: -1.0 seconds is not 0 to 3600"),
    ("health.retries", 0, "health.retries: 0 is not 1 to 100"),
    ("health.retries", 1.5, "health.retries: expected an integer, got 1.5 (float)"),
    ("health.every", 1, "health.every: unknown key"),
    # restart, network, data
    ("restart.policy", "sometimes",
     "restart.policy: 'sometimes' is not always, on-failure or never"),
    ("restart.max_backoff", 0, "restart.max_backoff: 0.0 seconds is not more than 0 to 3600"),
    ("restart.delay", 1, "restart.delay: unknown key"),
    ("network", "yes", "network: expected true or false, got 'yes' (string)"),
    ("data.persistent", 1, "data.persistent: expected true or false, got 1 (integer)"),
    ("data.path", "/x", "data.path: unknown key"),
    # the top level
    ("colour", "blue", "colour: unknown key"),
    ("install", {"command": ["x"]}, 'install: only for kind = "system"'),
]  # fmt: skip


def check_message(err: BundleError, expected: str) -> None:
    message = str(err)
    if expected.endswith("unknown key"):
        assert message.startswith(f"roost.toml: {expected} (known: ")
    else:
        assert message == f"roost.toml: {expected}"


@pytest.mark.parametrize(("path", "value", "expected"), BAD)
def test_bad_field_is_named(path: str, value: object, expected: str) -> None:
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(variant(path, value))
    check_message(err.value, expected)


def test_health_tables_by_kind() -> None:
    no_tcp = variant("ports", [{"port": 53, "protocol": "udp"}])
    cases = [
        (no_tcp, "health.port: required: the app does not declare exactly one tcp port"),
        (variant("health", {"kind": "command"}), "health.command: required (an array of strings)"),
        (variant("health", {"kind": "tcp", "path": "/"}), "health.path: not for kind tcp"),
        (variant("health", {"kind": "command", "command": "x", "port": 8080}),
         "health.port: not for kind command"),
    ]  # fmt: skip
    for data, expected in cases:
        with pytest.raises(BundleError) as err:
            Manifest.from_dict(data)
        check_message(err.value, expected)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"command": ["x"]}, "command: only for kind app; a system update has [install] command"),
        ({"ports": []}, "ports: only for kind app; a system update has [install] command"),
        ({"install": {}}, "install.command: required (an array of strings)"),
        ({"install": {"command": []}}, "install.command: must not be empty"),
        ({"install": {"command": "x", "as": "root"}}, "install.as: unknown key"),
    ],
)
def test_bad_system_update(extra: dict[str, object], expected: str) -> None:
    data = {"name": "os", "version": "1.0.0", "kind": "system", **extra}
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(data)
    check_message(err.value, expected)


def test_agent_update() -> None:
    m = Manifest.from_toml(
        'name = "roost-agent"\nversion = "0.2.0"\nkind = "agent"\n'
        'description = "the agent, with a fix"\n[agent]\npython = "3.12"\n'
    )
    assert (m.kind, m.name, str(m.version)) == ("agent", "roost-agent", "0.2.0")
    assert m.agent == AgentNeeds(python=(3, 12))
    assert (m.runtime, m.command, m.ports, m.health, m.install) == (None, (), (), None, None)
    assert m.to_dict() == {
        "name": "roost-agent",
        "version": "0.2.0",
        "description": "the agent, with a fix",
        "kind": "agent",
        "agent": {"python": "3.12"},
    }
    default = Manifest.from_dict({"name": "roost-agent", "version": "0.2.0", "kind": "agent"})
    assert default.agent == AgentNeeds(python=(3, 11))


NOT_FOR_AGENT = "not for kind agent: the agent's own update carries the roost package"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"name": "agent"}, "name: 'agent' must be roost-agent for kind agent"),
        ({"command": ["x"]}, f"command: {NOT_FOR_AGENT}"),
        ({"health": {"kind": "tcp", "port": 1}}, f"health: {NOT_FOR_AGENT}"),
        ({"resources": {"memory": "64M"}}, f"resources: {NOT_FOR_AGENT}"),
        ({"environment": {"A": "b"}}, f"environment: {NOT_FOR_AGENT}"),
        ({"install": {"command": ["x"]}}, f"install: {NOT_FOR_AGENT}"),
        ({"runtime": "process"}, f"runtime: {NOT_FOR_AGENT}"),
        ({"agent": {"python": "3"}}, "agent.python: '3' is not a Python version like 3.11"),
        ({"agent": {"python": "2.7"}}, "agent.python: '2.7' is not a Python version like 3.11"),
        ({"agent": {"python": 3.11}}, "agent.python: expected a string, got 3.11 (float)"),
        ({"agent": {"pip": "x"}}, "agent.pip: unknown key (known: python)"),
        ({"entry": "x"}, "entry: unknown key (known: name, version, description, kind, agent)"),
    ],
)
def test_bad_agent_update(extra: dict[str, object], expected: str) -> None:
    data = {"name": "roost-agent", "version": "0.2.0", "kind": "agent", **extra}
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(data)
    check_message(err.value, expected)


OS_NAMED_AGENT = {"name": "roost-agent", "version": "1.0.0", "kind": "system"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (variant("name", "roost-agent"), "name: 'roost-agent' is reserved for kind = \"agent\""),
        (
            {**OS_NAMED_AGENT, "install": {"command": "x"}},
            "name: 'roost-agent' is reserved for kind = \"agent\"",
        ),
        (variant("agent", {"python": "3.11"}), 'agent: only for kind = "agent"'),
    ],
)
def test_only_the_agent_is_roost_agent(data: dict[str, object], expected: str) -> None:
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(data)
    check_message(err.value, expected)


def test_agent_needs_are_validated_when_constructed() -> None:
    with pytest.raises(BundleError) as err:
        AgentNeeds(python=(4, 0))
    check_message(err.value, "agent.python: '4.0' is not a Python version like 3.11")
    with pytest.raises(BundleError) as err:
        Manifest("roost-agent", SemVer.parse("1.0.0"), kind="agent", runtime=None)
    check_message(err.value, "agent: required for kind agent")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'name = "web', "roost.toml: not valid TOML: "),
        (b"name = \xff", "roost.toml: not UTF-8 text"),
        (b"#" * (64 * 1024 + 1), "roost.toml: larger than 65536 bytes"),
    ],
)
def test_unreadable_text(raw: bytes, expected: str) -> None:
    with pytest.raises(BundleError, match="^" + expected.replace(".", r"\.")):
        Manifest.from_bytes(raw)


def test_load(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"roost.toml: missing in {tmp_path}"):
        Manifest.load(tmp_path)
    (tmp_path / "roost.toml").write_text('name = "web"\nversion = "1.0.0"\ncommand = "x"\n')
    assert Manifest.load(tmp_path).name == "web"


def test_values_are_validated_when_constructed() -> None:
    with pytest.raises(BundleError, match=r"resources\.cpu"):
        Resources(cpu=-1)
    with pytest.raises(BundleError, match=r"ports\.port"):
        Port(0)
    with pytest.raises(BundleError, match="command: must not be empty"):
        Manifest("web", SemVer(1, 0, 0))
    with pytest.raises(BundleError, match="environment: names must be unique and sorted"):
        Manifest("web", SemVer(1, 0, 0), command=("x",), environment=(("B", ""), ("A", "")))
    with pytest.raises(BundleError, match="version"):
        SemVer(-1, 0, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512K", 512 * 1024), ("64M", 64 << 20), ("1G", 1 << 30), (5_000_000, 5_000_000)],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


# -- SemVer ------------------------------------------------------------------------------

# SemVer 2.0.0 §11, lowest first.
ORDERED = [
    "0.9.9",
    "1.0.0-0",
    "1.0.0-2",
    "1.0.0-10",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.9.0",
    "1.10.0",
    "1.10.1-a",
    "2.0.0",
    "10.0.0",
]


def test_semver_precedence_table() -> None:
    versions = [SemVer.parse(text) for text in ORDERED]
    for i, low in enumerate(versions):
        for high in versions[i + 1 :]:
            assert low < high, (low, high)
            assert high > low
            assert low <= high
            assert not high <= low
            assert low != high
    shuffled = versions[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == versions


def test_build_metadata_is_ignored_in_precedence_only() -> None:
    a, b = SemVer.parse("1.0.0+a"), SemVer.parse("1.0.0+b.2")
    assert not a < b
    assert not b < a
    assert a <= b
    assert b >= a
    assert a != b
    assert SemVer.parse("1.0.0-rc.1+x") < SemVer.parse("1.0.0")


@pytest.mark.parametrize(
    "text",
    ["1.2.3", "0.0.0", "1.2.3-0", "1.2.3-0a", "1.2.3-a-b.c--d", "1.2.3+001", "1.2.3-rc.1+b.7"],
)
def test_semver_valid(text: str) -> None:
    assert str(SemVer.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    ["1.2", "v1.2.3", "1.2.3-", "1.2.3+", "1.2.3-a..b", "01.2.3", "1.02.3", "1.2.3.4",
     " 1.2.3", "1.2.3\n", "1.2.3-00", "1.2.3-é", "１.2.3", "1.2.3-a_b", "1" * 130 + ".0.0"],
)  # fmt: skip
def test_semver_invalid(text: str) -> None:
    with pytest.raises(BundleError, match="version"):
        SemVer.parse(text)


def test_semver_not_comparable_with_strings() -> None:
    with pytest.raises(TypeError):
        _ = SemVer(1, 0, 0) < "2.0.0"


idents = st.one_of(
    st.integers(0, 10**6).map(str),
    st.from_regex(r"[A-Za-z-][0-9A-Za-z-]{0,5}", fullmatch=True),
)
semvers = st.builds(
    SemVer,
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.lists(idents, max_size=3).map(tuple),
    st.lists(st.from_regex(r"[0-9A-Za-z-]{1,5}", fullmatch=True), max_size=2).map(tuple),
)


@given(semvers)
def test_semver_text_round_trip(version: SemVer) -> None:
    assert SemVer.parse(str(version)) == version


@given(semvers, semvers)
def test_semver_order_is_total_on_precedence(a: SemVer, b: SemVer) -> None:
    assert (a < b) + (a > b) + (a.precedence == b.precedence) == 1
    if not a.prerelease and not b.prerelease:
        assert (a < b) == ((a.major, a.minor, a.patch) < (b.major, b.minor, b.patch))
