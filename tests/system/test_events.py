"""Events through the API and the CLI: sent, stored once, followed live, kept per tenant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roost.errors import HubError
from system.harness import ROOST, Hub, cli
from system.procs import StartProc, wait_for


def test_events_are_sent_stored_once_followed_and_kept_per_tenant(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"

    # `roost events tail` shows the newest stored event, then follows what comes.
    with hub.client() as api:
        api.send_event("home.started")
    tail = start_proc(
        [*ROOST, "events", "tail", "--type", "home.*", "--last", "1"],
        name="tail",
        env={"ROOST_CONFIG": str(config), "PYTHONUNBUFFERED": "1"},
    )

    def lines() -> list[str]:
        return [line for line in tail.log_text().splitlines() if line[:2] == "20"][1:]

    wait_for(lambda: "home.started" in tail.log_text(), timeout=30, what="the tail to start")
    with hub.client() as api:
        door = ("--subject", "door/front", "--source", "sensors", "--id", "e-1")
        sent = cli(config, "events", "send", "home.door.forced", *door, "--data", '{"n": 1}')
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip() == "e-1"
        # The same source and id again is the same event: stored once.
        again = api.send_event(
            "home.door.forced", {"n": 1}, "door/front", source="sensors", id="e-1"
        )
        assert again["ids"] == ["e-1"]
        api.send_events([{"type": "home.light.on"}, {"type": "office.light.on"}])
        stored = api.events(type="home.*")
        assert [e["type"] for e in stored] == ["home.started", "home.door.forced", "home.light.on"]
        assert stored[1]["source"] == "roost://api/sensors"
        assert (stored[1]["subject"], stored[1]["data"]) == ("door/front", {"n": 1})

        wait_for(lambda: len(lines()) >= 2, timeout=20, what="the tail to show two events")
        shown = lines()
        assert "home.door.forced door/front" in shown[0]
        assert "home.light.on" in shown[1]
        assert not any("office" in line for line in shown)

        bad = cli(config, "events", "send", "not a type")
        assert bad.returncode != 0
        assert "event.type: 'not a type' must be letters" in bad.stderr
        with pytest.raises(HubError, match=r"events\[1\]\.time"):
            api.send_events([{"type": "ok"}, {"type": "ok", "time": "noon"}])
        assert len(api.events(type="ok")) == 0, "a refused batch stores nothing"

        acme = api.create_tenant("acme")["admin_token"]
        with api.with_token(acme) as theirs:
            assert theirs.events() == []
            theirs.send_event("home.door.forced", source="sensors", id="e-1")
            assert len(theirs.events()) == 1
        assert len(api.events(type="home.door.forced")) == 1

        newest = json.loads(cli(config, "events", "ls", "--limit", "1").stdout)
        assert newest["type"] == "office.light.on"


def test_a_schedule_sends_events_until_it_is_removed(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    # A sixth field is seconds: every 2 s, so the test need not wait for a minute.
    tick = ("--cron", "* * * * * */2", "--type", "clock.tick", "--data", '{"from": "cron"}')
    added = cli(config, "schedules", "add", "tick", *tick)
    assert added.returncode == 0, added.stderr
    assert "tick" in cli(config, "schedules", "ls").stdout
    with hub.client() as api:
        wait_for(lambda: len(api.events(type="clock.tick")) >= 2, timeout=20, what="2 ticks")
        first = api.events(type="clock.tick")[0]
        assert (first["source"], first["subject"]) == ("roost://hub/schedules", "tick")
        assert first["data"] == {"from": "cron"}
        assert cli(config, "schedules", "rm", "tick").returncode == 0
        assert api.schedules() == []
        bad = cli(config, "schedules", "add", "x", "--cron", "every day", "--type", "t")
        assert bad.returncode != 0
        assert "is not a cron expression" in bad.stderr
