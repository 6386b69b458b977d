"""Releases of the agent itself for tests of its own update.

``write_agent_release`` makes the folder ``roost app build`` turns into a ``roost-agent``
bundle: ``roost.toml`` of kind ``agent`` and a copy of the ``roost`` package under test,
its ``__version__`` bumped to the release's version. ``BREAK_AT_START`` and
``HANG_AT_START``, appended to the copy's ``roost/agent/runtime.py``, make a release that
imports fine (so staging takes it) but fails or hangs when the agent starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import roost

MANIFEST = """\
name = "roost-agent"
kind = "agent"
version = "{version}"
description = "the Roost agent, {version}"

[agent]
python = "3.11"
"""

BREAK_AT_START = """

async def _broken_run(self: Agent) -> None:
    raise RuntimeError("this release is broken on purpose")


Agent.run = _broken_run  # type: ignore[method-assign]
"""

HANG_AT_START = """

def _hung_init(self: Agent, settings: AgentSettings) -> None:
    time.sleep(3600)


Agent.__init__ = _hung_init  # type: ignore[method-assign]
"""


def write_agent_release(root: Path, version: str, runtime_tail: str = "") -> Path:
    """The folder of a ``roost-agent`` release at ``version`` (see the module docstring)."""
    source = root / f"roost-agent-{version}"
    package = source / "roost"
    shutil.copytree(
        Path(roost.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    init = package / "__init__.py"
    text, count = re.subn(
        r'^__version__ = ".*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M
    )
    assert count == 1, "roost/__init__.py has no __version__ line"
    init.write_text(text)
    if runtime_tail:
        runtime = package / "agent" / "runtime.py"
        runtime.write_text(runtime.read_text() + runtime_tail)
    (source / "roost.toml").write_text(MANIFEST.format(version=version))
    return source
