"""The life of apps on a real device: a real hub, a real agent, releases published to the
tenant's signed catalog, the device's desired state set through the API.

- Two apps on one device are upgraded one at a time; the other is never restarted.
- ``apply: false`` stages a release (downloaded, verified, unpacked; the old one runs);
  ``apply: true`` then switches to it without downloading it again.
- A release whose health check fails is rolled back by the agent itself to the previous
  version, which serves again; a restarted agent does not try that release again.
- A system release is applied by the device's installer (a script written here that
  records its argv and environment): exit 0 is ``installed``, exit 1 is ``failed`` with
  the installer's output, the earlier release staying the installed one.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from roost.apps.bundle import build_bundle
from roost.client import RoostClient
from system.harness import Agent, Hub
from system.procs import StartProc, free_port, wait_for

# Quick health checks: a bad release is unhealthy ~2 s after it starts.
APP = """\
name = "{name}"
version = "{version}"
command = ["/usr/bin/python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
network = true
ports = [{{ port = {port} }}]

[health]
kind = "http"
port = {port}
path = "{health_path}"
interval = 0.5
timeout = 0.5
grace = 1
retries = 2
"""
SYSTEM = """\
name = "fw"
version = "{version}"
kind = "system"
environment = {{ CHANNEL = "stable" }}

[install]
command = ["image.bin", "--slot", "b"]
"""
# The device's installer: records what it got, and fails on the release named "bad".
INSTALLER = """\
import json, os, pathlib, sys
record = pathlib.Path(sys.argv[1])
runs = json.loads(record.read_text()) if record.exists() else []
runs.append({"argv": sys.argv[2:], "cwd": os.getcwd(),
             "env": {k: v for k, v in os.environ.items() if k.startswith(("ROOST_", "CHANNEL"))},
             "image": pathlib.Path("image.bin").read_text()})
record.write_text(json.dumps(runs))
print("writing", sys.argv[2], "to slot", sys.argv[4])
if pathlib.Path("image.bin").read_text() == "bad":
    print("flash failed: checksum mismatch on slot b")
    sys.exit(1)
print("slot b is ready")
"""


def publish_app(
    api: RoostClient, work: Path, name: str, version: str, port: int, health_path: str = "/"
) -> None:
    source = work / "src" / f"{name}-{version}"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(
        APP.format(name=name, version=version, port=port, health_path=health_path)
    )
    (source / "index.html").write_text(f"{name} from {version}\n")
    api.publish_app(build_bundle(source, work / "bundles").path)


def publish_system(api: RoostClient, work: Path, version: str, image: str) -> None:
    source = work / "src" / f"fw-{version}"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(SYSTEM.format(version=version))
    (source / "image.bin").write_text(image)
    api.publish_app(build_bundle(source, work / "bundles").path)


def served(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            text: str = r.read().decode()
            return text
    except OSError:
        return None


def want(api: RoostClient, agent: Agent, apps: dict[str, Any]) -> None:
    api.set_desired(agent.device_id, {"apps": apps})


def reported(api: RoostClient, agent: Agent) -> dict[str, dict[str, Any]]:
    apps: dict[str, dict[str, Any]] = api.twin(agent.device_id)["reported"].get("apps") or {}
    return apps


def wait_app(api: RoostClient, agent: Agent, name: str, **expected: Any) -> dict[str, Any]:
    """Poll until the reported entry of ``name`` has the ``expected`` fields; that entry."""

    def matches() -> dict[str, Any]:
        app = reported(api, agent).get(name) or {}
        return app if all(app.get(k) == v for k, v in expected.items()) else {}

    return wait_for(matches, timeout=60, interval=0.2, what=f"{name} {expected}")


def fleet_of_one(start_proc: StartProc, tmp_path: Path) -> tuple[Hub, Agent]:
    """A hub and one agent, online."""
    hub = Hub.start(start_proc, tmp_path / "hub")
    agent = hub.join(tmp_path / "agent")
    hub.wait_online([agent.device_id])
    return hub, agent


def agent_log(agent: Agent) -> str:
    return (agent.data_dir / "agent.log").read_text()


def test_two_apps_upgrade_independently_and_a_staged_release_applies_without_a_download(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub, agent = fleet_of_one(start_proc, tmp_path)
    ports = {"alpha": free_port(), "beta": free_port()}
    with hub.client() as api:
        for name, port in ports.items():
            for version in ("1.0.0", "1.1.0", "1.2.0"):
                publish_app(api, tmp_path, name, version, port)

        want(api, agent, {"alpha": {"version": "1.0.0"}, "beta": {"version": "1.0.0"}})
        wait_app(api, agent, "alpha", version="1.0.0", state="running")
        beta = wait_app(api, agent, "beta", version="1.0.0", state="running")
        assert beta["kind"] == "app"
        assert beta["wanted"] == "1.0.0"
        assert isinstance(beta["since"], float)

        # alpha moves on; beta is not restarted, not even for a moment (its since stays).
        want(api, agent, {"alpha": {"version": "1.1.0"}, "beta": {"version": "1.0.0"}})
        alpha = wait_app(api, agent, "alpha", version="1.1.0", state="running")
        assert served(ports["alpha"]) == "alpha from 1.1.0\n"
        assert reported(api, agent)["beta"] == beta
        assert served(ports["beta"]) == "beta from 1.0.0\n"

        # Then beta, and alpha is left alone.
        want(api, agent, {"alpha": {"version": "1.1.0"}, "beta": {"version": "1.1.0"}})
        beta = wait_app(api, agent, "beta", version="1.1.0", state="running")
        assert reported(api, agent)["alpha"] == alpha

        # Staged: downloaded, verified and unpacked, but 1.1.0 keeps running.
        want(
            api,
            agent,
            {"alpha": {"version": "1.2.0", "apply": False}, "beta": {"version": "1.1.0"}},
        )
        staged = wait_app(api, agent, "alpha", state="staged")
        assert (staged["version"], staged["wanted"]) == ("1.1.0", "1.2.0")
        assert (agent.data_dir / "apps" / "alpha" / "versions" / "1.2.0" / "index.html").exists()
        assert served(ports["alpha"]) == "alpha from 1.1.0\n"
        assert agent_log(agent).count("downloaded, verified and unpacked alpha@1.2.0") == 1

        # Applied: switched at once, from what is already on the device.
        want(api, agent, {"alpha": {"version": "1.2.0"}, "beta": {"version": "1.1.0"}})
        wait_app(api, agent, "alpha", version="1.2.0", state="running")
        assert served(ports["alpha"]) == "alpha from 1.2.0\n"
        assert agent_log(agent).count("downloaded, verified and unpacked alpha@1.2.0") == 1
        assert reported(api, agent)["beta"] == beta


def test_a_release_that_fails_its_health_check_is_rolled_back_by_the_agent(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub, agent = fleet_of_one(start_proc, tmp_path)
    port = free_port()
    with hub.client() as api:
        publish_app(api, tmp_path, "alpha", "1.0.0", port)
        publish_app(api, tmp_path, "alpha", "2.0.0", port, health_path="/no-such-page")

        want(api, agent, {"alpha": {"version": "1.0.0"}})
        wait_app(api, agent, "alpha", version="1.0.0", state="running")
        want(api, agent, {"alpha": {"version": "2.0.0"}})
        back = wait_app(api, agent, "alpha", state="rolled-back")
        assert (back["version"], back["wanted"]) == ("1.0.0", "2.0.0")
        assert "rolled back to 1.0.0: 2.0.0 " in back["error"]
        assert "switched alpha from 1.0.0 to 2.0.0" in agent_log(agent)
        wait_for(
            lambda: served(port) == "alpha from 1.0.0\n", timeout=20, what="1.0.0 serving again"
        )

        # A restarted agent remembers: it runs 1.0.0 and does not try 2.0.0 again.
        assert agent.proc.stop(timeout=20) == 0
        log_before = agent_log(agent)
        hub.run_agent(agent)
        hub.wait_online([agent.device_id])
        wait_for(
            lambda: served(port) == "alpha from 1.0.0\n", timeout=30, what="1.0.0 serving again"
        )
        again = wait_app(api, agent, "alpha", state="rolled-back", version="1.0.0")
        assert again["error"] == back["error"]
        assert again["since"] == back["since"]  # the same state and version since then
        assert "to 2.0.0" not in agent_log(agent).removeprefix(log_before)

        # Naming another version clears it: back to 1.0.0 as the hub would roll back.
        want(api, agent, {"alpha": {"version": "1.0.0"}})
        healthy = wait_app(api, agent, "alpha", state="running", version="1.0.0", wanted="1.0.0")
        assert "error" not in healthy


def test_a_release_without_a_version_to_go_back_to_is_stopped_and_failed(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub, agent = fleet_of_one(start_proc, tmp_path)
    port = free_port()
    with hub.client() as api:
        publish_app(api, tmp_path, "alpha", "1.0.0", port, health_path="/no-such-page")
        want(api, agent, {"alpha": {"version": "1.0.0"}})
        failed = wait_app(api, agent, "alpha", state="failed")
        assert failed["version"] is None
        assert "no version before it" in failed["error"]
        wait_for(lambda: served(port) is None, timeout=20, what="the bad release stopped")


def test_system_releases_go_through_the_devices_installer(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    record = tmp_path / "installer-runs.json"
    script = tmp_path / "installer.py"
    script.write_text(INSTALLER)
    settings = {"ROOST_SYSTEM_INSTALLER": f"{sys.executable} {script} {record}"}
    agent = hub.join(tmp_path / "agent", env=settings)
    bare = hub.join(tmp_path / "bare")  # a device with no installer configured
    hub.wait_online([agent.device_id, bare.device_id])
    port = free_port()
    with hub.client() as api:
        publish_system(api, tmp_path, "2.0.0", "good")
        publish_system(api, tmp_path, "2.1.0", "bad")
        publish_app(api, tmp_path, "alpha", "1.0.0", port)

        want(api, agent, {"fw": {"version": "2.0.0"}, "alpha": {"version": "1.0.0"}})
        alpha = wait_app(api, agent, "alpha", state="running", version="1.0.0")
        fw = wait_app(api, agent, "fw", state="installed", version="2.0.0")
        assert fw["kind"] == "system"
        (run,) = json.loads(record.read_text())
        release_dir = (agent.data_dir / "apps" / "fw" / "versions" / "2.0.0").resolve()
        assert run["argv"] == ["image.bin", "--slot", "b"]
        assert run["cwd"] == str(release_dir)
        assert run["image"] == "good"
        assert run["env"]["ROOST_RELEASE_DIR"] == str(release_dir)
        assert run["env"]["ROOST_RELEASE_VERSION"] == "2.0.0"
        assert run["env"]["ROOST_RELEASE_NAME"] == "fw"
        assert run["env"]["CHANNEL"] == "stable"
        logs = api.command(agent.device_id, "app-logs", {"app": "fw", "lines": 5}, timeout=10)
        assert "slot b is ready" in logs["result"]["lines"]

        want(api, agent, {"fw": {"version": "2.1.0"}, "alpha": {"version": "1.0.0"}})
        failed = wait_app(api, agent, "fw", state="failed")
        assert (failed["version"], failed["wanted"]) == ("2.0.0", "2.1.0")
        assert "the installer exited with code 1" in failed["error"]
        assert "flash failed: checksum mismatch on slot b" in failed["error"]
        assert len(json.loads(record.read_text())) == 2
        assert (agent.data_dir / "apps" / "fw" / "current").resolve().name == "2.0.0"
        assert reported(api, agent)["alpha"] == alpha

        want(api, bare, {"fw": {"version": "2.0.0"}})
        refused = wait_app(api, bare, "fw", state="failed")
        assert refused["version"] is None
        assert "this device has no system installer configured" in refused["error"]
