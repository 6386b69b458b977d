"""The supervisor with real processes (plain rlimits isolation, fast to start)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest

from roost.agent.supervisor import (
    AppState,
    AppStatus,
    Capabilities,
    RestartPolicy,
    Supervisor,
)

from .conftest import PYTHON, QUICK, alive, py_spec, until

# The test's own interpreter (the venv's, with roost importable) plays the agent.
PYTHON_OF_TESTS = sys.executable

SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
# Starts a grandchild in its own session (escaping the process group) and sleeps.
FORKER = (
    "import subprocess, sys, time, os\n"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
    " start_new_session=True)\n"
    "open(os.environ['PIDS'], 'w').write(str(c.pid))\n"
    "time.sleep(60)\n"
)


def plain() -> Supervisor:
    return Supervisor(capabilities=Capabilities(), settings=QUICK)


async def test_start_replace_remove_and_on_change(tmp_path: Path) -> None:
    seen: list[tuple[str, AppStatus]] = []
    async with Supervisor(
        capabilities=Capabilities(), settings=QUICK, on_change=lambda n, s: seen.append((n, s))
    ) as sup:
        v1 = py_spec(tmp_path, "web", SLEEPER)
        await sup.apply({"web": v1})
        await until(lambda: sup.states()["web"].state is AppState.RUNNING)
        first = sup.states()["web"]
        assert (first.version, first.isolation, first.restarts) == ("1", "rlimits", 0)
        assert first.pid is not None
        assert alive(first.pid)

        await sup.apply({"web": v1})  # the same spec: nothing happens
        assert sup.states()["web"].pid == first.pid

        v2 = py_spec(tmp_path, "web", SLEEPER, version="2")
        await sup.apply({"web": v2})
        await until(lambda: sup.states()["web"].pid not in (None, first.pid))
        assert sup.states()["web"].version == "2"
        assert not alive(first.pid)

        second = sup.states()["web"].pid
        assert second is not None
        await sup.apply({})
        assert sup.states() == {}
        assert not alive(second)
    states = [(n, s.state, s.version) for n, s in seen]
    assert states[0] == ("web", AppState.RUNNING, "1")
    assert ("web", AppState.STOPPED, "1") in states
    assert states[-1] == ("web", AppState.STOPPED, "2")


async def test_stop_all_leaves_no_process(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    sup = plain()
    async with sup:
        spec = py_spec(tmp_path, "forker", FORKER, env={"PIDS": str(pids_file)})
        await sup.apply({"forker": spec})
        await until(lambda: pids_file.exists() and pids_file.read_text() != "")
        main = sup.states()["forker"].pid
        grandchild = int(pids_file.read_text())
        assert main is not None
        assert alive(grandchild)
    assert not alive(main)
    await until(lambda: not alive(grandchild), timeout=3)


async def test_sigterm_is_sent_before_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    async with plain() as sup:
        await sup.apply({"polite": py_spec(tmp_path, "polite", code)})
        await until(lambda: "up" in sup.tail("polite"))
        await sup.stop_all()
    assert (tmp_path / "logs" / "polite.log").read_text().splitlines() == ["up", "bye"]


async def test_crash_restarts_with_backoff_then_crash_loops(tmp_path: Path) -> None:
    async with plain() as sup:
        await sup.apply({"crash": py_spec(tmp_path, "crash", "print('boom'); raise SystemExit(3)")})
        await until(lambda: sup.states()["crash"].state is AppState.CRASH_LOOPING)
        status = sup.states()["crash"]
        assert status.restarts >= 3
        assert status.last_exit == 3
        assert sup.tail("crash", 2) == ["boom", "boom"]


@pytest.mark.parametrize(
    ("mode", "code", "state", "last_exit"),
    [
        ("never", "raise SystemExit(1)", AppState.FAILED, 1),
        ("never", "pass", AppState.STOPPED, 0),
        ("on-failure", "pass", AppState.STOPPED, 0),
        ("on-failure", "import os; os.kill(os.getpid(), 9)", AppState.CRASH_LOOPING, -9),
        ("always", "pass", AppState.CRASH_LOOPING, 0),
    ],
)
async def test_restart_policies(
    tmp_path: Path, mode: str, code: str, state: AppState, last_exit: int
) -> None:
    spec = py_spec(tmp_path, "app", code, restart=RestartPolicy(mode, 0.1))  # type: ignore[arg-type]
    async with plain() as sup:
        await sup.apply({"app": spec})
        await until(lambda: sup.states()["app"].state is state)
        assert sup.states()["app"].last_exit == last_exit
        assert (sup.states()["app"].restarts > 0) == (state is AppState.CRASH_LOOPING)


async def test_apps_are_independent(tmp_path: Path) -> None:
    async with plain() as sup:
        await sup.apply(
            {
                "steady": py_spec(tmp_path, "steady", SLEEPER),
                "crash": py_spec(tmp_path, "crash", "raise SystemExit(1)"),
            }
        )
        await until(lambda: sup.states()["crash"].state is AppState.CRASH_LOOPING)
        steady = sup.states()["steady"]
        assert (steady.state, steady.restarts) == (AppState.RUNNING, 0)
        assert steady.pid is not None
        os.kill(steady.pid, signal.SIGKILL)  # an outside kill is a failure: restarted
        await until(lambda: sup.states()["steady"].restarts == 1)
        assert sup.states()["steady"].last_exit == -9
        await sup.apply({"steady": py_spec(tmp_path, "steady", SLEEPER)})
        assert set(sup.states()) == {"steady"}
        assert sup.states()["steady"].restarts == 1  # untouched by the other's removal


async def test_a_stable_run_ends_crash_looping(tmp_path: Path) -> None:
    # Crashes fast 3 times (counted in a file), then stays up.
    count = tmp_path / "count"
    code = (
        "import pathlib, time, os\n"
        "p = pathlib.Path(os.environ['COUNT'])\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        "if n < 3: raise SystemExit(1)\n"
        "time.sleep(60)\n"
    )
    async with plain() as sup:
        await sup.apply({"app": py_spec(tmp_path, "app", code, env={"COUNT": str(count)})})
        await until(lambda: sup.states()["app"].state is AppState.CRASH_LOOPING)
        await until(lambda: sup.states()["app"].state is AppState.RUNNING)
        assert sup.states()["app"].restarts == 3


async def test_a_missing_command_is_a_failure_in_the_log(tmp_path: Path) -> None:
    spec = py_spec(tmp_path, "ghost", "pass", restart=RestartPolicy("never"))
    spec = dataclasses.replace(spec, command=("/nonexistent/bin",))
    async with plain() as sup:
        await sup.apply({"ghost": spec})
        await until(lambda: sup.states()["ghost"].state is AppState.FAILED)
        assert any("nonexistent" in line for line in sup.tail("ghost"))


async def test_output_is_rotated_and_tailed(tmp_path: Path) -> None:
    code = "for i in range(3000): print(f'line {i:05}')"
    settings = dataclasses.replace(QUICK, log_max_bytes=4096, log_keep=2)
    spec = py_spec(tmp_path, "chatty", code, restart=RestartPolicy("never"))
    async with Supervisor(capabilities=Capabilities(), settings=settings) as sup:
        await sup.apply({"chatty": spec})
        await until(lambda: sup.states()["chatty"].state is AppState.STOPPED)
        await asyncio.sleep(0.1)
        assert sup.tail("chatty", 2) == ["line 02998", "line 02999"]
    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert names == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all(p.stat().st_size <= 4096 for p in (tmp_path / "logs").iterdir())


# A stand-in agent: runs one app under a plain supervisor, says the app's pid, waits.
AGENT = """\
import asyncio, sys
from pathlib import Path
from roost.agent.supervisor import Capabilities, RunSpec, Supervisor

async def main() -> None:
    spec = RunSpec(name="app", version="1", command=(sys.argv[1], "-c", sys.argv[2]),
                   app_dir=Path(sys.argv[3]), log_dir=Path(sys.argv[3]))
    async with Supervisor(capabilities=Capabilities()) as sup:
        await sup.apply({"app": spec})
        while sup.states()["app"].pid is None:
            await asyncio.sleep(0.01)
        print(sup.states()["app"].pid, flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_an_app_dies_with_an_agent_killed_outright(tmp_path: Path) -> None:
    """No app outlives its agent (it would hold its port against the next one)."""
    quiet = "import time; time.sleep(60)"  # no output: a broken pipe does not end it
    agent = await asyncio.create_subprocess_exec(
        PYTHON_OF_TESTS, "-c", AGENT, PYTHON, quiet, str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert agent.stdout is not None
    app_pid = int(await asyncio.wait_for(agent.stdout.readline(), 20))
    cmdline = Path(f"/proc/{app_pid}/cmdline")
    await until(lambda: quiet.encode() in cmdline.read_bytes())  # the shim has exec'd
    agent.kill()
    await agent.wait()
    await until(lambda: not alive(app_pid), timeout=5)
