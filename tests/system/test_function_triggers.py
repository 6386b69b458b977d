"""What starts hub functions on a real hub: an event trigger (the events it matches and
no others), a cron (every second here; stopped by a deploy without it, gone with the
function), and the events a triggered function emits, stored once though its action was
tried again. Bad triggers and crons are refused with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roost.client import RoostClient
from roost.errors import RoostError
from system.harness import Hub, cli, cli_ok
from system.procs import StartProc, wait_for

RETRY_FAST = {
    "ROOST_DELIVERY_MAX_ATTEMPTS": "3",
    "ROOST_DELIVERY_BACKOFF_BASE_S": "0.05",
    "ROOST_DELIVERY_BACKOFF_CAP_S": "0.1",
}

DOOR = """\
def handle(event, ctx):
    print("door", event["type"], event["data"])
    return {"type": event["type"], "key": ctx["key"]}
"""

TICK = """\
def handle(event, ctx):
    return event["type"], event["subject"]
"""

# Fails its first try (after emitting: what a failed try emits is dropped); the action is
# tried again with the same key, and the event the second try emits is stored.
RELAY = """\
calls = 0

def handle(event, ctx):
    global calls
    calls += 1
    ctx.emit("app.bell.relayed", {"bell": event["data"]}, subject="hall")
    if calls == 1:
        raise RuntimeError("the first try fails")
    return calls
"""


def refusal(config: Path, *args: str) -> str:
    """The one line a refused ``roost ARGS`` prints."""
    done = cli(config, *args)
    assert done.returncode != 0, done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr.strip()


def test_function_triggers_crons_and_emitted_events(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub", settings=RETRY_FAST)
    config = hub.data_dir / "client.toml"
    door, tick, relay = tmp_path / "door.py", tmp_path / "tick.py", tmp_path / "relay.py"
    door.write_text(DOOR)
    tick.write_text(TICK)
    relay.write_text(RELAY)
    deploy = ("fn", "deploy", str(door), "--name", "door")

    # -- refused, with one line --------------------------------------------------------
    assert refusal(config, *deploy, "--cron", "every minute") == (
        "error: cron 'every minute' is not a cron expression like \"*/5 * * * *\" (UTC)"
    )
    assert refusal(config, *deploy, "--trigger", "") == (
        "error: trigger type: patterns of 1 to 200 characters"
    )
    with hub.client() as api:
        with pytest.raises(RoostError, match=r"^a trigger has type, source and subject, not"):
            api.deploy_function("door", {"door.py": DOOR}, "door", trigger={"kind": ["x"]})
        with pytest.raises(RoostError, match="at least one event type pattern"):
            api.deploy_function("door", {"door.py": DOOR}, "door", trigger={"type": []})
        with pytest.raises(RoostError, match="functions' own: deploy the function with --cron"):
            api.add_schedule("fake", "* * * * *", "roost.function.cron", "door")
        assert api.functions() == []

    # -- an event trigger ---------------------------------------------------------------
    assert cli_ok(config, *deploy, "--trigger", "app.door.*") == (
        "function door version 1 deployed (on hub, events app.door.*)\n"
    )
    cli_ok(config, "events", "send", "app.window.opened", "--data", '{"window": "attic"}')
    cli_ok(config, "events", "send", "app.door.opened", "--data", '{"door": "front"}')
    with hub.client() as api:
        (ran,) = wait_for(lambda: api.function_logs("door"), timeout=30, what="door to run")
        # The window came first: had it fired, its action would be in the outbox already.
        (action,) = api.actions(rule="fn:door")
    assert ran["ok"], ran["error"]
    assert ran["result"] == {"type": "app.door.opened", "key": action["key"]}
    assert action["kind"] == "invoke"
    assert "door app.door.opened {'door': 'front'}" in cli_ok(config, "fn", "logs", "door")
    (listed,) = cli_ok(config, "rules", "actions", "--rule", "fn:door").splitlines()
    assert ' fn:door invoke {"function": "door", "input": {' in listed

    # -- a cron ---------------------------------------------------------------------------
    every_second = ("--cron", "* * * * * *")
    cli_ok(config, "fn", "deploy", str(tick), "--name", "tick", *every_second)
    assert "fn:tick  * * * * * *  roost.function.cron" in cli_ok(config, "schedules", "ls")
    with hub.client() as api:
        first = wait_for(lambda: api.function_logs("tick"), timeout=30, what="the cron")[-1]
    assert first["result"] == ["roost.function.cron", "tick"]
    assert refusal(config, "schedules", "rm", "fn:tick") == (
        "error: schedule 'fn:tick' is the cron of function 'tick': deploy the function again "
        "without --cron, or roost fn rm tick"
    )
    assert "version 2" in cli_ok(config, "fn", "deploy", str(tick), "--name", "tick")
    assert "fn:tick" not in cli_ok(config, "schedules", "ls")
    # Another cron fires twice: the hub's schedule loop has passed since tick lost its
    # own, and fired no tick in those passes.
    cli_ok(config, "fn", "deploy", str(tick), "--name", "tock", *every_second)
    with hub.client() as api:
        wait_for(lambda: len(_crons(api, "tock")) >= 2, timeout=30, what="tock twice")
        since = _crons(api, "tock")[0]["seq"]
        assert [e for e in _crons(api, "tick") if e["seq"] > since] == []
    cli_ok(config, "fn", "rm", "tock")
    assert "fn:tock" not in cli_ok(config, "schedules", "ls")

    # -- events a triggered function emits ----------------------------------------------
    cli_ok(
        config, "fn", "deploy", str(relay), "--name", "relay", "--concurrency", "1",
        "--trigger", "app.bell.rang",
    )  # fmt: skip
    cli_ok(config, "events", "send", "app.bell.rang", "--data", '"ding"')
    with hub.client() as api:
        wait_for(
            lambda: any(i["ok"] for i in api.function_logs("relay")),
            timeout=30,
            what="relay to succeed on its second try",
        )
        tries = api.function_logs("relay")
        (action,) = api.actions(rule="fn:relay")
        (relayed,) = api.events(type="app.bell.relayed")
    assert [i["ok"] for i in tries] == [True, False], "newest first"
    assert "the first try fails" in tries[1]["error"]
    assert (relayed["id"], relayed["source"]) == (action["key"] + "/0", "roost://functions/relay")
    assert (relayed["subject"], relayed["data"]) == ("hall", {"bell": "ding"})
    shown = cli_ok(config, "events", "ls", "--type", "app.bell.relayed").splitlines()
    assert len(shown) == 1


def _crons(api: RoostClient, function: str) -> list[dict[str, Any]]:
    events = api.events(type="roost.function.cron", limit=1000)
    return [e for e in events if e["subject"] == function]
