"""Starting and stopping one app's processes: the shell around ``isolation.plan_launch``.

``spawn`` makes the app's cgroup, writes its limits, and starts a tiny exec shim (Python
with ``-I -S``, the standard library only) in a new session. The shim asks the kernel to
kill it when the agent dies, writes its own pid into the cgroup and sets the rlimits, then
execs the planned command, so no app code runs
outside its limits, and no Python code runs between fork and exec in the agent itself
(which ``preexec_fn`` would do, unsafe with threads). A shim that cannot confine the app
fails with a traceback in the app's log instead of running it unconfined.

``terminate`` stops everything the app started: SIGTERM to its processes (all members of
its cgroup, all descendants, its process group; under bubblewrap not bubblewrap itself,
which would SIGKILL the app at once), then SIGKILL to whatever is left after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

from roost.agent.proctree import descendants
from roost.agent.supervisor.isolation import CgroupPlan, Launch
from roost.errors import AppError

_SHIM = """\
import ctypes, json, os, resource, sys
# Die with the agent (PR_SET_PDEATHSIG = 1, SIGKILL): an agent killed outright must not
# leave its apps holding their ports; the agent that starts next starts them again.
ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)
if os.getppid() != int(sys.argv[1].partition("#")[0]):
    sys.exit(125)  # the agent died before the line above took effect
plan = json.loads(sys.argv[1].partition("#")[2])
for procs in plan["procs"]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
for res, value in plan["rlimits"]:
    resource.setrlimit(res, (value, value))
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as err:
    print(f"roost: cannot run {sys.argv[2]}: {err.strerror}", file=sys.stderr)
    sys.exit(127)
"""
_KILL_ROUNDS = 20


def shim_argv(launch: Launch) -> tuple[str, ...]:
    """The command line that enters the cgroup, sets rlimits and execs the app."""
    procs = [str(d / "cgroup.procs") for d in launch.cgroup.dirs] if launch.cgroup else []
    plan = json.dumps({"procs": procs, "rlimits": [list(r) for r in launch.rlimits]})
    return (sys.executable, "-I", "-S", "-c", _SHIM, f"{os.getpid()}#{plan}", *launch.argv)


def prepare_cgroup(plan: CgroupPlan) -> None:
    """Make the app's cgroup directories and write its limits."""
    for directory in plan.dirs:
        directory.mkdir(exist_ok=True)
    for limit_file, value in plan.limits:
        limit_file.write_text(value)


async def spawn(launch: Launch, name: str) -> asyncio.subprocess.Process:
    """Start the app; its stdout and stderr share ``process.stdout``."""
    try:
        if launch.cgroup is not None:
            prepare_cgroup(launch.cgroup)
        return await asyncio.create_subprocess_exec(
            *shim_argv(launch),
            cwd=launch.cwd,
            env=dict(launch.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        raise AppError(f"app {name}: cannot start: {err}") from err


def cgroup_members(plan: CgroupPlan | None) -> set[int]:
    """The pids in the app's cgroup(s)."""
    pids: set[int] = set()
    for directory in plan.dirs if plan else ():
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return pids


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_now(proc: asyncio.subprocess.Process, launch: Launch) -> None:
    """SIGKILL the app's whole tree at once, without waiting (for cleanup paths)."""
    targets = descendants(proc.pid) | cgroup_members(launch.cgroup)
    if proc.returncode is None:
        targets.add(proc.pid)
    # The group outlives its leader while members are left: children it did not wait for.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _signal(targets, signal.SIGKILL)


async def terminate(proc: asyncio.subprocess.Process, launch: Launch, timeout_s: float) -> int:
    """Stop the app gracefully, then by force; returns the main process's exit code."""
    if proc.returncode is None:
        targets = descendants(proc.pid) | cgroup_members(launch.cgroup)
        if launch.sandboxed:
            # Killing bubblewrap kills the app with SIGKILL; let the app see SIGTERM first.
            targets.discard(proc.pid)
        else:
            targets.add(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        _signal(targets, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout_s)
    kill_now(proc, launch)
    returncode = await proc.wait()
    await reap_leftovers(launch)
    return returncode


async def reap_leftovers(launch: Launch) -> None:
    """Kill what is still in the app's cgroup after its main process ended."""
    for _ in range(_KILL_ROUNDS):
        left = cgroup_members(launch.cgroup)
        if not left:
            return
        _signal(left, signal.SIGKILL)
        await asyncio.sleep(0.05)


def remove_cgroup(plan: CgroupPlan | None) -> None:
    """Remove the app's cgroup directories once empty (best effort)."""
    for directory in plan.dirs if plan else ():
        with contextlib.suppress(OSError):
            directory.rmdir()
