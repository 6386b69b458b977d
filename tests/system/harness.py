"""A real Roost on free ports: a hub (with its managed Mosquitto) and real agents.

System tests build their fleet from these: ``Hub.start`` runs ``roost hub`` as a
process and waits until its API answers; ``Hub.join`` makes a join token and runs
``roost agent join`` as another process with its own data dir.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import httpx

from roost.client import RoostClient
from system.procs import Proc, free_port, wait_for

StartProc = Callable[..., Proc]
ROOST = [sys.executable, "-m", "roost"]


def cli(config: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``roost ARGS`` as its own process, talking to the hub of client config ``config``."""
    return subprocess.run(
        [*ROOST, *args],
        env={**os.environ, "ROOST_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_ok(config: Path, *args: str) -> str:
    """``cli`` that must succeed; its standard output."""
    done = cli(config, *args)
    assert done.returncode == 0, f"roost {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Agent:
    proc: Proc
    data_dir: Path
    device_id: str

    def emit(self, event_type: str, data: Any, subject: str = "") -> str:
        """``roost agent emit`` on this device: the event goes through its outbox."""
        argv = [*ROOST, "agent", "emit", event_type, "--payload", json.dumps(data)]
        argv += ["--subject", subject, "--data", str(self.data_dir)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def share_files(self) -> list[Path]:
        """The store's shares kept on this device (not part files, not hash files)."""
        root = self.data_dir / "shares"
        return [p for p in root.iterdir() if "." not in p.name] if root.exists() else []


@dataclass
class Hub:
    start_proc: StartProc
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @classmethod
    def start(
        cls,
        start_proc: StartProc,
        data_dir: Path,
        database_url: str = "",
        settings: Mapping[str, str] | None = None,
    ) -> Hub:
        env = {"ROOST_DATABASE_URL": database_url, "ROOST_HEARTBEAT_INTERVAL_S": "1"}
        env.update(settings or {})
        hub = cls(start_proc, data_dir, env)
        hub.run()
        return hub

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def run(self) -> None:
        argv: Sequence[str | PathLike[str]] = [
            *ROOST,
            "hub",
            "--data",
            self.data_dir,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--mqtt-port",
            str(self.mqtt_port),
        ]
        self.proc = self.start_proc(argv, name="hub", env={**self.env, "PYTHONUNBUFFERED": "1"})
        wait_for(self._ready, timeout=60, what=f"hub on port {self.port} to answer")

    def _ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive:
            raise AssertionError(f"hub exited early:\n{self.proc.log_tail()}")
        if not (self.data_dir / "client.toml").exists():
            return False
        try:
            ca = ssl.create_default_context(cafile=str(self.data_dir / "pki" / "ca.pem"))
            r = httpx.get(f"{self.url}/healthz", verify=ca)
        except httpx.TransportError:
            return False
        return r.status_code == 200

    def stop(self) -> None:
        """Stop the hub and its broker; ``run()`` starts it again on the same data and ports."""
        assert self.proc is not None
        self.proc.stop(timeout=20)

    def restart(self) -> None:
        self.stop()
        self.run()

    def client(self, token: str | None = None) -> RoostClient:
        client = RoostClient.from_config(self.data_dir / "client.toml")
        return client.with_token(token) if token else client

    def join(
        self,
        data_dir: Path,
        labels: Mapping[str, str] | None = None,
        client: RoostClient | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Agent:
        with client or self.client() as api:
            token = api.create_join_token(dict(labels or {}))["token"]
        proc = self.start_proc(
            [*ROOST, "agent", "join", token, "--data", data_dir],
            name=f"agent-{data_dir.name}",
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
        )
        identity = data_dir / "identity.json"
        wait_for(lambda: identity.exists() or not proc.alive, timeout=30, what="enrollment")
        if not identity.exists():
            raise AssertionError(f"agent failed to join:\n{proc.log_tail()}")
        device_id = json.loads(identity.read_text())["device_id"]
        return Agent(proc, data_dir, device_id)

    def run_agent(self, agent: Agent, env: Mapping[str, str] | None = None) -> Agent:
        """Start an enrolled agent again (after it was stopped or killed)."""
        agent.proc = self.start_proc(
            [*ROOST, "agent", "run", "--data", agent.data_dir],
            name=f"agent-{agent.data_dir.name}",
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
        )
        return agent

    def broker_pid(self) -> int:
        """The managed Mosquitto's pid (the only process with our config on its command line)."""
        conf = str(self.data_dir / "broker" / "mosquitto.conf")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if conf.encode() in cmdline:
                return int(entry.name)
        raise AssertionError("the managed broker is not running")

    def wait_online(self, device_ids: Sequence[str], timeout: float = 30) -> None:
        with self.client() as api:

            def all_online() -> bool:
                status = {d["id"]: d["status"] for d in api.devices()}
                return all(status.get(d) == "online" for d in device_ids)

            wait_for(all_online, timeout=timeout, what=f"{len(device_ids)} devices online")

    def wait_offering(self, device_ids: Sequence[str], timeout: float = 30) -> None:
        """Until each of these devices reports free space for the store."""
        with self.client() as api:

            def offering() -> bool:
                free = {d["id"]: d["metrics"].get("storage_free", 0) for d in api.devices()}
                return all(free.get(d, 0) > 0 for d in device_ids)

            wait_for(offering, timeout=timeout, what=f"{len(device_ids)} devices to offer space")


def kill_pid(pid: int) -> None:
    import signal

    os.kill(pid, signal.SIGKILL)
