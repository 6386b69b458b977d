"""A hub with its managed Mosquitto and three real agents, on SQLite and on PostgreSQL.

Covers enrollment, presence, inventory and metrics, labels through desired state, the
twin, commands (including an unknown one), outbox delivery across a broker crash, and a
hub restart with state intact.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.errors import CommandTimeoutError
from system.harness import Hub, kill_pid
from system.procs import StartProc, wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url


def test_fleet_end_to_end(
    start_proc: StartProc, tmp_path: Path, database_url: str, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub", database_url)
    agents = [
        hub.join(tmp_path / f"agent{i}", {"role": "router", "site": f"s{i}"}) for i in range(3)
    ]
    ids = [a.device_id for a in agents]
    hub.wait_online(ids)

    with hub.client() as api:
        devices = {d["id"]: d for d in api.devices()}
        assert set(devices) == set(ids)
        first = devices[ids[0]]
        assert first["labels"] == {"role": "router", "site": "s0"}
        for key in ("os", "kernel", "arch", "cpus", "memory_bytes", "disk_bytes", "agent_version"):
            assert key in first["inventory"], key
        wait_for(
            lambda: (
                {"cpu", "memory", "disk", "load", "uptime"} <= set(api.device(ids[0])["metrics"])
            ),
            timeout=10,
            what="metrics from heartbeats",
        )
        assert [d["id"] for d in api.devices("site=s1")] == [ids[1]]
        enrolled = {e["subject"] for e in api.events(type="roost.device.enrolled")}
        assert enrolled == set(ids)
        assert {e["subject"] for e in api.events(type="roost.device.online")} == set(ids)

        # Labels travel as desired state; the agent reports them back.
        api.label(ids[0], {"site": "hq", "role": None})
        api.set_desired(ids[0], {"config": {"mode": "eco"}, "heartbeat_interval": 2})
        wait_for(lambda: api.twin(ids[0])["in_sync"], timeout=15, what="twin in sync")
        reported = api.twin(ids[0])["reported"]
        assert reported["labels"] == {"site": "hq"}
        assert reported["config"] == {"mode": "eco"}
        assert reported["heartbeat_interval"] == 2

        # Commands: answered, unknown ones answered with an error, logs tail.
        assert api.command(ids[1], "ping", timeout=10)["result"]["pong"] is True
        unknown = api.command(ids[1], "reboot-the-moon", timeout=10)
        assert unknown["status"] == "error"
        assert "unknown command" in unknown["error"]
        logs = api.command(ids[1], "logs", {"lines": 5}, timeout=10)["result"]["lines"]
        assert 0 < len(logs) <= 5
        assert api.command(ids[2], "reload-config", timeout=10)["status"] == "ok"

        # Broker crash: events queued on the devices while it is away all arrive.
        kill_pid(hub.broker_pid())
        sent = [agent.emit("test.reading", {"n": n}) for n in range(5) for agent in agents]
        wait_for(
            lambda: len(api.events(type="test.reading", limit=1000)) == len(sent),
            timeout=60,
            what="all queued events delivered after the broker came back",
        )
        assert {e["id"] for e in api.events(type="test.reading", limit=1000)} == set(sent)
        hub.wait_online(ids)

    # Hub restart: state intact, devices back online, commands work.
    hub.restart()
    with hub.client() as api:
        again = {d["id"]: d for d in api.devices()}
        assert again[ids[0]]["labels"] == {"site": "hq"}
        assert api.twin(ids[0])["desired"]["config"] == {"mode": "eco"}
        hub.wait_online(ids)
        assert api.command(ids[0], "ping", timeout=10)["status"] == "ok"

        # A stopped agent's command times out with a clear error.
        agents[2].proc.stop()
        with pytest.raises(CommandTimeoutError):
            api.command(ids[2], "ping", timeout=1)
