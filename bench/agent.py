"""The agent's footprint: how fast it is online, and how much memory it holds when idle.

Starts a real hub (with its managed Mosquitto) in a temporary directory, enrolls one
real agent (``roost agent join TOKEN --no-run``), then starts ``roost agent run`` and
measures the time from process start to the ``online as`` log line and to the hub's API
showing the device online. After ``--idle`` seconds it reads the agent's memory. Then it
runs the agent once more to list what it imported (``sys.modules`` at exit, and
``-X importtime``), and weighs the biggest top-level packages by importing each alone in
a fresh interpreter. Prints one JSON object; asserts nothing. Aims: < 1 s to online,
<= 30 MB RSS.

With ``--apps`` it measures the supervisor's own cost instead: the agent's memory idle
without apps, then again while it runs two apps (small HTTP servers with HTTP health
checks, published to the hub's catalog and set in the device's desired state). Only the
agent's process counts; the apps' processes are listed apart.

    .venv/bin/python bench/agent.py             # 60 s idle
    .venv/bin/python bench/agent.py --idle 10
    .venv/bin/python bench/agent.py --apps --idle 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from roost.apps.bundle import build_bundle
from roost.client import RoostClient
from roost.sim.bench import ROOST, LocalHub, free_port, run_bench, stop_process

AIM_RSS_MIB = 30.0
AIM_ONLINE_S = 1.0
# Written by the agent's interpreter at exit: every module it had imported.
DUMP_MODULES = (
    "import atexit, json, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "sys.argv[0] = 'roost'\n"
    "from roost.cli.main import main\n"
    "main()\n"
)
# The agent started through its own argparse entry, without ``roost.cli.main`` (typer).
DIRECT_ENTRY = "import sys\nfrom roost.agent.cli import main\nsys.exit(main(sys.argv[1:]))\n"
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
# The two apps of --apps: an HTTP server each, health-checked over HTTP.
APP = """\
name = "{name}"
version = "1.0.0"
command = ["/usr/bin/python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
network = true
ports = [{{ port = {port} }}]

[health]
kind = "http"
port = {port}
interval = 5
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle before measuring")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--apps", action="store_true", help="measure the agent while it runs two apps"
    )
    return parser.parse_args()


class AgentRun:
    """``roost agent run`` as a process whose stderr is read line by line."""

    def __init__(self, argv: list[str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.online_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if self.online_at is None and "online as" in line:
                self.online_at = time.monotonic()
            self.lines.append(line)

    def wait_online(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.online_at is None and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.02)
        if self.online_at is None:
            raise RuntimeError("the agent did not come online:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=20)
        self._reader.join(5)


def time_to_online(hub: LocalHub, device_id: str, run: AgentRun) -> dict[str, Any]:
    with hub.client() as api:
        deadline = time.monotonic() + 30
        hub_online = None
        while time.monotonic() < deadline and run.proc.poll() is None:
            if api.device(device_id)["status"] == "online":
                hub_online = time.monotonic() - run.started
                break
            time.sleep(0.01)
    log_online = run.online_at - run.started if run.online_at else None
    return {
        "start_to_online_log_s": round(log_online, 3) if log_online else None,
        "start_to_online_at_hub_s": round(hub_online, 3) if hub_online else None,
    }


def memory(pid: int) -> dict[str, Any]:
    proc = psutil.Process(pid)
    full = proc.memory_full_info()
    status = Path(f"/proc/{pid}/status").read_text()
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    return {
        "rss_mib": round(full.rss / 2**20, 1),
        "uss_mib": round(full.uss / 2**20, 1),
        "pss_mib": round(full.pss / 2**20, 1),
        "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "threads": proc.num_threads(),
        "open_files": proc.num_fds(),
    }


def rss_of_import(module: str, after: str = "sys") -> float:
    """MiB of RSS that importing ``module`` adds to an interpreter that imported ``after``."""
    code = (
        f"import {after}; base = int(open('/proc/self/statm').read().split()[1]); "
        f"import {module}; "
        "print((int(open('/proc/self/statm').read().split()[1]) - base) * 4096)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    return round(int(out.stdout.strip() or 0) / 2**20, 1) if out.returncode == 0 else -1.0


def imports(agent_dir: Path, root: Path) -> dict[str, Any]:
    """What the running agent imported, and what the heaviest of it costs."""
    dump = root / "modules.json"
    argv = [sys.executable, "-X", "importtime", "-c", DUMP_MODULES, str(dump)]
    run = AgentRun([*argv, "agent", "run", "--data", str(agent_dir)])
    try:
        run.wait_online()
    finally:
        run.stop()
    modules: list[str] = json.loads(dump.read_text()) if dump.exists() else []
    packages = Counter(name.partition(".")[0] for name in modules)
    timings = []
    for line in run.lines:
        match = IMPORT_LINE.match(line)
        if match and len(match.group(3)) <= 2:  # top-level and first-level imports
            timings.append((int(match.group(2)), match.group(4)))
    weighed = [
        p
        for p in ("typer", "click", "rich", "gmqtt", "cryptography", "psutil", "sqlite3")
        if p in packages
    ]
    weighed += ["ssl", "asyncio", "roost.agent.runtime", "roost.cli.main"]
    return {
        "modules": len(modules),
        "top_packages_by_module_count": dict(packages.most_common(15)),
        "slowest_imports_ms": {name: round(us / 1000, 1) for us, name in sorted(timings)[-12:]},
        "rss_of_import_alone_mib": {m: rss_of_import(m) for m in weighed},
        "bare_python_rss_mib": bare_python_rss(),
    }


def bare_python_rss() -> float:
    code = "print(int(open('/proc/self/statm').read().split()[1]) * 4096)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout) / 2**20, 1)


def join(hub: LocalHub, agent_dir: Path) -> str:
    """Enroll an agent in ``agent_dir`` without running it; its device id."""
    with hub.client() as api:
        token = api.create_join_token({"bench": "agent"})["token"]
    subprocess.run(
        [*ROOST, "agent", "join", token, "--data", str(agent_dir), "--no-run"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    device_id: str = json.loads((agent_dir / "identity.json").read_text())["device_id"]
    return device_id


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "agent", "idle_s": args.idle}
    with LocalHub(root) as hub:
        agent_dir = root / "agent"
        started = time.monotonic()
        device_id = join(hub, agent_dir)
        result["join_s"] = round(time.monotonic() - started, 3)
        agent = AgentRun([*ROOST, "agent", "run", "--data", str(agent_dir)])
        try:
            result.update(time_to_online(hub, device_id, agent))
            time.sleep(args.idle)
            if agent.proc.poll() is not None:
                raise RuntimeError("the agent exited:\n" + "\n".join(agent.lines[-20:]))
            result["memory_after_idle"] = memory(agent.proc.pid)
        finally:
            agent.stop()
        result["imports"] = imports(agent_dir, root)
        # The same agent entered below the typer CLI: what the routing costs.
        direct = AgentRun([sys.executable, "-c", DIRECT_ENTRY, "run", "--data", str(agent_dir)])
        try:
            direct.wait_online()
            time.sleep(args.idle)
            result["memory_after_idle_direct_entry"] = memory(direct.proc.pid)
        finally:
            direct.stop()
    online = result.get("start_to_online_at_hub_s")
    result["aims"] = {
        "rss_mib": AIM_RSS_MIB,
        "rss_met": result["memory_after_idle"]["rss_mib"] <= AIM_RSS_MIB,
        "online_s": AIM_ONLINE_S,
        "online_met": online is not None and online < AIM_ONLINE_S,
    }
    return result


def publish_apps(api: RoostClient, root: Path) -> dict[str, dict[str, str]]:
    """Build and publish the two apps; the desired state's ``apps`` for them."""
    wanted = {}
    for name in ("alpha", "beta"):
        source = root / "apps" / name
        source.mkdir(parents=True)
        (source / "roost.toml").write_text(APP.format(name=name, port=free_port()))
        api.publish_app(build_bundle(source, root / "bundles").path)
        wanted[name] = {"version": "1.0.0"}
    return wanted


def wait_running(api: RoostClient, device_id: str, names: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        apps: dict[str, Any] = api.twin(device_id)["reported"].get("apps") or {}
        if {n for n, a in apps.items() if a.get("state") == "running"} >= names:
            return apps
        time.sleep(0.2)
    raise RuntimeError(f"the apps did not start: {apps}")


def app_processes(pid: int) -> dict[str, Any]:
    """The agent's descendants (its apps, under bubblewrap or not), for context."""
    children = psutil.Process(pid).children(recursive=True)
    rss = 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            rss += child.memory_info().rss
    return {"count": len(children), "rss_mib": round(rss / 2**20, 1)}


def run_apps(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The supervisor's own cost: the agent's memory without apps, then with two."""
    result: dict[str, Any] = {"bench": "agent-apps", "idle_s": args.idle}
    with LocalHub(root) as hub:
        agent_dir = root / "agent"
        device_id = join(hub, agent_dir)
        agent = AgentRun([*ROOST, "agent", "run", "--data", str(agent_dir)])
        try:
            agent.wait_online()
            time.sleep(args.idle)
            result["memory_without_apps"] = memory(agent.proc.pid)
            with hub.client() as api:
                wanted = publish_apps(api, root)
                api.set_desired(device_id, {"apps": wanted})
                apps = wait_running(api, device_id, set(wanted))
            time.sleep(args.idle)
            if agent.proc.poll() is not None:
                raise RuntimeError("the agent exited:\n" + "\n".join(agent.lines[-20:]))
            result["memory_with_two_apps"] = memory(agent.proc.pid)
            result["app_processes"] = app_processes(agent.proc.pid)
            result["apps"] = {n: {"isolation": a.get("isolation")} for n, a in apps.items()}
        finally:
            agent.stop()
    # What the apps machinery loads into an agent that already runs: its own modules,
    # then python-tuf (ngclient with securesystemslib and urllib3) for the catalog.
    result["rss_of_import_after_the_runtime_mib"] = {
        "roost.agent.apps": rss_of_import("roost.agent.apps", after="roost.agent.runtime"),
        "tuf.ngclient": rss_of_import("tuf.ngclient", after="roost.agent.apps"),
    }
    without = result["memory_without_apps"]["rss_mib"]
    result["rss_added_by_two_apps_mib"] = round(
        result["memory_with_two_apps"]["rss_mib"] - without, 1
    )
    return result


def main() -> int:
    args = parse_args()
    measure = run_apps if args.apps else run
    name = "agent-apps" if args.apps else "agent"
    return run_bench(
        name,
        args.keep,
        lambda root: measure(args, root),
        (RuntimeError, subprocess.SubprocessError),
    )


if __name__ == "__main__":
    sys.exit(main())
