"""Rollouts end to end: the CLI deploys to real agents in waves, gated by their health.

A release whose health check fails halts at the canary and is rolled back there, with no
other device told about it; a hub restarted in the middle of a rollout resumes it; a
device that joins the selector afterwards gets the deployed version; undeploy removes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from system.harness import Hub, cli, cli_ok
from system.procs import StartProc, wait_for

APP = """\
name = "ticker"
version = "{version}"
description = "sleeps, and is healthy when its check says so"
command = ["/usr/bin/python3", "-c", "import time\\nwhile True: time.sleep(1)"]

[health]
kind = "command"
command = ["{check}"]
interval = 2
timeout = 2
grace = 5
retries = 2
"""


def publish(config: Path, root: Path, version: str, check: str) -> None:
    source = root / f"ticker-{version}"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(APP.format(version=version, check=check))
    cli_ok(config, "app", "build", str(source), "--out", str(root / "bundles"))
    cli_ok(config, "app", "publish", str(root / "bundles" / f"ticker-{version}.tar.gz"))


def deploy(version: str, *options: str) -> tuple[str, ...]:
    """``roost deploy`` of a ticker release to the routers: a canary, then the rest."""
    return ("deploy", f"ticker@{version}", "--to", "role=router", "--waves", "1,100%", *options)


def ticker(api: Any, device_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = (api.twin(device_id)["reported"].get("apps") or {}).get("ticker", {})
    return entry


def runs(api: Any, device_ids: list[str], version: str) -> bool:
    return all(
        ticker(api, d).get("version") == version and ticker(api, d).get("state") == "running"
        for d in device_ids
    )


def test_a_release_rolls_out_in_waves_halts_when_bad_and_survives_a_hub_restart(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    agents = [hub.join(tmp_path / f"agent{n}", {"role": "router"}) for n in range(3)]
    devices = [a.device_id for a in agents]
    hub.wait_online(devices)
    for version, check in (("1.0.0", "/usr/bin/true"), ("1.1.0", "/usr/bin/true")):
        publish(config, tmp_path, version, check)
    publish(config, tmp_path, "1.2.0", "/usr/bin/false")

    # A good release reaches every device, canary first; --wait follows it to the end.
    out = cli_ok(config, *deploy("1.0.0", "--soak", "1s", "--wait"))
    assert "canary" in out
    api = hub.client()
    wait_for(lambda: runs(api, devices, "1.0.0"), timeout=60, what="1.0.0 on every device")

    # A release whose health check fails halts at the canary, which goes back to 1.0.0;
    # no other device is ever told about it.
    before = {d: api.twin(d)["desired_version"] for d in devices}
    bad = cli(config, *deploy("1.2.0", "--soak", "1s", "--deadline", "20s", "--wait"))
    assert bad.returncode != 0
    assert "halted" in bad.stderr
    (halted,) = [r for r in api.rollouts() if r["version"] == "1.2.0"]
    assert halted["status"] == "halted"
    assert [w["status"] for w in halted["waves"]] == ["halted", "not-started"]
    changed = [d for d in devices if api.twin(d)["desired_version"] != before[d]]
    assert len(changed) == 1, "only the canary's desired state changed"
    canary = changed[0]
    assert api.twin(canary)["desired"]["apps"]["ticker"] == {"version": "1.0.0"}
    wait_for(lambda: runs(api, devices, "1.0.0"), timeout=60, what="the canary back on 1.0.0")
    for device in devices:
        assert api.twin(device)["desired"]["apps"]["ticker"] == {"version": "1.0.0"}

    # The hub restarts while 1.1.0 soaks on the canary; the rollout resumes and finishes.
    started = json.loads(cli_ok(config, *deploy("1.1.0", "--soak", "4s", "--json")))
    rollout_id = started["id"]
    wait_for(
        lambda: any(ticker(api, d).get("version") == "1.1.0" for d in devices),
        timeout=60,
        what="the canary on 1.1.0",
    )
    api.close()
    hub.restart()
    api = hub.client()
    wait_for(
        lambda: api.rollout(rollout_id)["status"] == "done", timeout=90, what="the rollout done"
    )
    wait_for(lambda: runs(api, devices, "1.1.0"), timeout=60, what="1.1.0 on every device")
    shown = cli_ok(config, "rollout", "show", rollout_id)
    assert "passed" in shown
    assert rollout_id in cli_ok(config, "rollout", "ls")

    # A device that joins the selector later gets the deployed version.
    late = hub.join(tmp_path / "late", {"role": "router"})
    wait_for(lambda: runs(api, [late.device_id], "1.1.0"), timeout=90, what="the late device")

    # Undeploy takes the app off every device it reached.
    assert "4 device(s)" in cli_ok(config, "undeploy", "ticker")
    everyone = [*devices, late.device_id]
    wait_for(lambda: all(not ticker(api, d) for d in everyone), timeout=60, what="ticker removed")
    assert api.deployments() == []
    api.close()
