"""How many mTLS devices one hub holds, and how many heartbeats a second it turns into state.

Starts a real hub (with its managed Mosquitto) in a temporary directory, then
``roost sim`` with N virtual devices that enroll through the API, connect over mutual
TLS and heartbeat every ``--heartbeat`` seconds. Once every device is connected and the
load has settled, it reads the hub's counters (``GET /v1/hub/stats``) over a measured
window, with the CPU and RSS of the hub, the broker and the simulator, and asks the API
how many devices it sees online. Prints one JSON object; asserts nothing.

    .venv/bin/python bench/fleet.py                    # 10,000 devices, 10 s heartbeat
    .venv/bin/python bench/fleet.py --devices 2000 --heartbeat 0.2   # 10,000 messages/s
    .venv/bin/python bench/fleet.py --devices 500 --window 10

Everything it started is stopped on the way out (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from roost.sim.bench import (
    LocalHub,
    meters,
    read_status,
    run_bench,
    spawn_sim,
    stop_process,
    wait_phase,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between beats")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args()


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    env = {"ROOST_HEARTBEAT_INTERVAL_S": str(args.heartbeat)}
    result: dict[str, Any] = {
        "bench": "fleet",
        "devices": args.devices,
        "heartbeat_interval_s": args.heartbeat,
    }
    with LocalHub(root, env) as hub:
        status_path = root / "sim" / "status.json"
        sim = spawn_sim(hub, root / "sim", args.devices, args.heartbeat)
        try:
            procs = meters(hub, sim.pid)
            wait_phase(status_path, sim, {"connecting"}, deadline)
            connect_meters = meters(hub, sim.pid)
            status = wait_phase(status_path, sim, {"running"}, deadline)
            result["enroll_s"] = status["enroll_s"]
            result["connect_s"] = status["connect_s"]
            result["connected"] = status["connected"]
            result["connect_failed"] = status["connect_failed"]
            result["connect_phase"] = {n: m.read() for n, m in connect_meters.items()}
            result["setup_phase"] = {n: m.read() for n, m in procs.items()}
            result.update(measure(hub, sim, status_path, args))
        finally:
            stop_process(sim, signal.SIGINT, timeout=120)
        final = read_status(status_path)
        result["sim_final"] = {
            k: final.get(k) for k in ("phase", "heartbeats", "commands", "disconnects", "run_s")
        }
    return result


def measure(hub: LocalHub, sim: Any, status_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    time.sleep(args.settle)
    with hub.client() as api:
        procs = meters(hub, sim.pid)
        psutil.cpu_percent()  # starts the machine-wide reading
        before, sim_before = api.stats()["messages"], read_status(status_path)
        started = time.monotonic()
        time.sleep(args.window)
        after, sim_after = api.stats()["messages"], read_status(status_path)
        window = time.monotonic() - started
        steady = {n: m.read() for n, m in procs.items()}
        machine_cpu = psutil.cpu_percent() * (os.cpu_count() or 1)
        devices = api.devices()
    online = sum(1 for d in devices if d["status"] == "online")
    with_metrics = sum(1 for d in devices if d["status"] == "online" and d["metrics"])

    def rate(key: str) -> float:
        return round((after.get(key, 0) - before.get(key, 0)) / window, 1)

    return {
        "online_at_hub": online,
        "online_with_metrics": with_metrics,
        "window_s": round(window, 1),
        # The simulator's own clock: its status file is rewritten about once a second.
        "sent_per_s": round(
            (sim_after["heartbeats"] - sim_before["heartbeats"])
            / max(sim_after["run_s"] - sim_before["run_s"], 1e-3),
            1,
        ),
        "received_per_s": rate("received"),
        # Turned into state: written, or replaced by a newer heartbeat of the same device
        # before the flush that would have written it.
        "ingested_per_s": round(rate("ingested") + rate("superseded"), 1),
        "rows_written_per_s": rate("ingested"),
        # The hub's CPU for each message it received, and what one core would take at that.
        "hub_cpu_us_per_message": round(
            steady["hub"]["cpu_percent"] * 1e4 / max(rate("received"), 1e-3), 1
        ),
        "hub_messages_per_core_s": round(
            rate("received") * 100 / max(steady["hub"]["cpu_percent"], 1e-3)
        ),
        "dropped_in_window": {
            k: after[k] - before.get(k, 0) for k in after if k.startswith("dropped")
        },
        "steady_phase": steady,
        # All cores together (100 = one core); "others" is what this bench did not start,
        # a sign that the figures were taken on a busy machine.
        "machine_cpu_percent": round(machine_cpu, 1),
        "others_cpu_percent": round(
            machine_cpu - sum(m["cpu_percent"] for m in steady.values()), 1
        ),
    }


def main() -> int:
    args = parse_args()
    return run_bench("fleet", args.keep, lambda root: run(args, root), (RuntimeError, TimeoutError))


if __name__ == "__main__":
    sys.exit(main())
