"""``roost demo``: a whole Roost on this machine, in a temporary directory.

A hub (with its managed Mosquitto) and N real agents, each a separate process with its
own data dir and labels. Waits until every device is online, publishes a small app and
rolls it out in waves (unless ``--no-apps``), shows the fleet, keeps the table fresh, and
stops everything on Ctrl-C (or after ``--duration``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from roost.client import RoostClient
from roost.errors import RoostError

SITES = ("home", "shop", "office", "lab")
# The demo's app: says hello now and then; healthy as long as it runs.
SAMPLE_APP = """\
name = "hello"
version = "1.0.0"
description = "says hello every few seconds"
command = ["/bin/sh", "-c", "while true; do echo hello from $(hostname); sleep 5; done"]

[health]
kind = "command"
command = ["/bin/sh", "-c", "true"]
interval = 2
timeout = 2
grace = 5
"""
ROLES = ("router", "nas", "gateway", "media")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Demo:
    def __init__(self, devices: int, console: Console) -> None:
        self.devices = devices
        self.console = console
        self.root = Path(tempfile.mkdtemp(prefix="roost-demo-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = _free_port()
        self.mqtt_port = _free_port()

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "roost", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "ROOST_HEARTBEAT_INTERVAL_S": "5"},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def start_hub(self) -> RoostClient:
        hub_dir = self.root / "hub"
        hub = self._spawn(
            "hub",
            "hub",
            "--data",
            str(hub_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--mqtt-port",
            str(self.mqtt_port),
        )
        deadline = time.monotonic() + 60
        with self.console.status("starting the hub and its broker…"):
            while time.monotonic() < deadline:
                if hub.poll() is not None:
                    raise RoostError(f"the hub stopped; see {self.root / 'hub.log'}")
                if (hub_dir / "client.toml").exists():
                    client = RoostClient.from_config(hub_dir / "client.toml")
                    with contextlib.suppress(RoostError):
                        client.devices()
                        return client
                    client.close()
                time.sleep(0.2)
        raise RoostError(f"the hub did not come up in 60s; see {self.root / 'hub.log'}")

    def start_agents(self, client: RoostClient) -> None:
        for i in range(self.devices):
            labels = {"site": SITES[i % len(SITES)], "role": ROLES[i % len(ROLES)], "demo": "yes"}
            token = client.create_join_token(labels)["token"]
            self._spawn(f"agent{i}", "agent", "join", token, "--data", str(self.root / f"agent{i}"))

    def wait_online(self, client: RoostClient) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        with self.console.status("waiting for the devices to come online…") as status:
            while time.monotonic() < deadline:
                devices = client.devices()
                online = sum(d["status"] == "online" for d in devices)
                status.update(f"{online}/{self.devices} devices online…")
                if online == self.devices:
                    return devices
                time.sleep(0.3)
        raise RoostError(f"not every device came online in 60s; logs are in {self.root}")

    def roll_out_sample_app(self, client: RoostClient) -> dict[str, Any]:
        """Build, publish and roll out a small app to every device: canary, then the rest."""
        from roost.apps.bundle import build_bundle
        from roost.cli.rollouts import follow

        source = self.root / "hello"
        source.mkdir()
        (source / "roost.toml").write_text(SAMPLE_APP)
        with self.console.status("building and publishing the app hello@1.0.0…"):
            built = build_bundle(source, self.root / "bundles")
            client.publish_app(built.path)
        self.console.print(
            f"[bold]hello@1.0.0[/] published ({built.size} bytes, signed into the catalog); "
            "rolling it out: one canary device, then the rest"
        )
        rollout = client.deploy("hello", "1.0.0", "demo=yes", waves=["1", "100%"], soak_s=2)
        rollout = follow(client, rollout, self.console)
        if rollout["status"] != "done":
            raise RoostError(f"the sample rollout {rollout['status']}: {rollout['reason']}")
        return rollout

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def run_demo(devices: int, duration: float, apps: bool = True) -> None:
    from roost.cli.main import devices_table

    console = Console()
    if devices < 1:
        raise RoostError("--devices must be at least 1")
    demo = Demo(devices, console)
    try:
        client = demo.start_hub()
        console.print(f"[bold]hub[/] https://127.0.0.1:{demo.port}  (files in {demo.root})")
        started = time.monotonic()
        demo.start_agents(client)
        fleet = demo.wait_online(client)
        console.print(
            f"[green]{devices} devices enrolled and online in {time.monotonic() - started:.1f}s[/]"
        )
        if apps:
            rollout = demo.roll_out_sample_app(client)
            console.print(f"[green]hello@1.0.0 rolled out to {rollout['devices']} devices[/]")
        config = demo.root / "hub" / "client.toml"
        console.print(
            f"try, in another terminal:\n  export ROOST_CONFIG={config}\n"
            f"  roost devices ls\n  roost cmd {fleet[0]['id']} ping\n"
            f"  roost app logs {fleet[0]['id']} hello\n  roost rollout ls\n"
            "Ctrl-C stops everything."
        )
        end = time.monotonic() + duration if duration > 0 else float("inf")
        with Live(devices_table(fleet), console=console, refresh_per_second=1) as live:
            while time.monotonic() < end:
                time.sleep(min(2.0, max(0.0, end - time.monotonic())))
                live.update(devices_table(client.devices()))
        console.print()
        client.close()
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        demo.stop()
    console.print("demo stopped; everything it started is gone.")
