"""Edge functions on a real hub and a real agent: deployed ``--on`` a selector, shipped
through the signed catalog, run on the device against its own events — on and off the
broker — and what they did arriving at the hub once per idempotency key."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from system.harness import Agent, Hub, cli, cli_ok
from system.procs import StartProc, wait_for

DOOR = """\
def handle(event, ctx):
    n = event["data"]["n"]
    ctx.emit("app.door.counted", {"n": n, "device": ctx["device"]}, subject=event["subject"])
    return {"n": n, "key": ctx["key"]}
"""


def _outbox(agent: Agent, sql: str) -> int:
    with sqlite3.connect(agent.data_dir / "agent.db") as db:
        (count,) = db.execute(sql).fetchone()
    return int(count)


def _counted(hub: Hub) -> list[int]:
    with hub.client() as api:
        return sorted(e["data"]["n"] for e in api.events(type="app.door.counted", limit=1000))


def _invocations(hub: Hub) -> list[dict[str, Any]]:
    with hub.client() as api:
        return api.function_logs("door", limit=1000)


def test_an_edge_function_runs_on_its_devices_offline_too_and_reports_once(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    sensor = hub.join(tmp_path / "sensor", labels={"role": "sensor"})
    other = hub.join(tmp_path / "other", labels={"role": "camera"})
    hub.wait_online([sensor.device_id, other.device_id])

    door = tmp_path / "door.py"
    door.write_text(DOOR)
    network = cli(
        config, "fn", "deploy", str(door), "--name", "door", "--on", "role=sensor", "--network"
    )
    assert network.returncode != 0
    assert "functions on devices get no network" in network.stderr
    deployed = cli_ok(
        config,
        "fn",
        "deploy",
        str(door),
        "--name",
        "door",
        "--on",
        "role=sensor",
        "--trigger",
        "app.door.*",
    )
    assert (
        deployed == "function door version 1 deployed (on devices role=sensor, events app.door.*)\n"
    )

    with hub.client() as api:

        def running() -> bool:
            reported = api.twin(sensor.device_id)["reported"].get("functions") or {}
            return reported.get("door") == {"version": 1, "state": "running"}

        wait_for(running, timeout=30, what="the edge function verified and running")
        assert "functions" not in api.twin(other.device_id)["desired"]
        refused = cli(config, "fn", "invoke", "door")
        assert refused.returncode != 0
        assert "runs on devices (role=sensor)" in refused.stderr

    # Online: a door event is handled on the device; a window event starts nothing.
    sensor.emit("app.door.opened", {"n": 1}, subject="front")
    sensor.emit("app.window.opened", {"n": 99}, subject="front")
    wait_for(lambda: _counted(hub) == [1], timeout=20, what="the first door event counted")

    # Cut off: the broker is gone with the hub. The function goes on handling events.
    hub.stop()
    for n in range(2, 7):
        sensor.emit("app.door.forced", {"n": n}, subject="back")
    wait_for(
        lambda: (
            _outbox(sensor, "SELECT count(*) FROM edge_inbox") == 0
            and _outbox(sensor, "SELECT count(*) FROM outbox WHERE body LIKE '%app.door.counted%'")
            == 5
        ),
        timeout=30,
        what="the offline events handled on the device",
    )

    hub.run()
    wait_for(lambda: _counted(hub) == list(range(1, 7)), timeout=30, what="offline results")
    invocations = _invocations(hub)
    assert len(invocations) == 6
    assert {i["device"] for i in invocations} == {sensor.device_id}
    assert {i["trigger"] for i in invocations} == {"edge"}
    assert sorted(i["result"]["n"] for i in invocations) == list(range(1, 7))
    assert all(i["ok"] for i in invocations)

    # Everything the function sent arrives again (a reconnect, a crash before the ack):
    # the hub keeps one of each.
    wait_for(
        lambda: _outbox(sensor, "SELECT count(*) FROM outbox") == 0,
        timeout=30,
        what="everything acknowledged",
    )
    with hub.client() as api:
        stored = api.events(type="roost.function.invoked", limit=1000)
        counted = api.events(type="app.door.counted", limit=1000)
    assert len(stored) == 6
    again = [{"event": _as_sent(e, sensor.device_id)} for e in (*stored, *counted)]
    with sqlite3.connect(sensor.data_dir / "agent.db") as db:
        db.executemany(
            "INSERT INTO outbox (kind, body, created) VALUES ('event', ?, 0)",
            [(json.dumps(body),) for body in again],
        )
    wait_for(
        lambda: _outbox(sensor, "SELECT count(*) FROM outbox") == 0,
        timeout=30,
        what="the copies sent and acknowledged",
    )
    assert _counted(hub) == list(range(1, 7))
    assert len(_invocations(hub)) == 6

    # A cron on the device's clock, every second.
    tick = tmp_path / "tick.py"
    tick.write_text("def handle(event, ctx):\n    return [event['type'], ctx['trigger']]\n")
    cli_ok(
        config,
        "fn",
        "deploy",
        str(tick),
        "--name",
        "tick",
        "--on",
        "role=sensor",
        "--cron",
        "* * * * * *",
    )
    with hub.client() as api:
        ticks = wait_for(
            lambda: len(api.function_logs("tick")) >= 2 and api.function_logs("tick"),
            timeout=30,
            what="two cron firings on the device",
        )
    assert {tuple(t["result"]) for t in ticks} == {("roost.function.cron", "cron")}
    cli_ok(config, "fn", "rm", "tick")

    # Removed: the device lets it go, and door events start nothing any more.
    cli_ok(config, "fn", "rm", "door")
    with hub.client() as api:
        wait_for(
            lambda: not api.twin(sensor.device_id)["reported"].get("functions"),
            timeout=30,
            what="the device to drop the function",
        )
    sensor.emit("app.door.opened", {"n": 7}, subject="front")
    with hub.client() as api:
        wait_for(
            lambda: any(e["data"] == {"n": 7} for e in api.events(type="app.door.opened")),
            timeout=20,
            what="the last door event at the hub",
        )
    assert _counted(hub) == list(range(1, 7))


def _as_sent(stored: dict[str, Any], device_id: str) -> dict[str, Any]:
    """An event as the device sent it, from how the hub stored it."""
    prefix = f"roost://devices/{device_id}/"
    assert stored["source"].startswith(prefix)
    return {
        "specversion": "1.0",
        "id": stored["id"],
        "source": stored["source"].removeprefix(prefix),
        "type": stored["type"],
        "subject": stored["subject"],
        "time": stored["time"],
        "data": stored["data"],
    }
