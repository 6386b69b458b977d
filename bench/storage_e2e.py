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
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

import psutil

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
    parser.add_argument(
        "--client-mb-s",
        type=float,
        default=0,
        help="a client that sends its put no faster than this (a laptop on Wi-Fi)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json-out", type=Path, help="also write the JSON to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy stacks (collapsed, CPU only) of the hub and agent0 per phase here",
    )
    return parser.parse_args()


def random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for start in range(0, size, 1 << 24):
            out.write(os.urandom(min(1 << 24, size - start)))


class Marks:
    """When a transfer's first and last bytes went by (progress callbacks); with a
    ``limit`` (MB/s), the client waits in each callback so it sends no faster."""

    def __init__(self, size: int, limit: float = 0) -> None:
        self.size, self.done, self.started = size, 0, time.monotonic()
        self.limit = limit
        self.at: dict[str, float] = {}

    def progress(self, count: int) -> None:
        if not self.done:
            self.at["first"] = time.monotonic()
        self.done += count
        if self.done >= self.size:
            self.at["last"] = time.monotonic()
        if self.limit:
            time.sleep(max(0.0, self.started + self.done / (self.limit * 1e6) - time.monotonic()))

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


class Profiler:
    """py-spy on some processes during a phase (``--profile``): collapsed stacks, a file each."""

    def __init__(self, directory: Path | None, pids: dict[str, int]) -> None:
        self.directory, self.pids = directory, pids
        self._running: list[Popen[bytes]] = []
        self._phase, self._threads = "", dict[str, dict[str, float]]()

    def start(self, phase: str) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        for name, pid in self.pids.items():
            out = self.directory / f"{phase}-{name}.txt"
            argv = [str(spy), "record", "--pid", str(pid), "--rate", "200", "--threads"]
            argv += ["--nonblocking", "--format", "raw", "--output", str(out)]
            self._running.append(spawn(argv, out.with_suffix(".log")))
        time.sleep(1)  # py-spy attaches
        self._phase, self._threads = (
            phase,
            {name: _thread_cpu(pid) for name, pid in self.pids.items()},
        )

    def stop(self) -> None:
        if self.directory is None:
            return
        for proc in self._running:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        self._running = []
        # CPU seconds of each thread over the phase: is one thread (the event loop) the limit?
        spent = {}
        for name, pid in self.pids.items():
            after, before = _thread_cpu(pid), self._threads[name]
            spent[name] = {t: round(cpu - before.get(t, 0.0), 3) for t, cpu in after.items()}
        out = self.directory / f"{self._phase}-threads.json"
        out.write_text(json.dumps(spent, indent=2))


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by name and id."""
    found = {}
    for thread in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            continue
        found[f"{name}-{thread.id}"] = thread.user_time + thread.system_time
    return found


def timed(
    size: int,
    meters: dict[str, Meter],
    run: Callable[[], object],
    profiler: Profiler | None = None,
    phase: str = "",
) -> dict[str, Any]:
    """Run ``run``; its time, MB/s of ``size`` bytes and the CPU the meters saw."""
    if profiler is not None:
        profiler.start(phase)
    for meter in meters.values():
        meter.start()
    kernel = {name: _system_s(m.pid) for name, m in meters.items()}
    started, client = time.monotonic(), time.process_time()
    try:
        run()
    finally:
        seconds = time.monotonic() - started
        client = time.process_time() - client
        if profiler is not None:
            profiler.stop()
    read = {name: m.read()["cpu_percent"] for name, m in meters.items()}
    agents = round(sum(v for k, v in read.items() if k != "hub"), 1)
    kernel = {name: _system_s(m.pid) - kernel[name] for name, m in meters.items()}
    kernel_agents = sum(v for k, v in kernel.items() if k != "hub")
    megabytes = size / 1e6
    return {
        "s": round(seconds, 2),
        "mb_s": round(megabytes / seconds, 1),
        "cpu_percent": {"hub": read["hub"], "agents_sum": agents},
        # CPU time per MB of the object: what the work costs, whatever else the machine ran.
        "cpu_ms_per_mb": {
            "hub": round(read["hub"] * 10 * seconds / megabytes, 2),
            "agents_sum": round(agents * 10 * seconds / megabytes, 2),
            # This process: the SDK sending or receiving the object (and the meters).
            "client": round(client * 1000 / megabytes, 2),
        },
        # Of which in the kernel (TCP on loopback, page cache, disk): the rest is Python,
        # TLS, the codec and hashing in user space.
        "kernel_ms_per_mb": {
            "hub": round(kernel["hub"] * 1000 / megabytes, 2),
            "agents_sum": round(kernel_agents * 1000 / megabytes, 2),
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _memory(hub: Meter, agents: list[Popen[bytes]]) -> dict[str, float]:
    """The hub's RSS now, and the most memory any agent ever held (its peak RSS so far): a
    device that read a share whole, to send or to store it, would show the share's size."""
    return {
        "hub_rss_mib": hub.read()["rss_mib"],
        "agents_peak_rss_mib": max(_peak_rss_mib(p.pid) for p in agents),
    }


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for process {pid}")


def _system_s(pid: int) -> float:
    return float(psutil.Process(pid).cpu_times().system)


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

            profiler = Profiler(args.profile, {"hub": hub.pid, "agent0": agents[0].pid})
            marks = Marks(size, args.client_mb_s)
            result["put"] = timed(
                size,
                meters,
                lambda: api.put_object("bench", "o", source, marks.progress, code=code),
                profiler,
                "put",
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

            result["get"] = timed(size, meters, get, profiler, "get")
            # Before the first byte: k shares uploaded by devices to the hub (and checked);
            # after it: decoded and streamed.
            result["get"]["first_byte_s"] = marks.since_start("first")
            result |= _memory(meters["hub"], agents)
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
