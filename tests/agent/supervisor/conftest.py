"""Helpers for supervisor tests: quick settings, specs of tiny Python apps, polling."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from roost.agent.supervisor import (
    Capabilities,
    PolicyLimits,
    RestartPolicy,
    RunSpec,
    SupervisorSettings,
    detect_isolation,
)

# The interpreter itself, not a venv's link to it: a sandbox's private /tmp hides a venv
# that lives under /tmp (a CI clone there), never the interpreter it was made from.
PYTHON = os.path.realpath(sys.executable)

QUICK = SupervisorSettings(
    stop_timeout_s=2.0,
    limits=PolicyLimits(
        initial_backoff_s=0.05, stable_after_s=1.0, crash_loop_exits=3, crash_loop_window_s=30.0
    ),
)


def py_spec(tmp_path: Path, name: str, code: str, **kw: object) -> RunSpec:
    """A spec running ``python -c code`` from an app dir under tmp_path."""
    app_dir = tmp_path / "apps" / name
    app_dir.mkdir(parents=True, exist_ok=True)
    args: dict[str, object] = {
        "name": name,
        "version": "1",
        "command": (PYTHON, "-c", code),
        "app_dir": app_dir,
        "log_dir": tmp_path / "logs",
        "restart": RestartPolicy("always", 0.2),
    }
    args.update(kw)
    return RunSpec(**args)  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; fail the test when it does not in time."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state another task changes
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture(scope="session")
def device_caps() -> Capabilities:
    """What this machine allows, detected once."""
    return detect_isolation()


@pytest.fixture
def bwrap_caps(device_caps: Capabilities) -> Capabilities:
    """What this machine allows, where bubblewrap works (scripts/setup installs it)."""
    if device_caps.bwrap is None:
        pytest.skip("bwrap not installed or not working (apt-get install bubblewrap)")
    return device_caps
