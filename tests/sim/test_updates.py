"""Virtual devices take app releases from a real hub's signed catalog, verified for real.

A hub with its managed Mosquitto and ``roost sim --devices 3`` run as processes. Two
releases are published; the bundle of the second is then damaged in the hub's blob store
(same length, one byte changed), which only TUF's hash check can notice. Through the
API each device is told an app: one runs it, one stages it and then applies it, one
refuses the damaged release. The devices' own trusted metadata and verified bundles are
on disk, and the simulator counts what the hub answered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from roost.apps.bundle import build_bundle
from roost.client import RoostClient
from system.harness import Hub
from system.procs import StartProc, wait_for

APP = """\
name = "hello"
version = "{version}"
description = "a release for virtual devices"
command = ["/bin/true"]
"""


def publish(api: RoostClient, root: Path, version: str) -> dict[str, Any]:
    source = root / f"hello-{version}"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(APP.format(version=version))
    (source / "README").write_text(f"hello {version}\n")
    bundle = build_bundle(source, root / "bundles")
    published: dict[str, Any] = api.publish_app(bundle.path)
    return published


def damage_blob(hub_dir: Path, sha256: str) -> None:
    (blob,) = hub_dir.rglob(sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))


def app_of(api: RoostClient, device_id: str) -> dict[str, Any]:
    app: dict[str, Any] = (api.twin(device_id)["reported"].get("apps") or {}).get("hello", {})
    return app


@pytest.mark.system
def test_virtual_devices_verify_releases_from_the_signed_catalog(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub", settings={"ROOST_MOSQUITTO_BIN": mosquitto_bin})
    with hub.client() as api:
        publish(api, tmp_path, "1.0.0")
        damaged = publish(api, tmp_path, "1.1.0")
        damage_blob(hub.data_dir, damaged["sha256"])

        data = tmp_path / "sim"
        argv = [sys.executable, "-m", "roost", "sim", "--devices", "3", "--heartbeat", "1"]
        argv += ["--config", str(hub.data_dir / "client.toml"), "--data", str(data)]
        sim = start_proc([*argv, "--duration", "60"], name="sim")

        def three_online() -> list[str]:
            devices = api.devices("simulated=true")
            online = sorted(d["id"] for d in devices if d["status"] == "online")
            return online if len(online) == 3 else []

        runs, stages, refuses = wait_for(three_online, timeout=30, what="3 devices online")
        api.set_desired(runs, {"apps": {"hello": {"version": "1.0.0"}}})
        api.set_desired(stages, {"apps": {"hello": {"version": "1.0.0", "apply": False}}})
        api.set_desired(refuses, {"apps": {"hello": {"version": "1.1.0"}}})

        wait_for(lambda: app_of(api, runs).get("state") == "running", 30, what="running")
        app = app_of(api, runs)
        assert app["kind"] == "app"
        assert app["version"] == app["wanted"] == "1.0.0"
        assert isinstance(app["since"], float)

        wait_for(lambda: app_of(api, stages).get("state") == "staged", 30, what="staged")
        assert app_of(api, stages)["version"] is None
        api.set_desired(stages, {"apps": {"hello": {"version": "1.0.0", "apply": True}}})
        wait_for(lambda: app_of(api, stages).get("version") == "1.0.0", 30, what="applied")
        assert app_of(api, stages)["state"] == "running"

        wait_for(lambda: app_of(api, refuses).get("state") == "failed", 30, what="refused")
        refused = app_of(api, refuses)
        assert refused["version"] is None
        assert refused["wanted"] == "1.1.0"
        assert "refused target apps/hello/hello-1.1.0.tar.gz" in refused["error"]

    # Each device keeps its own trusted metadata, and only verified bundles.
    device_dir = data / "devices" / runs / "tuf"
    assert (device_dir / "metadata" / "root.json").exists()
    assert [p.name for p in (device_dir / "targets").iterdir()] == [
        "apps%2Fhello%2Fhello-1.0.0.tar.gz"
    ]
    assert not (data / "devices" / refuses / "tuf" / "targets").exists() or not any(
        (data / "devices" / refuses / "tuf" / "targets").iterdir()
    )

    assert sim.stop(timeout=30) == 0, sim.log_tail()
    assert "2 app releases verified, 1 refused" in sim.log_text()
    status = json.loads((data / "status.json").read_text())
    assert status["apps_verified"] == 2  # staging needs no second download
    assert status["apps_failed"] == 1
    assert status["tuf_target_requests"] == 3
    assert status["tuf_metadata_requests"] >= 3 * 5  # root 1 and 2, timestamp, snapshot, targets
    assert status["tuf_unanswered"] == 0
