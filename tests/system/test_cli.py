"""The `roost` CLI as an operator uses it, against a real hub and agent.

Every command runs as its own process with the hub's client config in ``ROOST_CONFIG``
(or ``--config``), as after ``roost hub`` on a laptop: join tokens, the device list as
a table and as JSON, labels, the twin, commands, tenants, revocation, and one clear
``error:`` line with a non-zero exit for what is wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from system.harness import ROOST, Hub
from system.procs import StartProc, wait_for


class Cli:
    def __init__(self, config: Path) -> None:
        self.config = config

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*ROOST, *args],
            env={**os.environ, "ROOST_CONFIG": str(self.config)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if ok:
            assert done.returncode == 0, f"roost {' '.join(args)}:\n{done.stderr}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def fails(self, *args: str) -> str:
        """The one error line of a command that must fail."""
        done = self.run(*args, ok=False)
        assert done.returncode != 0, f"roost {' '.join(args)} succeeded"
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("error: "), lines[0]
        return lines[0]


def test_an_operator_runs_the_fleet_from_the_cli(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    cli = Cli(hub.data_dir / "client.toml")

    token = cli.run(
        "token", "create", "--label", "role=router", "--label", "site=hq", "--ttl", "10m"
    ).stdout.strip()
    assert token.startswith("rjt1_")
    agent_dir = tmp_path / "agent"
    agent = start_proc([*ROOST, "agent", "join", token, "--data", agent_dir], name="agent")
    identity = agent_dir / "identity.json"
    wait_for(lambda: identity.exists() or not agent.alive, timeout=30, what="enrollment")
    device_id = json.loads(identity.read_text())["device_id"]
    hub.wait_online([device_id])

    # The device list, for people and for scripts.
    (listed,) = cli.json("devices", "ls", "--json")
    assert listed["id"] == device_id
    assert listed["status"] == "online"
    assert listed["labels"] == {"role": "router", "site": "hq"}
    assert listed["last_seen"]
    assert listed["inventory"]["arch"]
    table = cli.run("devices", "ls").stdout
    for text in (device_id, "online", "role=router", "site=hq"):
        assert text in table, table
    assert cli.json("devices", "ls", "--json", "-l", "site=elsewhere") == []
    shown = cli.json("devices", "show", device_id, "--json")
    assert shown["inventory"]["kernel"]
    assert device_id in cli.run("devices", "show", device_id).stdout

    # Labels and desired state reach the agent, which reports them back.
    assert cli.run("devices", "label", device_id, "site=lab", "role-").stdout.strip() == "site=lab"
    cli.run("twin", "set", device_id, 'config={"mode": "eco"}', "heartbeat_interval=5")
    wait_for(
        lambda: cli.json("twin", "show", device_id)["in_sync"], timeout=15, what="twin in sync"
    )
    reported = cli.json("twin", "show", device_id)["reported"]
    assert reported["labels"] == {"site": "lab"}
    assert reported["config"] == {"mode": "eco"}
    assert reported["heartbeat_interval"] == 5

    # Commands, with their answers; an unknown one is an error, not silence.
    assert cli.json("cmd", device_id, "ping", "--timeout", "10")["pong"] is True
    logs = cli.run("cmd", device_id, "logs", "--arg", "lines=3").stdout.strip().splitlines()
    assert 0 < len(logs) <= 3
    assert "unknown command" in cli.fails("cmd", device_id, "reboot-the-moon")

    # A tenant's own token sees only that tenant's (empty) fleet.
    tenant_token = cli.run("tenant", "create", "acme").stdout.strip()
    assert tenant_token.startswith("rat_")
    acme = tmp_path / "acme.toml"
    acme.write_text(
        (hub.data_dir / "client.toml").read_text().replace(_token_of(cli.config), tenant_token)
    )
    assert cli.json("devices", "ls", "--json", "--config", str(acme)) == []
    assert "no device" in cli.fails("devices", "show", device_id, "--config", str(acme))
    assert "no device" in cli.fails("devices", "revoke", device_id, "--config", str(acme))
    assert "acme" in cli.run("tenant", "ls").stdout

    # Bad input: one line, non-zero exit, nothing changed.
    assert "duration" in cli.fails("token", "create", "--ttl", "soon")
    assert "key=value" in cli.fails("devices", "label", device_id, "oops")
    assert "heartbeat_interval" in cli.fails("twin", "set", device_id, "heartbeat_interval=0")
    assert "no device" in cli.fails("cmd", "dnosuchdevice", "ping")
    assert cli.json("devices", "show", device_id, "--json")["labels"] == {"site": "lab"}

    # Revocation: the device is cut off and shows as revoked.
    assert cli.run("devices", "revoke", device_id).stdout.strip() == f"revoked {device_id}"
    wait_for(
        lambda: cli.json("devices", "show", device_id, "--json")["status"] == "offline",
        timeout=30,
        what="the revoked device offline",
    )
    assert "revoked" in cli.run("devices", "ls").stdout


def _token_of(config: Path) -> str:
    for line in config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "token":
            return value.strip().strip('"')
    raise AssertionError(f"no token in {config}")
