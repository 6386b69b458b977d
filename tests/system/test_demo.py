"""`roost demo` brings up a hub and real agents, shows them online, and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def _running_roost_dirs(root_marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if root_marker in cmdline:
                found.append(cmdline)
    return found


def test_demo_runs_and_cleans_up(mosquitto_bin: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roost", "demo", "--devices", "2", "--duration", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "160", "PATH": "/usr/sbin:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "2 devices enrolled and online" in out
    assert "hello@1.0.0 rolled out to 2 devices" in out
    assert out.count("online") >= 3  # the line above and one row per device
    root = re.search(r"files in (\S+)\)", out)
    assert root is not None
    assert not Path(root.group(1)).exists()
    assert _running_roost_dirs(root.group(1)) == []
