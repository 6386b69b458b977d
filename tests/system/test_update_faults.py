"""An agent killed in the middle of an update comes back running a complete version.

A device runs ``hello`` 1.0.0 and is told to run a newer release whose bundle holds
several MB of random bytes, so that fetching, storing and unpacking it take a moment.
The test watches the agent's data dir and SIGKILLs the agent as soon as the update
reaches the phase under test:

- fetching the bundle (the refreshed targets metadata names it, nothing stored yet);
- storing the verified download (``DATA/tuf/targets/.<target>.partial`` exists);
- unpacking (``DATA/apps/.incoming/`` holds a staging dir);
- unpacked but not switched (``versions/<new>`` exists, ``current`` still the old one).

Then, with the agent dead, ``current`` must name a complete version (every file as in
its bundle) and so must every version dir that carries the install marker. Started again
on the same data dir, the agent finishes the update: the new version runs and serves,
complete, with no staging dir, partial download or unmarked version left behind.

A kill can land later than aimed (the agent was quicker than the poll); it then counts
for nothing and the next release is tried, up to ``ATTEMPTS`` times per phase.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from roost.apps.installs import MARKER
from roost.wire.apps import target_path
from system.harness import Agent, Hub
from system.procs import StartProc, free_port, wait_for
from system.releases import APP, Releases, Reports, greeting, served, tree

OLD = "1.0.0"
PAYLOAD_MB = 6
ATTEMPTS = 3
AGENT_ENV = {"ROOST_RECONNECT_MIN_S": "0.1", "ROOST_RECONNECT_MAX_S": "1"}

FETCHING = "fetching the bundle"
STORING = "storing the verified download"
UNPACKING = "unpacking"
UNPACKED = "unpacked, not switched"
SWITCHED = "switched"


class DeviceFiles:
    """What the agent keeps on disk about the app, read without changing anything."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.app_dir = data_dir / "apps" / APP
        self.versions = self.app_dir / "versions"
        self.incoming = data_dir / "apps" / ".incoming"
        self.targets = data_dir / "tuf" / "targets"

    def pointed(self, link: str) -> str | None:
        """The version ``current`` or ``previous`` points at, None if there is no link."""
        try:
            target = os.readlink(self.app_dir / link)
        except FileNotFoundError:
            return None
        head, _, version = target.partition("/")
        assert head == "versions", f"{link} points outside versions/: {target}"
        return version

    def names_target(self, version: str) -> bool:
        """Whether the device's trusted targets metadata lists ``version``."""
        try:
            metadata = (self.data_dir / "tuf" / "metadata" / "targets.json").read_text()
        except FileNotFoundError:
            return False
        return f'"{target_path(APP, version)}"' in metadata

    def partials(self) -> list[Path]:
        return list(self.targets.glob(".*.partial")) if self.targets.is_dir() else []

    def staging(self) -> list[Path]:
        return list(self.incoming.iterdir()) if self.incoming.is_dir() else []

    def downloaded(self, version: str) -> bool:
        name = urllib.parse.quote(target_path(APP, version), safe="")
        return (self.targets / name).is_file()

    def phase(self, new: str) -> str:
        """How far the update to ``new`` got."""
        if self.pointed("current") == new:
            return SWITCHED
        if (self.versions / new / MARKER).is_file():
            return UNPACKED
        if self.staging():
            return UNPACKING
        if self.partials():
            return STORING
        if self.downloaded(new):
            return "downloaded, not yet unpacking"
        if self.names_target(new):
            return FETCHING
        return "refreshing the catalog"

    def assert_complete(self, releases: Releases) -> str:
        """``current`` and every marked version are complete; the current version."""
        current = self.pointed("current")
        assert current is not None, "no current version"
        assert (self.versions / current / MARKER).is_file(), f"current {current} is unmarked"
        for version_dir in self.versions.iterdir():
            if (version_dir / MARKER).is_file():
                expected = tree(releases.source(version_dir.name))
                assert tree(version_dir) == expected, f"{version_dir.name} is incomplete"
        previous = self.pointed("previous")
        if previous is not None:
            assert (self.versions / previous / MARKER).is_file(), f"previous {previous}"
        return current


# What shows that the update to a version has reached a phase.
MARKERS: dict[str, Callable[[DeviceFiles, str], bool]] = {
    FETCHING: lambda files, new: files.names_target(new),
    STORING: lambda files, new: bool(files.partials()),
    UNPACKING: lambda files, new: bool(files.staging()),
    UNPACKED: lambda files, new: (files.versions / new).exists(),
}


def _kill_at(agent: Agent, files: DeviceFiles, phase: str, new: str) -> str:
    """SIGKILL the agent once the update to ``new`` shows ``phase``; where it landed."""
    marker = MARKERS[phase]
    deadline = time.monotonic() + 60
    while not (marker(files, new) or files.pointed("current") == new):
        assert agent.proc.alive, f"the agent died by itself:\n{agent.proc.log_tail()}"
        assert time.monotonic() < deadline, f"the update to {new} never reached {phase}"
        time.sleep(0.0005)
    agent.proc.kill()
    return files.phase(new)


def _wait_serving(port: int, version: str) -> None:
    wait_for(lambda: served(port) == greeting(version), timeout=20, what=f"{version} serving")


@pytest.mark.parametrize("phase", list(MARKERS))
def test_an_agent_killed_mid_update_comes_back_running_a_complete_version(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str, phase: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    agent = hub.join(tmp_path / "agent", env=AGENT_ENV)
    hub.wait_online([agent.device_id])
    releases = Releases(tmp_path, free_port(), payload_mb=PAYLOAD_MB)
    files = DeviceFiles(agent.data_dir)

    with hub.client() as api:
        reports = Reports(api, agent.device_id)

        def want(version: str) -> None:
            api.set_desired(agent.device_id, {"apps": {APP: {"version": version}}})

        releases.publish(api, OLD)
        want(OLD)
        reports.wait_running(OLD)
        landed: list[str] = []
        for attempt in range(1, ATTEMPTS + 1):
            old, new = files.pointed("current"), f"1.{attempt}.0"
            releases.publish(api, new)
            want(new)
            landed.append(_kill_at(agent, files, phase, new))

            # Dead agent: whatever it left, current is a complete version, old or new.
            assert files.assert_complete(releases) in (old, new)

            hub.run_agent(agent, env=AGENT_ENV)
            reports.wait_running(new)
            _wait_serving(releases.port, new)
            assert files.assert_complete(releases) == new
            assert files.staging() == []
            assert files.partials() == []
            assert all((path / MARKER).is_file() for path in files.versions.iterdir())
            if landed[-1] == phase:
                break
        assert landed[-1] == phase, f"aimed at {phase!r}, the kills landed at {landed}"
