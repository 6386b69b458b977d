"""How long a release takes to roll out to a fleet in waves, and what it costs the hub.

Starts a real hub (with its managed Mosquitto) in a temporary directory and ``roost sim``
with N virtual devices, builds and publishes a small app bundle, then deploys it to every
device with the wave gates in place (default waves 1, 10 %, 50 %, 100 %, a short soak).
Each virtual device does for real what an agent does for an update: python-tuf refreshes
its tenant's signed metadata from the hub over HTTPS signed with the device key, then
downloads and verifies the bundle (it does not unpack or run it) and reports the app
running. The bench follows the rollout until it ends and reports the time of each wave
(from the hub's own rollout events) and in total, the CPU and RSS of hub, broker and
simulator over the rollout, and the rate of ``/v1/tuf/`` requests the hub answered (as
counted by the simulator). Prints one JSON object; asserts nothing.

    .venv/bin/python bench/rollout.py                     # 1,000 devices, 5 s soak
    .venv/bin/python bench/rollout.py --devices 50 --soak 2
    .venv/bin/python bench/rollout.py --json-out rollout.json

Everything it started is stopped on the way out (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from roost.apps.bundle import build_bundle
from roost.client import RoostClient
from roost.errors import RoostError
from roost.sim.bench import (
    LocalHub,
    meters,
    read_status,
    run_bench,
    spawn_sim,
    stop_process,
    wait_phase,
)
from roost.sim.updates import UPDATE_WORKERS

APP, VERSION, SELECTOR = "bench", "1.0.0", "simulated=true"
MANIFEST = f"""\
name = "{APP}"
version = "{VERSION}"
description = "a small release rolled out by bench/rollout.py"
command = ["/bin/sleep", "infinity"]
"""
ENDED = {"done", "halted", "aborted", "superseded"}
TUF_KEYS = ("tuf_metadata_requests", "tuf_target_requests", "tuf_unanswered", "tuf_bytes")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--soak", type=float, default=5.0, help="seconds a device soaks")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds a wave may take")
    parser.add_argument("--waves", default="1,10%,50%,100%", help="comma-separated wave steps")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="seconds between beats")
    parser.add_argument("--bundle-kib", type=int, default=64, help="payload in the bundle")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this")
    parser.add_argument("--json-out", type=Path, help="write the JSON here too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args()


def make_bundle(root: Path, payload_kib: int) -> Path:
    """A small app: its manifest and ``payload_kib`` KiB that do not compress."""
    source = root / "app"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(MANIFEST)
    (source / "payload.bin").write_bytes(os.urandom(payload_kib * 1024))
    return build_bundle(source, root / "bundles").path


def wait_online(api: RoostClient, count: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        devices = api.devices(SELECTOR)
        if sum(d["status"] == "online" for d in devices) >= count:
            return
        time.sleep(1.0)
    raise TimeoutError(f"fewer than {count} simulated devices came online at the hub")


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    waves = [w.strip() for w in args.waves.split(",") if w.strip()]
    result: dict[str, Any] = {
        "bench": "rollout",
        "devices": args.devices,
        "waves_spec": waves,
        "soak_s": args.soak,
        "deadline_s": args.deadline,
        "heartbeat_interval_s": args.heartbeat,
        "sim_update_workers": UPDATE_WORKERS,
    }
    env = {"ROOST_HEARTBEAT_INTERVAL_S": str(args.heartbeat)}
    with LocalHub(root, env) as hub, hub.client() as api:
        bundle = make_bundle(root, args.bundle_kib)
        published = api.publish_app(bundle)
        result["bundle_bytes"] = published["size"]
        status_path = root / "sim" / "status.json"
        sim = spawn_sim(hub, root / "sim", args.devices, args.heartbeat)
        try:
            status = wait_phase(status_path, sim, {"running"}, deadline)
            result["enroll_s"], result["connect_s"] = status["enroll_s"], status["connect_s"]
            result["connected"] = status["connected"]
            wait_online(api, args.devices, deadline)
            result.update(roll_out(api, hub, sim.pid, status_path, args, waves, deadline))
        finally:
            stop_process(sim, signal.SIGINT, timeout=120)
    return result


def roll_out(
    api: RoostClient,
    hub: LocalHub,
    sim_pid: int,
    status_path: Path,
    args: argparse.Namespace,
    waves: list[str],
    deadline: float,
) -> dict[str, Any]:
    procs = meters(hub, sim_pid)
    psutil.cpu_percent()  # starts the machine-wide reading
    before = read_status(status_path)
    started = time.monotonic()
    answer = api.deploy(
        APP, VERSION, SELECTOR, waves=waves, soak_s=args.soak, deadline_s=args.deadline
    )
    # The contract says {"deployment", "rollout"}; the hub answers the rollout view itself.
    view = answer.get("rollout", answer)
    rollout_id = view["id"]
    samples = [before]
    while view["status"] not in ENDED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout {rollout_id} did not end in time ({view['status']})")
        time.sleep(1.0)
        view = api.rollout(rollout_id)
        samples.append(read_status(status_path))
    elapsed = time.monotonic() - started
    used = {n: m.read() for n, m in procs.items()}
    machine_cpu = psutil.cpu_percent() * (os.cpu_count() or 1)
    time.sleep(1.5)  # the simulator's status file is rewritten about once a second
    after = read_status(status_path)
    hub_cpu_s = used["hub"]["cpu_percent"] * elapsed / 100
    answered = sum(after[k] - before[k] for k in TUF_KEYS[:2])
    return {
        "rollout": {
            "id": rollout_id,
            "status": view["status"],
            "reason": view["reason"],
            "wall_s": round(elapsed, 1),
            **wave_times(api, rollout_id, view["waves"]),
        },
        "apps": {k: after[k] - before[k] for k in ("apps_verified", "apps_failed", "apps_retried")},
        "tuf": tuf_figures(before, after, samples, args.devices, elapsed),
        "rollout_phase": used,
        "hub_cpu_s": round(hub_cpu_s, 1),
        # Everything the hub did in the rollout (heartbeats, steps, MQTT) per TUF request.
        "hub_cpu_ms_per_tuf_request": round(1000 * hub_cpu_s / max(answered, 1), 2),
        # All cores together (100 = one core); "others" is what this bench did not start.
        "machine_cpu_percent": round(machine_cpu, 1),
        "others_cpu_percent": round(machine_cpu - sum(m["cpu_percent"] for m in used.values()), 1),
    }


def wave_times(api: RoostClient, rollout_id: str, waves: list[dict[str, Any]]) -> dict[str, Any]:
    """Per wave and in total, from the rollout's events (the hub's clock, 1 s steps)."""
    events, after = [], 0
    while batch := api.events(type="roost.rollout.*", after=after, limit=1000):
        events += [e for e in batch if e["data"].get("rollout") == rollout_id]
        after = batch[-1]["seq"]
    at: dict[tuple[str, Any], float] = {}
    for event in events:
        kind = event["type"].removeprefix("roost.rollout.")
        when = dt.datetime.fromisoformat(event["time"]).timestamp()
        detail = event["data"].get("detail") if kind.startswith("wave-") else None
        at.setdefault((kind, detail), when)
    created = at.get(("created", None))
    out: list[dict[str, Any]] = []
    for wave in waves:
        index = wave["index"]
        start, passed = at.get(("wave-started", index)), at.get(("wave-passed", index))
        out.append(
            {
                "index": index,
                "size": wave["size"],
                "healthy": wave["healthy"],
                "failed": wave["failed"],
                "started_s": _since(created, start),
                "passed_s": _since(created, passed),
                "took_s": _since(start, passed),
            }
        )
    ended = at.get(("done", None)) or at.get(("halted", None))
    return {"total_s": _since(created, ended), "waves": out}


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 1)


def tuf_figures(
    before: dict[str, Any],
    after: dict[str, Any],
    samples: list[dict[str, Any]],
    devices: int,
    wall_s: float,
) -> dict[str, Any]:
    """What the hub answered on /v1/tuf/, counted by the simulator's fetcher.

    ``samples`` are the simulator's status, read once a second and timed by its own
    ``run_s`` (it rewrites the file about once a second): the seconds in which requests
    were answered are the time the hub was serving; the peak is the best such second.
    """
    counts = {k.removeprefix("tuf_"): after[k] - before[k] for k in TUF_KEYS}
    answered = counts["metadata_requests"] + counts["target_requests"]
    serving, peak = 0.0, 0.0
    for s0, s1 in itertools.pairwise(s for s in samples if s):
        span = s1["run_s"] - s0["run_s"]
        done = sum(s1[k] - s0[k] for k in TUF_KEYS[:2])
        if span > 0 and done > 0:
            serving += span
            peak = max(peak, done / span)
    return {
        **counts,
        "requests_per_device": round(answered / max(devices, 1), 2),
        "serving_s": round(serving, 1),
        "requests_per_s_while_serving": round(answered / max(serving, 1e-3), 1),
        "requests_per_s_peak": round(peak, 1),
        "requests_per_s_over_rollout": round(answered / wall_s, 1),
        "bundles_per_s_while_serving": round(counts["target_requests"] / max(serving, 1e-3), 1),
    }


def main() -> int:
    args = parse_args()
    return run_bench(
        "rollout",
        args.keep,
        lambda root: run(args, root),
        (RuntimeError, TimeoutError, RoostError),
        args.json_out,
    )


if __name__ == "__main__":
    sys.exit(main())
