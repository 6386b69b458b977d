"""What the benchmarks in ``bench/`` stand on: a real hub on free ports, process meters,
and the facts about the machine that make figures comparable.

``LocalHub`` runs ``python -m roost hub`` (and so its managed Mosquitto) in a directory
of its own, and always stops it, whatever happened. ``spawn_sim`` runs ``roost sim``
against it, followed through its ``status.json`` (``read_status``, ``wait_phase``).
``Meter`` reads a process's CPU time and RSS through psutil, so a figure covers exactly
a measured window.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import psutil

from roost import __version__
from roost.client import ClientConfig, RoostClient
from roost.errors import HubError

ROOST = [sys.executable, "-m", "roost"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_version(binary: str = "mosquitto") -> str:
    for candidate in (binary, "/usr/sbin/mosquitto"):
        try:
            out = subprocess.run(
                [candidate, "-h"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        first = (out.stdout or out.stderr).strip().splitlines()
        if first:
            return first[0].removeprefix("mosquitto version ").strip()
    return "not found"


def machine_info() -> dict[str, Any]:
    """CPUs, memory, kernel and the versions that matter for the figures."""
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "roost": __version__,
        "mosquitto": mosquitto_version(),
        "open_files_limit": [soft, hard],
    }


@dataclass
class Meter:
    """CPU and memory of one process, between ``start`` and ``read``."""

    pid: int
    _proc: psutil.Process = field(init=False)
    _cpu: float = 0.0
    _wall: float = 0.0

    def __post_init__(self) -> None:
        self._proc = psutil.Process(self.pid)
        self.start()

    def start(self) -> None:
        times = self._proc.cpu_times()
        self._cpu, self._wall = times.user + times.system, time.monotonic()

    def read(self) -> dict[str, float]:
        """CPU % of one core since ``start``, and RSS in MiB now."""
        times = self._proc.cpu_times()
        spent = times.user + times.system - self._cpu
        wall = max(time.monotonic() - self._wall, 1e-6)
        rss = self._proc.memory_info().rss / 2**20
        return {"cpu_percent": round(100 * spent / wall, 1), "rss_mib": round(rss, 1)}


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Ask, wait, then kill the whole process group (it was started in a session of its own)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def spawn(
    argv: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A process in a session of its own (so it can be stopped as a group), output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )


class LocalHub:
    """``roost hub`` with its managed broker in ``directory``, on free ports."""

    def __init__(self, directory: Path, env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.data_dir = directory / "hub"
        self.env = dict(env or {})
        self.port = free_port()
        self.mqtt_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def client_config(self) -> Path:
        return self.data_dir / "client.toml"

    @property
    def log_path(self) -> Path:
        return self.directory / "hub.log"

    def __enter__(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(
            [
                *ROOST,
                "hub",
                "--data",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--mqtt-port",
                str(self.mqtt_port),
            ],
            self.log_path,
            self.env,
        )
        try:
            self._wait_ready(timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ca = self.data_dir / "pki" / "ca.pem"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubError(f"the hub exited early; see {self.log_path}", 500)
            if self.client_config.exists() and ca.exists():
                with contextlib.suppress(httpx.TransportError):
                    context = ssl.create_default_context(cafile=str(ca))
                    if httpx.get(f"{self.url}/healthz", verify=context).status_code == 200:
                        return
            time.sleep(0.2)
        raise HubError(f"the hub did not answer within {timeout:g}s; see {self.log_path}", 504)

    def client(self, timeout: float = 120.0) -> RoostClient:
        return RoostClient(ClientConfig.load(self.client_config), timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def broker_pid(self) -> int | None:
        """The managed Mosquitto: the hub's child that runs our broker config."""
        conf = str(self.data_dir / "broker" / "mosquitto.conf")
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                if conf in child.cmdline():
                    return child.pid
            except psutil.Error:
                continue
        return None

    def stop(self) -> None:
        if self.proc is not None:
            # The hub stops its broker on the way out (and the broker dies with the hub).
            stop_process(self.proc, signal.SIGTERM, timeout=30)


def meters(hub: LocalHub, sim_pid: int) -> dict[str, Meter]:
    """Meters for the hub, its broker (when it runs one) and the simulator, from now."""
    found = {"hub": Meter(hub.pid), "sim": Meter(sim_pid)}
    broker = hub.broker_pid()
    if broker is not None:
        found["broker"] = Meter(broker)
    return found


def spawn_sim(hub: LocalHub, data: Path, devices: int, heartbeat: float) -> subprocess.Popen[bytes]:
    """``roost sim`` with ``devices`` virtual devices of ``hub``, until SIGINT; log beside."""
    argv = [*ROOST, "sim", "--devices", str(devices), "--heartbeat", str(heartbeat)]
    argv += ["--config", str(hub.client_config), "--data", str(data)]
    return spawn(argv, data.with_name(f"{data.name}.log"))


def read_status(path: Path) -> dict[str, Any]:
    """The simulator's ``status.json`` (empty until it wrote one)."""
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return status


def wait_phase(
    path: Path, sim: subprocess.Popen[bytes], phases: set[str], deadline: float
) -> dict[str, Any]:
    """Wait until the simulator's status says one of ``phases``; it must not stop first."""
    while time.monotonic() < deadline:
        status = read_status(path)
        if status.get("phase") in phases:
            return status
        if sim.poll() is not None:
            raise RuntimeError(f"the simulator stopped early (phase {status.get('phase')})")
        time.sleep(0.5)
    raise TimeoutError(f"the simulator did not reach {sorted(phases)} in time")


def run_bench(
    name: str,
    keep: bool,
    measure: Callable[[Path], dict[str, Any]],
    failures: tuple[type[BaseException], ...],
    json_out: Path | None = None,
) -> int:
    """Run ``measure`` in a fresh temporary directory and print its JSON figures.

    The directory goes afterwards, unless ``keep`` or the run failed (its logs are the
    answer then). Ctrl-C is exit code 130; a failure prints its error as the JSON. With
    ``json_out`` the JSON is written to that file too.
    """
    root = Path(tempfile.mkdtemp(prefix=f"roost-bench-{name}-"))
    result: dict[str, Any] = {}
    try:
        result = measure(root)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except failures as err:
        result = {"bench": name, "error": str(err), "logs": str(root)}
        keep = True
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result["machine"] = machine_info()
    text = json.dumps(result, indent=2)
    print(text)
    if json_out is not None:
        json_out.write_text(text + "\n")
    return 0 if "error" not in result else 1
