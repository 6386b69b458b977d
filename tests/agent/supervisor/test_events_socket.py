"""An app's events socket in its sandbox, for real: its own socket reachable, no other's,
nothing else of the agent's data dir visible; and the launch plan that does it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.agent.appevents import AppEvents
from roost.agent.outbox import Outbox
from roost.agent.supervisor import AppState, Capabilities, RestartPolicy, Supervisor
from roost.agent.supervisor.isolation import plan_launch
from roost.agent.supervisor.spec import RunSpec
from roost.errors import AppError
from roost.settings import AgentSettings

from .conftest import QUICK, py_spec, until

# Run inside the sandbox: emit on its own socket, try the other app's and the agent's key.
PROBE = """
import json, os, socket, sys
def talk(path, line):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(line)
        return json.loads(s.makefile().readline())
    except OSError as err:
        return type(err).__name__
    finally:
        s.close()
own = talk(os.environ["ROOST_EVENTS_SOCKET"],
           b'{"type": "home.probe", "id": "p-1", "source": "roost://devices/x/apps/other"}\\n')
other = talk(os.environ["OTHER_SOCKET"], b'{"type": "home.probe", "id": "p-2"}\\n')
try:
    open(os.environ["AGENT_KEY"]).read()
    key = "read"
except OSError as err:
    key = type(err).__name__
with open(os.path.join(os.environ["ROOST_DATA_DIR"], "kept"), "w") as f:
    f.write("x")
print(json.dumps({"own": own, "other": other, "key": key}), flush=True)
"""


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp: the sandbox's private /tmp would hide one in there anyway,
    and a device's data dir is not in /tmp."""
    path = Path(tempfile.mkdtemp(prefix="roost-test-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


async def test_a_sandboxed_app_reaches_its_own_socket_and_nothing_else(
    outside_tmp: Path, bwrap_caps: Capabilities
) -> None:
    agent_dir = outside_tmp / "agent"
    key = agent_dir / "device.key"
    key.parent.mkdir()
    key.write_text("secret")
    settings = AgentSettings.load(env={}, data_dir=agent_dir)
    async with AppEvents(settings, lambda: None) as events:
        await events.serve(["probe", "other"])
        data_dir = agent_dir / "apps" / "probe" / "data"
        data_dir.mkdir(parents=True)
        env = {"OTHER_SOCKET": str(events.path("other")), "AGENT_KEY": str(key)}
        spec = py_spec(
            agent_dir,
            "probe",
            PROBE,
            restart=RestartPolicy("never"),
            data_dir=data_dir,
            env=env,
            events_socket=events.path("probe"),
            hidden=(agent_dir,),
        )
        async with Supervisor(capabilities=bwrap_caps, settings=QUICK) as sup:
            await sup.apply({"probe": spec})
            await until(lambda: sup.states()["probe"].state in (AppState.STOPPED, AppState.FAILED))
            assert sup.states()["probe"].isolation.startswith("bwrap")
            seen = json.loads(sup.tail("probe", 1)[0])
    assert seen == {
        "own": {"ok": True, "id": "p-1"},
        "other": "FileNotFoundError",
        "key": "FileNotFoundError",
    }
    assert (data_dir / "kept").read_text() == "x", "the app's own data dir stays writable"
    outbox = Outbox(agent_dir / "agent.db")
    try:
        stored = [p.body["event"] for p in outbox.due(0.0, 10.0, 100)]
    finally:
        outbox.close()
    assert [(e["id"], e["source"]) for e in stored] == [("p-1", "apps/probe")]


def _spec(**kw: object) -> RunSpec:
    args: dict[str, object] = {
        "name": "web",
        "version": "1",
        "command": ("/app/run",),
        "app_dir": Path("/agent/apps/web/versions/1"),
        "log_dir": Path("/agent/app-logs"),
        "data_dir": Path("/agent/apps/web/data"),
        "env": {"ROOST_EVENTS_SOCKET": "/elsewhere.sock"},
        "events_socket": Path("/agent/run/apps/web/events.sock"),
        "hidden": [Path("/agent")],
    }
    args.update(kw)
    return RunSpec(**args)  # type: ignore[arg-type]


def test_the_plan_hides_the_agent_dir_and_binds_back_the_socket_directory() -> None:
    launch = plan_launch(_spec(), Capabilities(bwrap="/usr/bin/bwrap"))
    argv = list(launch.argv)
    hidden = argv.index("/agent")
    assert argv[hidden - 1] == "--tmpfs"
    socket_dir = argv.index("/agent/run/apps/web")
    assert argv[socket_dir - 1 : socket_dir + 2] == [
        "--ro-bind",
        "/agent/run/apps/web",
        "/agent/run/apps/web",
    ]
    # The app's own dirs and socket are bound back after the agent's dir is hidden.
    assert hidden < argv.index("/agent/apps/web/versions/1") < socket_dir
    assert hidden < argv.index("/agent/apps/web/data")
    # The app's manifest cannot point the SDK at another socket.
    assert launch.env["ROOST_EVENTS_SOCKET"] == "/agent/run/apps/web/events.sock"


def test_without_a_socket_the_app_gets_none_and_a_plain_process_hides_nothing() -> None:
    launch = plan_launch(_spec(events_socket=None, env={}), Capabilities(bwrap="bwrap"))
    assert "ROOST_EVENTS_SOCKET" not in launch.env
    assert "/agent/run/apps/web" not in launch.argv
    plain = plan_launch(_spec(), Capabilities())
    assert plain.argv == ("/app/run",)
    assert plain.env["ROOST_EVENTS_SOCKET"] == "/agent/run/apps/web/events.sock"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("events_socket", Path("run/events.sock"), "events_socket must be an absolute path"),
        ("hidden", (Path("agent"),), "hidden paths must be absolute"),
    ],
)
def test_socket_and_hidden_paths_must_be_absolute(field: str, value: object, message: str) -> None:
    with pytest.raises(AppError, match=message):
        _spec(**{field: value})


def test_a_new_socket_or_hidden_dir_is_a_new_spec() -> None:
    assert _spec() == _spec(hidden=(Path("/agent"),))
    assert _spec() != _spec(events_socket=Path("/agent/run/apps/web2/events.sock"))
    assert _spec() != _spec(hidden=())
