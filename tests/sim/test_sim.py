"""The fleet simulator: a virtual device's protocol core, and ``roost sim`` against a real hub.

The core tests drive ``VirtualDevice`` with events and read what it would publish. The
system test runs a hub with its managed Mosquitto and ``roost sim --devices 20`` as
processes, and checks through the API that every virtual device is online with metrics,
answers a ping, reports desired state, goes offline on a clean stop, and that a second
run reuses the cached identities instead of enrolling again.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from roost.errors import WireError
from roost.sim.device import RESEND_AFTER_S, MemoryOutbox, VirtualDevice
from roost.wire import Ack, Birth, Command, Desired, Heartbeat, Reply, Reported, Status, topics
from roost.wire.topics import Down, Up
from system.harness import Hub
from system.procs import StartProc, wait_for

DEVICE = "d" + "a" * 20
OTHER = "d" + "b" * 20
NOW = 1_800_000_000.0


def make_device(interval: float = 30.0) -> VirtualDevice:
    return VirtualDevice(DEVICE, 7, interval, random.Random(1), NOW)


def down(kind: Down, device: str = DEVICE) -> str:
    return topics.down(device, kind)


# -- the protocol core -------------------------------------------------------------------


def test_birth_and_will_carry_the_connection_epoch() -> None:
    device = make_device()
    will = device.will(42)
    assert will.topic == topics.up(DEVICE, Up.STATUS)
    assert Status.decode(will.payload, 1024) == Status(online=False, epoch=42)
    (birth,) = device.connected(NOW)
    assert birth.topic == topics.up(DEVICE, Up.BIRTH)
    assert birth.qos == 1
    decoded = Birth.decode(birth.payload, 65536)
    assert decoded.epoch == 42
    assert decoded.desired_version == 0
    assert decoded.inventory["simulated"] is True
    assert Status.decode(device.goodbye().payload, 1024) == Status(online=False, epoch=42)


def test_heartbeat_has_the_metrics_an_agent_sends() -> None:
    beat = make_device().heartbeat(NOW)
    assert beat.topic == topics.up(DEVICE, Up.HEARTBEAT)
    assert beat.qos == 0
    decoded = Heartbeat.decode(beat.payload, 65536)
    assert decoded.time == NOW
    assert set(decoded.metrics) == {"cpu", "memory", "disk", "load", "uptime"}


def test_ping_is_answered_through_the_outbox_until_acknowledged() -> None:
    device = make_device()
    command = Command(id="c1", name="ping", deadline=NOW + 10)
    (reply,) = device.receive(down(Down.COMMAND), command.encode(), NOW)
    assert reply.topic == topics.up(DEVICE, Up.REPLY)
    decoded = Reply.decode(reply.payload, 65536)
    assert decoded.ok
    assert decoded.id == "c1"
    assert decoded.result["pong"] is True
    assert device.resend(NOW + 1) == []
    again = device.resend(NOW + RESEND_AFTER_S)
    assert [p.payload for p in again] == [reply.payload]
    device.receive(down(Down.ACK), Ack(seqs=[decoded.seq]).encode(), NOW)
    assert len(device.outbox) == 0
    assert device.resend(NOW + 1000) == []


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (Command(id="c2", name="reboot"), "unknown command 'reboot'"),
        (Command(id="c3", name="ping", deadline=NOW - 1), "deadline had passed"),
    ],
)
def test_commands_it_cannot_run_get_an_error_reply(command: Command, error: str) -> None:
    (reply,) = make_device().receive(down(Down.COMMAND), command.encode(), NOW)
    decoded = Reply.decode(reply.payload, 65536)
    assert not decoded.ok
    assert error in decoded.error


def test_desired_state_is_applied_once_and_reported() -> None:
    device = make_device()
    desired = Desired(
        version=3,
        state={"labels": {"site": "hq"}, "config": {"mode": "eco"}, "heartbeat_interval": 2},
    )
    (reported,) = device.receive(down(Down.DESIRED), desired.encode(), NOW)
    decoded = Reported.decode(reported.payload, 65536)
    assert decoded.desired_version == 3
    assert decoded.state == {
        "labels": {"site": "hq"},
        "config": {"mode": "eco"},
        "heartbeat_interval": 2.0,
    }
    assert device.heartbeat_interval == 2.0
    assert device.receive(down(Down.DESIRED), desired.encode(), NOW) == []
    # The next birth says which desired state the device holds.
    birth = device.connected(NOW)[0]
    assert Birth.decode(birth.payload, 65536).desired_version == 3


def test_an_unusable_heartbeat_interval_falls_back_to_the_default() -> None:
    device = make_device(interval=5.0)
    desired = Desired(version=2, state={"heartbeat_interval": 0.001})
    device.receive(down(Down.DESIRED), desired.encode(), NOW)
    assert device.heartbeat_interval == 5.0


def test_a_new_connection_sends_everything_unacknowledged_after_the_birth() -> None:
    device = make_device()
    device.receive(down(Down.COMMAND), Command(id="c1", name="ping").encode(), NOW)
    device.will(43)
    birth, reply = device.connected(NOW + 1)
    assert birth.topic.endswith("/birth")
    assert reply.topic.endswith("/reply")


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (down(Down.COMMAND, OTHER), Command(id="c", name="ping").encode()),
        (topics.up(DEVICE, Up.HEARTBEAT), b"{}"),
        (down(Down.COMMAND), b"not json"),
        (down(Down.ACK), json.dumps({"seqs": ["x"]}).encode()),
    ],
)
def test_foreign_or_malformed_messages_are_wire_errors(topic: str, payload: bytes) -> None:
    with pytest.raises(WireError):
        make_device().receive(topic, payload, NOW)


def test_a_full_outbox_drops_its_oldest_message() -> None:
    outbox = MemoryOutbox(max_messages=2)
    for seq in (1, 2, 3):
        outbox.put(seq, Up.EVENT, f"{seq}".encode(), NOW)
    assert [p for _, p in outbox.all(NOW)] == [b"2", b"3"]


# -- roost sim against a real hub --------------------------------------------------------


@pytest.mark.system
def test_sim_devices_come_online_answer_and_leave(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub", settings={"ROOST_MOSQUITTO_BIN": mosquitto_bin})
    argv = [
        sys.executable,
        "-m",
        "roost",
        "sim",
        "--devices",
        "20",
        "--heartbeat",
        "1",
        "--config",
        str(hub.data_dir / "client.toml"),
        "--data",
        str(tmp_path / "sim"),
    ]
    sim = start_proc([*argv, "--duration", "8"], name="sim")
    with hub.client() as api:

        def all_online_with_metrics() -> list[str]:
            devices = api.devices("simulated=true")
            ready = [d["id"] for d in devices if d["status"] == "online" and d["metrics"]]
            return ready if len(ready) == 20 else []

        ids = wait_for(all_online_with_metrics, timeout=20, what="20 simulated devices online")
        answer = api.command(ids[0], "ping", timeout=5)
        assert answer["status"] == "ok"
        assert answer["result"]["pong"] is True
        wait_for(lambda: api.twin(ids[1])["in_sync"], timeout=5, what="desired state reported")

        assert sim.wait(timeout=30) == 0, sim.log_tail()
        assert "sim: 20 devices, 20 connected" in sim.log_text()
        # A clean stop: every device says it goes offline before it disconnects.
        wait_for(
            lambda: all(d["status"] == "offline" for d in api.devices("simulated=true")),
            timeout=5,
            what="simulated devices offline after a clean stop",
        )

        # A second run reuses the cached identities: no new devices at the hub.
        again = start_proc([*argv, "--duration", "1"], name="sim-again")
        assert again.wait(timeout=30) == 0, again.log_tail()
        assert "(0 enrolled" in again.log_text()
        assert len(api.devices("simulated=true")) == 20
