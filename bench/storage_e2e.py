"""The store end to end: put and get MB/s of one big object over loopback, and repair.

A real hub (with its managed Mosquitto) and ``--agents`` real agents (8 by default) on
this machine, each offering ``--quota-mib`` of space. One object of ``--size-mib``
random bytes (256 MiB by default) is put through the SDK (``put_object``: streamed,
encoded on the hub, each share fetched by its device), read back (``get_object``: k + 1
devices upload, decoded as it streams to a file, compared byte for byte), then one
device holding a share is stopped and ``repair_object`` rebuilds its share on a spare
agent started for it (the rebuild alone: the repair loop is held off with a long
interval). The hub's and the agents' CPU over each phase say where the time goes.
Code: the fleet's default (4-of-8 for 8 agents) unless ``--code``. MB/s are 10^6
bytes a second of the object. Prints one JSON object; asserts nothing but the bytes
coming back.

    .venv/bin/python bench/storage_e2e.py
    .venv/bin/python bench/storage_e2e.py --size-mib 64 --agents 6
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

from roost.client import RoostClient
from roost.errors import RoostError
from roost.sim.bench import ROOST, LocalHub, Meter, run_bench, spawn, stop_process

AIM_MB_S = 200.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="object size")
    parser.add_argument("--agents", type=int, default=8, help="agents offering space")
    parser.add_argument("--quota-mib", type=int, default=1024, help="space each offers")
    parser.add_argument("--code", default="", help="K-of-N instead of the fleet's default")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json-out", type=Path, help="also write the JSON to this file")
    return parser.parse_args()


def random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for start in range(0, size, 1 << 24):
            out.write(os.urandom(min(1 << 24, size - start)))


class Marks:
    """When a transfer's first and last bytes went by (progress callbacks)."""

    def __init__(self, size: int) -> None:
        self.size, self.done, self.started = size, 0, time.monotonic()
        self.at: dict[str, float] = {}

    def progress(self, count: int) -> None:
        if not self.done:
            self.at["first"] = time.monotonic()
        self.done += count
        if self.done >= self.size:
            self.at["last"] = time.monotonic()

    def since_start(self, mark: str) -> float:
        return round(self.at.get(mark, float("nan")) - self.started, 2)


def start_agents(
    hub: LocalHub, root: Path, args: argparse.Namespace, first: int, count: int
) -> list[Popen[bytes]]:
    with hub.client() as api:
        tokens = [api.create_join_token({})["token"] for _ in range(count)]
    quota = {"ROOST_STORAGE_QUOTA_BYTES": str(args.quota_mib << 20)}
    agents = []
    for i, token in enumerate(tokens, first):
        argv = [*ROOST, "agent", "join", token, "--data", str(root / f"agent{i}")]
        agents.append(spawn(argv, root / f"agent{i}.log", quota))
    return agents


def wait_offering(api: RoostClient, count: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        offering = [d for d in api.devices() if d["metrics"].get("storage_free", 0) > 0]
        if len(offering) == count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(offering)} of {count} agents offer space")
        time.sleep(0.5)


def timed(size: int, meters: dict[str, Meter], run: Callable[[], object]) -> dict[str, Any]:
    """Run ``run``; its time, MB/s of ``size`` bytes and the CPU the meters saw."""
    for meter in meters.values():
        meter.start()
    started = time.monotonic()
    run()
    seconds = time.monotonic() - started
    read = {name: m.read()["cpu_percent"] for name, m in meters.items()}
    agents = round(sum(v for k, v in read.items() if k != "hub"), 1)
    return {
        "s": round(seconds, 2),
        "mb_s": round(size / 1e6 / seconds, 1),
        "cpu_percent": {"hub": read["hub"], "agents_sum": agents},
    }


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    size = args.size_mib << 20
    result: dict[str, Any] = {"bench": "storage_e2e", "size_mib": args.size_mib}
    source, back = root / "object.bin", root / "back.bin"
    random_file(source, size)
    code: tuple[int, int] | None = None
    if args.code:
        k, _, n = args.code.partition("-of-")
        code = (int(k), int(n))
    env = {"ROOST_HEARTBEAT_INTERVAL_S": "1", "ROOST_STORE_REPAIR_INTERVAL_S": "86400"}
    with LocalHub(root, env) as hub, hub.client(timeout=900) as api:
        agents = start_agents(hub, root, args, 0, args.agents)
        try:
            wait_offering(api, args.agents)
            procs = {_device_id(root / f"agent{i}"): p for i, p in enumerate(agents)}
            meters = {"hub": Meter(hub.pid)}
            meters |= {f"agent{i}": Meter(p.pid) for i, p in enumerate(agents)}

            marks = Marks(size)
            result["put"] = timed(
                size,
                meters,
                lambda: api.put_object("bench", "o", source, marks.progress, code=code),
            )
            # The client has sent (and the hub encoded and spooled) the whole object;
            # the rest is the devices fetching their shares.
            result["put"]["sent_s"] = marks.since_start("last")
            info = api.stat_object("bench", "o")
            result["code"] = f"{info['k']}-of-{info['n']}"
            share_size = info["shares"][0]["size"]
            result["share_mib"] = round(share_size / 2**20, 1)

            marks = Marks(size)

            def get() -> None:
                with back.open("wb") as out:
                    api.get_object("bench", "o", out, marks.progress)

            result["get"] = timed(size, meters, get)
            # Before the first byte: k shares uploaded by devices to the hub (and checked);
            # after it: decoded and streamed.
            result["get"]["first_byte_s"] = marks.since_start("first")
            if not filecmp.cmp(source, back, shallow=False):
                raise RuntimeError("the object came back different")
            back.unlink()

            # One more agent, a spare to take the lost device's share: every one of the
            # first ones holds a share (at the fleet's default code).
            agents += start_agents(hub, root, args, args.agents, 1)
            wait_offering(api, args.agents + 1)
            procs = {_device_id(root / f"agent{i}"): p for i, p in enumerate(agents)}
            lost = info["shares"][0]["device_id"]
            stop_process(procs[lost], timeout=30)
            while lost in {d["id"] for d in api.devices() if d["status"] == "online"}:
                time.sleep(0.2)
            meters = {k: m for k, m in meters.items() if m.pid != procs[lost].pid}
            repaired: dict[str, Any] = {}
            repair = timed(
                share_size, meters, lambda: repaired.update(api.repair_object("bench", "o"))
            )
            healthy = [s for s in repaired["shares"] if s["state"] == "stored" and s["online"]]
            result["repair_one_device"] = {
                "s": repair["s"],
                "share_mb_s": repair["mb_s"],
                "cpu_percent": repair["cpu_percent"],
                "healthy_after": f"{len(healthy)} of {info['n']}",
                "health": repaired["health"],
            }
        finally:
            for proc in agents:
                stop_process(proc, timeout=30)
    result["aims"] = {
        "put_mb_s": {"aim": AIM_MB_S, "met": result["put"]["mb_s"] >= AIM_MB_S},
        "get_mb_s": {"aim": AIM_MB_S, "met": result["get"]["mb_s"] >= AIM_MB_S},
    }
    return result


def _device_id(agent_dir: Path) -> str:
    device_id: str = json.loads((agent_dir / "identity.json").read_text())["device_id"]
    return device_id


def main() -> int:
    args = parse_args()
    return run_bench(
        "storage_e2e",
        keep=args.keep,
        measure=lambda root: measure(args, root),
        failures=(RoostError, OSError, RuntimeError),
        json_out=args.json_out,
    )


if __name__ == "__main__":
    sys.exit(main())
