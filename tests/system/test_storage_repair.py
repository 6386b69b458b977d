"""The store keeps data alive by itself: devices scrub, the hub repairs.

Eight real agents offering space, one object at 3-of-5 (three devices hold none of its
shares), and short intervals: agents scrub every second, the hub's repair loop looks
every half second, and a device offline for more than three seconds is gone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from system.harness import Agent, Hub, cli
from system.procs import StartProc, wait_for

OBJECT = b"".join(b"Roost repair test line %06d\n" % i for i in range(12_000))  # ~330 KB


def _share_file(agent: Agent) -> Path:
    (path,) = (p for p in (agent.data_dir / "shares").iterdir() if "." not in p.name)
    return path


def _get(hub: Hub) -> bytes:
    out = io.BytesIO()
    with hub.client() as api:
        api.get_object("photos", "keep.bin", out)
    return out.getvalue()


def _holders(hub: Hub) -> dict[str, dict[str, Any]]:
    """device id -> its share, once all five are stored on online devices."""
    with hub.client() as api:
        info = api.stat_object("photos", "keep.bin")
    return {s["device_id"]: s for s in info["shares"]}


def _healthy_without(hub: Hub, gone: set[str]) -> bool:
    shares = _holders(hub)
    return (
        len(shares) == 5
        and not gone & set(shares)
        and all(s["state"] == "stored" and s["online"] for s in shares.values())
    )


def test_a_corrupt_share_and_devices_gone_for_good_are_repaired_by_themselves(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(
        start_proc,
        tmp_path / "hub",
        settings={
            "ROOST_STORE_REPAIR_INTERVAL_S": "0.5",
            "ROOST_STORE_REPAIR_GRACE_S": "3",
        },
    )
    env = {"ROOST_STORAGE_QUOTA_BYTES": str(8 << 20), "ROOST_STORAGE_SCRUB_INTERVAL_S": "1"}
    agents = [hub.join(tmp_path / f"a{i}", env=env) for i in range(8)]
    by_id = {a.device_id: a for a in agents}
    hub.wait_online(list(by_id))
    hub.wait_offering(list(by_id))
    with hub.client() as api:
        source = tmp_path / "keep.bin"
        source.write_bytes(OBJECT)
        api.put_object("photos", "keep.bin", source, code=(3, 5))
    first = _holders(hub)
    assert len(first) == 5

    # A share rots on its device's disk: the device's scrub reports it, the hub's loop
    # rebuilds it (a new share, on whichever device placement picks: maybe the same
    # one), and the rotten file is deleted.
    rotten_on = next(iter(first))
    path = _share_file(by_id[rotten_on])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    wait_for(lambda: not path.exists(), timeout=30, what="the rotten share to be replaced")
    assert f"share {path.name} is corrupt; reported to the hub" in by_id[rotten_on].proc.log_text()
    with hub.client() as api:
        (event,) = api.events(type="roost.store.share-corrupt")
    assert event["subject"] == rotten_on
    assert event["data"]["share"] == path.name
    assert (event["data"]["bucket"], event["data"]["name"]) == ("photos", "keep.bin")
    assert _healthy_without(hub, set())
    assert _get(hub) == OBJECT

    # A device stops for good: once offline past the grace its share moves elsewhere.
    stopped = next(d for d in _holders(hub) if d != rotten_on)
    by_id[stopped].proc.stop()
    wait_for(lambda: _healthy_without(hub, {stopped}), timeout=30, what="repair of a lost device")
    assert _get(hub) == OBJECT

    # A revoked device: its share moves at once, though the agent still runs.
    revoked = next(d for d in _holders(hub) if d != rotten_on)
    with hub.client() as api:
        api.revoke(revoked)
    wait_for(lambda: _healthy_without(hub, {revoked}), timeout=30, what="repair off a revoked one")
    assert _get(hub) == OBJECT

    # `roost devices drain`: the device takes no new shares and its share moves off.
    drained = next(d for d in _holders(hub) if d != rotten_on)
    done = cli(hub.data_dir / "client.toml", "devices", "drain", drained)
    assert done.returncode == 0, done.stderr
    # The repair loop, seeing the label, may have moved it first: then the drain moved 0.
    assert f"{drained}: moved " in done.stdout
    assert _healthy_without(hub, {drained, stopped, revoked})
    with hub.client() as api:
        assert api.device(drained)["labels"] == {"storage.drain": "true"}
        small = tmp_path / "small.bin"
        small.write_bytes(OBJECT[:4000])
        api.put_object("photos", "small.bin", small, code=(1, 5))
        placed = {s["device_id"] for s in api.stat_object("photos", "small.bin")["shares"]}
    assert placed == set(by_id) - {drained, stopped, revoked}, "none on the draining device"
    assert _get(hub) == OBJECT
