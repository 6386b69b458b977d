"""Rules on a real hub: the door-sensor example of the issue applied with the CLI, nine
events from a device, a restart, the tenth fires exactly once; bad files are refused
with their places; the dry run, show and rm through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import roost.access.models  # noqa: F401  (the tenants table the rules tables refer to)
from roost.db import Database
from roost.rules.models import RuleCursor
from system.harness import ROOST, Hub
from system.procs import StartProc, wait_for

# "If this device's door sensor reports `forced` 10 times within 30 days, disable its
# guest access and tell the owner", as docs/rules.md writes it.
DOOR_FORCED = """\
id: door-forced
trigger: {type: app.door.state}
condition: event.data.state == "forced"
window: {over: 30d, group_by: device, threshold: count >= 10}
actions:
  - {kind: command, name: guest-access.disable}     # to the device the event came from
  - kind: email
    to: owner@example.org
    subject: "{{ device }}: door forced {{ window.count }} times in 30 days; guest access is off"
"""

BAD = """\
rules:
  - id: alice-blood-pressure
    trigger: {type: app.reading.bp, subject: "alice/*"}
    condition: event.data.systolic > 140 || evnt.data.diastolic > 90
    actions:
      - {kind: webhook, url: "https://sms.example.org/send"}
      - kind: sms
        to: "+15550100"
  - id: door-forced
    trigger: {type: app.door.state}
    window: {over: 30 days, threshold: count >= 10}
    actions: [{kind: invoke, function: lock-down}]
"""


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROOST, *args],
        env={**os.environ, "ROOST_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def counted(hub: Hub) -> int:
    """How many forced doors the hub's stored window holds (read from its database)."""
    db = Database(f"sqlite:///{hub.data_dir / 'roost.db'}")
    try:
        with db.session() as session:
            cursor = session.get(RuleCursor, "default")
            groups: dict[str, Any] = (
                cursor.windows.get("rules", {}).get("door-forced", {}).get("groups", {})
                if cursor is not None
                else {}
            )
            return sum(len(group["t"]) for group in groups.values())
    finally:
        db.dispose()


def test_the_tenth_forced_door_fires_once_across_a_hub_restart(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    rules = tmp_path / "door.yaml"
    rules.write_text(DOOR_FORCED)
    applied = cli(config, "rules", "apply", str(rules))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "door-forced: created (version 1)\n"
    listed = cli(config, "rules", "ls")
    assert "door-forced  on   v1  type=app.door.state window 30d" in listed.stdout
    again = cli(config, "rules", "apply", str(rules))
    assert again.stdout == "door-forced: unchanged (version 1)\n"

    # The door sensor is a device of the fleet: its reports travel through its agent.
    door = hub.join(tmp_path / "door", {"role": "door"})
    hub.wait_online([door.device_id])
    with hub.client() as api:
        for _ in range(9):
            door.emit("app.door.state", {"state": "forced"}, "front")
        door.emit("app.door.state", {"state": "closed"}, "front")
        wait_for(lambda: counted(hub) == 9, timeout=30, what="the hub to count nine")
        assert api.actions() == []

    hub.restart()
    with hub.client() as api:
        door.emit("app.door.state", {"state": "forced"}, "front")
        wait_for(lambda: api.actions(rule="door-forced"), timeout=30, what="the tenth to fire")
        # An 11th report that counts too is past the 10th in the store: once the hub has
        # counted it, every firing of the tenth is in the outbox.
        door.emit("app.door.state", {"state": "forced"}, "front")
        wait_for(lambda: counted(hub) == 11, timeout=30, what="the hub to count eleven")
        actions = sorted(api.actions(rule="door-forced"), key=lambda a: a["id"])
    kinds = [action["kind"] for action in actions]
    assert kinds == ["command", "email", "command", "email"], "the 10th fired, then the 11th"
    tenth = actions[:2]
    assert tenth[1]["fields"]["subject"] == (
        f"{door.device_id}: door forced 10 times in 30 days; guest access is off"
    ), "grouped by the device the reports came from"
    assert tenth[0]["fields"]["name"] == "guest-access.disable"
    assert tenth[0]["fields"]["device"] == door.device_id
    assert len({action["key"] for action in actions}) == 4


def test_rules_through_the_cli(start_proc: StartProc, tmp_path: Path, mosquitto_bin: str) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    bad = tmp_path / "rules.yaml"
    bad.write_text(BAD)
    refused = cli(config, "rules", "apply", str(bad))
    assert refused.returncode != 0
    lines = refused.stderr.splitlines()
    where = str(bad)
    assert lines[:3] == [
        f"error: {where}:4:54: rules[0].condition: undeclared reference to 'evnt.data.diastolic'",
        "        condition: event.data.systolic > 140 || evnt.data.diastolic > 90",
        "                                                         ^",
    ]
    assert f"{where}:7:15: rules[0].actions[1].kind: 'sms' is not one of webhook" in lines[3]
    assert lines[6].startswith(f"{where}:11:20: rules[1].window.over: '30 days' is not")
    assert lines[9].startswith(f"{where}:12:40: rules[1].actions[0].function: no function")
    assert cli(config, "rules", "ls").stdout == "", "a refused file stores nothing"

    invoke = tmp_path / "invoke.yaml"
    invoke.write_text("id: x\ntrigger: {type: t}\nactions: [{kind: invoke, function: f}]\n")
    no_functions = cli(config, "rules", "apply", str(invoke))
    assert no_functions.returncode != 0
    assert f"{invoke}:3:36: actions[0].function: no function 'f'; deploy it first" in (
        no_functions.stderr
    )

    rules = tmp_path / "door.yaml"
    rules.write_text(DOOR_FORCED.replace("count >= 10", "count >= 2"))
    events = tmp_path / "events.json"
    door = {"source": "roost://devices/d7/door", "type": "app.door.state"}
    events.write_text(
        json.dumps(
            [
                {**door, "id": "e1", "data": {"state": "forced"}},
                {**door, "id": "e2", "data": {"state": "forced"}},
            ]
        )
    )
    tried = cli(config, "rules", "test", str(rules), "--event", str(events))
    assert tried.returncode == 0, tried.stderr
    assert "  door-forced: condition true; window d7: count 1, threshold false" in tried.stdout
    assert "  door-forced: condition true; window d7: count 2, threshold true -> fires 2" in (
        tried.stdout
    )
    assert '    email {"to": ["owner@example.org"], "cc": [], "subject": "d7: door forced 2' in (
        tried.stdout
    )
    report = json.loads(
        cli(config, "rules", "test", str(rules), "--event", str(events), "--json").stdout
    )
    assert [len(e["rules"][0]["fires"]) for e in report["events"]] == [0, 2]
    assert cli(config, "rules", "ls").stdout == "", "a dry run stores nothing"

    assert cli(config, "rules", "apply", str(rules)).returncode == 0
    shown = cli(config, "rules", "show", "door-forced").stdout
    assert shown.startswith("# door-forced: version 1, enabled, updated ")
    assert shown.endswith(DOOR_FORCED.replace("count >= 10", "count >= 2"))
    assert cli(config, "rules", "disable", "door-forced").stdout == "rule door-forced disabled\n"
    assert "door-forced  off  v2" in cli(config, "rules", "ls").stdout
    assert cli(config, "rules", "rm", "door-forced").stdout == "rule door-forced removed\n"
    gone = cli(config, "rules", "show", "door-forced")
    assert gone.returncode != 0
    assert gone.stderr == "error: no rule 'door-forced'\n"
