"""Events from an app on a device reach the hub: a real hub, a real agent, a sandboxed app.

The app carries ``roost.device`` (just ``roost/__init__.py``, ``device.py`` and
``errors.py`` in its bundle) and emits readings with ids of its own, keeping its progress
in its data dir. Half-way, it waits; the agent is killed there and started again, and the
app, started again by it, sends its last reading once more, as an app that does not know
whether its last event got through would. The hub has every reading once, with the app's
source and the subject it gave. A line claiming another source is stored under the app's
own; an oversized event is refused to the app, which says why.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import roost
from roost.apps.bundle import build_bundle
from roost.client import RoostClient
from system.harness import Hub
from system.procs import StartProc, wait_for

COUNT = 20
HALF = 10

MANIFEST = """\
name = "sensor"
version = "1.0.0"
description = "emits readings through the agent"
command = ["/usr/bin/python3", "sensor.py"]
environment = {{ COUNT = "{count}", HALF = "{half}" }}

[data]
persistent = true
"""

SENSOR = """\
import json, os, socket, time
from roost import device
from roost.errors import EventRefusedError

data = os.environ["ROOST_DATA_DIR"]
count, half = int(os.environ["COUNT"]), int(os.environ["HALF"])
progress = os.path.join(data, "next")

def say(**what):
    print(json.dumps(what), flush=True)

n = int(open(progress).read()) if os.path.exists(progress) else 0
if n == 0:
    # A line of its own, claiming to come from another device's app.
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.environ["ROOST_EVENTS_SOCKET"])
    s.sendall(b'{"type": "sensor.forged", "id": "forged-1",'
              b' "source": "roost://devices/someone-else/apps/other"}\\n')
    say(forged=json.loads(s.makefile().readline()))
    s.close()
    try:
        device.emit("sensor.big", "x" * 40000)
        say(big="taken")
    except EventRefusedError as err:
        say(big=str(err))
else:
    n -= 1  # killed before it knew: the last reading once more
    say(again=n)
while n < count:
    if n == half:
        say(waiting=n)
        while not os.path.exists(os.path.join(data, "go")):
            time.sleep(0.05)
    device.emit("sensor.reading", {"n": n}, subject="alice", id=f"reading-{n}")
    n += 1
    with open(progress + ".new", "w") as f:
        f.write(str(n))
    os.replace(progress + ".new", progress)
say(done=n)
while True:
    time.sleep(60)
"""


def _sensor_bundle(work: Path) -> Path:
    source = work / "sensor"
    (source / "roost").mkdir(parents=True)
    (source / "roost.toml").write_text(MANIFEST.format(count=COUNT, half=HALF))
    (source / "sensor.py").write_text(SENSOR)
    package = Path(roost.__file__).parent
    for name in ("__init__.py", "device.py", "errors.py"):
        shutil.copy(package / name, source / "roost" / name)
    return build_bundle(source, work / "bundles").path


def _events(api: RoostClient, device_id: str, event_type: str) -> list[dict[str, Any]]:
    return api.events(type=event_type, device=device_id, limit=1000)


def _said(log: Path) -> list[dict[str, Any]]:
    """What the app printed (its JSON lines), from its log on the device."""
    if not log.exists():
        return []
    lines = [line.strip() for line in log.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_a_sandboxed_app_emits_events_that_reach_the_hub_once_each(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    agent = hub.join(tmp_path / "agent")
    hub.wait_online([agent.device_id])
    log = agent.data_dir / "app-logs" / "sensor.log"
    source = f"roost://devices/{agent.device_id}/apps/sensor"

    with hub.client() as api:
        api.publish_app(_sensor_bundle(tmp_path))
        api.set_desired(agent.device_id, {"apps": {"sensor": {"version": "1.0.0"}}})
        wait_for(
            lambda: len(_events(api, agent.device_id, "sensor.reading")) == HALF,
            timeout=60,
            what=f"the first {HALF} readings at the hub",
        )
        reported = api.twin(agent.device_id)["reported"]["apps"]["sensor"]
        assert reported["isolation"].startswith("bwrap"), reported

        # The forged line was taken, under the app's own source; the big one refused.
        said = _said(log)
        assert said[0] == {"forged": {"ok": True, "id": "forged-1"}}
        assert said[1] == {"big": "the event is 40075 bytes, more than the 32768-byte limit"}
        assert {"waiting": HALF} in said
        forged = _events(api, agent.device_id, "sensor.forged")
        assert [(e["id"], e["source"]) for e in forged] == [("forged-1", source)]
        assert _events(api, agent.device_id, "sensor.big") == []

        # The agent dies half-way (its app with it) and comes back.
        agent.proc.kill()
        (agent.data_dir / "apps" / "sensor" / "data" / "go").write_text("")
        hub.run_agent(agent)
        wait_for(
            lambda: {"done": COUNT} in _said(log),
            timeout=60,
            what="the app to emit its last reading after the restart",
        )
        wait_for(
            lambda: len(_events(api, agent.device_id, "sensor.reading")) >= COUNT,
            timeout=30,
            what=f"{COUNT} readings at the hub",
        )
        readings = _events(api, agent.device_id, "sensor.reading")

    assert [e["id"] for e in readings] == [f"reading-{n}" for n in range(COUNT)]
    assert {e["source"] for e in readings} == {source}
    assert {e["subject"] for e in readings} == {"alice"}
    assert [e["data"] for e in readings] == [{"n": n} for n in range(COUNT)]
    # It did send one reading twice: once before the kill, once after.
    assert {"again": HALF - 1} in _said(log)
