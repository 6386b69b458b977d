"""The agent updates itself: a new version of the ``roost`` package beside the old, tried,
kept once it is online, and rolled back by the agent itself when it does not come online.

The agents run as ``roost agent run`` processes with no service manager around them: the
process replaces itself (exec, same pid) to try a new version and again to go back, so
nothing has to restart it. A release here is a copy of the ``roost`` package under test
with its version bumped (``system.agent_releases``); the broken ones import fine, so
staging takes them, and fail or hang only when the agent starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roost import __version__ as BASE
from roost.agent import selfupdate
from roost.client import RoostClient
from system.agent_releases import BREAK_AT_START, HANG_AT_START, write_agent_release
from system.harness import Agent, Hub, StartProc, cli_ok
from system.procs import wait_for

GRACE_S = 15
ENV = {"ROOST_SELF_UPDATE_GRACE_S": str(GRACE_S)}


def agent_version(api: RoostClient, device_id: str) -> str | None:
    device: dict[str, Any] = api.device(device_id)
    return str(device["agent_version"]) if device["status"] == "online" else None


def reported(api: RoostClient, device_id: str) -> dict[str, Any]:
    apps: dict[str, Any] = api.twin(device_id)["reported"].get("apps") or {}
    return dict(apps.get(selfupdate.NAME) or {})


def test_the_agent_updates_itself_from_the_catalog_and_rolls_a_broken_release_back(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    agent = hub.join(tmp_path / "agent", env=ENV)
    pid = agent.proc.pid
    bundles = tmp_path / "bundles"
    for version, breakage in (("0.2.0", ""), ("0.3.0", BREAK_AT_START)):
        folder = write_agent_release(tmp_path / "releases", version, breakage)
        cli_ok(config, "app", "build", str(folder), "--out", str(bundles))
        cli_ok(config, "app", "publish", str(bundles / f"roost-agent-{version}.tar.gz"))

    with hub.client() as api:
        wait_for(lambda: agent_version(api, agent.device_id) == BASE, timeout=30, what="online")
        api.set_desired(agent.device_id, {"apps": {"roost-agent": {"version": "0.2.0"}}})

        def installed() -> bool:
            entry = reported(api, agent.device_id)
            return (entry.get("state"), entry.get("version")) == ("installed", "0.2.0")

        wait_for(installed, timeout=GRACE_S + 60, what="roost-agent 0.2.0 installed")
        entry = reported(api, agent.device_id)
        assert (entry["kind"], entry["wanted"]) == ("agent", "0.2.0")
        assert "error" not in entry
        wait_for(lambda: agent_version(api, agent.device_id) == "0.2.0", timeout=30, what="birth")
        assert agent.proc.pid == pid  # it replaced its own process: nothing restarted it

        api.set_desired(agent.device_id, {"apps": {"roost-agent": {"version": "0.3.0"}}})
        wait_for(
            lambda: reported(api, agent.device_id).get("state") == "rolled-back",
            timeout=GRACE_S + 60,
            what="roost-agent 0.3.0 rolled back",
        )
        entry = reported(api, agent.device_id)
        assert (entry["version"], entry["wanted"]) == ("0.2.0", "0.3.0")
        assert entry["error"].startswith("0.3.0 failed to start: RuntimeError: this release is")
        assert entry["error"].endswith("; rolled back to 0.2.0")
        wait_for(lambda: agent_version(api, agent.device_id) == "0.2.0", timeout=30, what="0.2.0")
        assert agent.proc.alive
        assert agent.proc.pid == pid


def test_a_staged_version_runs_after_a_restart_and_a_broken_one_goes_back_by_itself(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    agent: Agent = hub.join(tmp_path / "agent", env=ENV)
    data = agent.data_dir
    releases = tmp_path / "releases"
    with hub.client() as api:
        wait_for(lambda: agent_version(api, agent.device_id) == BASE, timeout=30, what="online")

        # A good version, staged as the reconciler does, runs from the next start on.
        selfupdate.stage(data, write_agent_release(releases, "0.2.0"), "0.2.0")
        agent.proc.stop(timeout=20)
        hub.run_agent(agent, env=ENV)
        wait_for(
            lambda: selfupdate.load(data).current == "0.2.0",
            timeout=GRACE_S + 30,
            what="0.2.0 confirmed",
        )
        wait_for(lambda: agent_version(api, agent.device_id) == "0.2.0", timeout=30, what="0.2.0")
        assert selfupdate.load(data).trial is None

        # A version that raises when the agent starts, one that hangs: within the grace
        # period the same process goes back to 0.2.0.
        for version, breakage, why in (
            ("0.3.0", BREAK_AT_START, "0.3.0 failed to start: RuntimeError: this release is"),
            ("0.4.0", HANG_AT_START, f"0.4.0 did not come online within {GRACE_S}s"),
        ):
            selfupdate.stage(data, write_agent_release(releases, version, breakage), version)
            agent.proc.stop(timeout=20)
            hub.run_agent(agent, env=ENV)
            pid = agent.proc.pid

            def rolled_back(version: str = version) -> bool:
                outcome = selfupdate.load(data).outcome
                return outcome is not None and outcome.version == version

            wait_for(rolled_back, timeout=GRACE_S + 30, what=f"{version} rolled back")
            outcome = selfupdate.load(data).outcome
            assert outcome is not None
            assert outcome.state == "rolled-back"
            assert outcome.error is not None
            assert outcome.error.startswith(why)
            assert outcome.error.endswith("; rolled back to 0.2.0")
            wait_for(
                lambda: agent_version(api, agent.device_id) == "0.2.0",
                timeout=30,
                what="0.2.0 back online",
            )
            assert agent.proc.alive
            assert agent.proc.pid == pid  # nothing restarted it: it went back by itself
            state = selfupdate.load(data)
            assert (state.current, state.trial) == ("0.2.0", None)
            assert selfupdate.installed(data) == {"0.2.0"}
