"""The hub's function runtime: warm invocation overhead and cold start.

Runs ``roost.functions.pool.Pool`` as the hub does (bubblewrap when it works here, the
worker's ``RLIMIT_AS``), with a function that does nothing (``return event``), so every
millisecond measured is the runtime's own:

- warm: ``--warm`` invocations on one warm worker, one after another: p50, p99, mean of
  the round trip (the event to the worker over its pipe as JSON, the result back);
- cold: ``--cold`` first invocations of a new version (a new worker each: bubblewrap,
  an interpreter, ``worker.py``, the function's import, then the call): p50, p99, max.

Both with and without the sandbox. Then, unless ``--no-hub``, the same through a real
hub (``roost hub`` on free ports, SQLite): ``hub_http`` is ``--http`` calls of ``POST
/v1/fn/{name}`` on one kept-alive TLS connection (the pool's round trip plus the HTTP
request, reading the function and writing the invocation's row), and ``hub_cold`` the
first ``roost fn invoke``-like call (``POST /v1/functions/{name}/invoke``) after each
of ``--hub-cold`` deploys.

Then, unless ``--no-edge``, the same on a device (``edge``): ``roost.agent.edgefns.
EdgeFunctions`` driven as the agent drives it, in a temporary data dir with no hub or
broker (the edge path is local by design). Its function is the file a device keeps after
verifying it (``DATA/functions/<name>.json``, written by ``roost.functions.edge.bundle``),
loaded as a device restarted offline loads it. Each event is put in the agent's store by
a second connection (``durable``, as the app events socket puts one), the functions are
woken as ``AppEvents`` wakes them, and the clock stops when ``Outbox.handled`` has
committed the event's ``roost.function.invoked`` result to the outbox:

- ``cold_start``: ``--edge-cold`` events, each after the function's idle workers were
  retired (a new worker each);
- ``warm``: ``--edge-warm`` events one after another on a warm worker, each waited for;
  ``warm_parts`` times two of its parts: the app's put (a durable SQLite commit) and the
  ``handled`` transaction. ``in_pool`` is the pool's own part, as the device records it;
- ``burst``: ``--edge-burst`` events put at once, then one wake: events/s from the wake
  to the last result (inbox, function, outbox);
- ``restart``: ``--edge-restarts`` times an event waits in the inbox while no
  ``EdgeFunctions`` runs, and the clock runs from a new one's start (the bubblewrap probe,
  loading the file, a cold worker) to its result;
- ``pool``: the raw pool with the agent's settings (its data dir hidden, 8 workers).

Prints one JSON object; asserts nothing. Aims: warm p50 <= 2 ms, cold start <= 300 ms.

    .venv/bin/python bench/functions.py
    .venv/bin/python bench/functions.py --warm 5000 --cold 50
    .venv/bin/python bench/functions.py --no-hub --edge-warm 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from roost import __version__
from roost.agent.edgefns import EdgeFunctions, invocation_key
from roost.agent.outbox import EDGE_FEED, Outbox
from roost.client import RoostClient
from roost.functions.edge import bundle
from roost.functions.models import FunctionRow, FunctionVersion
from roost.functions.pool import Code, Pool
from roost.functions.sandbox import working_bwrap
from roost.functions.service import DEFAULTS
from roost.settings import AgentSettings
from roost.sim.bench import LocalHub
from roost.wire.functions import INVOKED
from roost.wire.topics import Up

NOOP = "def handle(event, ctx):\n    return event\n"
EDGE_NAME = "noop"
EDGE_TYPE = "bench.edge"
READY_S = 20.0  # the edge functions' start: the bubblewrap probe, loading the file


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "max_ms": round(ordered[-1], 3),
    }


async def measure(
    bwrap: str | None,
    warm: int,
    cold: int,
    hidden: Iterable[Path] = (),
    max_workers: int = 4,
) -> dict[str, Any]:
    pool = Pool(bwrap=bwrap, hidden=list(hidden), max_workers=max_workers)
    try:
        code = Code(function="bench/warm", version=1, files={"main.py": NOOP})
        await pool.invoke(code, 0, {})
        warm_ms = []
        event = {"type": "bench", "data": {"n": 1, "text": "x" * 64}}
        for _ in range(warm):
            began = time.perf_counter()
            outcome = await pool.invoke(code, event, {"function": "warm"})
            warm_ms.append((time.perf_counter() - began) * 1000)
            assert outcome.ok, outcome.error
        cold_ms = []
        for version in range(1, cold + 1):
            fresh = Code(function="bench/cold", version=version, files={"main.py": NOOP})
            began = time.perf_counter()
            outcome = await pool.invoke(fresh, 0, {})
            cold_ms.append((time.perf_counter() - began) * 1000)
            assert outcome.ok, outcome.error
            assert outcome.cold
        return {"warm": _quantiles(warm_ms), "cold_start": _quantiles(cold_ms)}
    finally:
        await pool.close()


def through_hub(root: Path, calls: int, colds: int) -> dict[str, Any]:
    with LocalHub(root) as hub, RoostClient.from_config(hub.client_config) as api:
        api.deploy_function("noop", {"main.py": NOOP})
        api.invoke_function("noop", 0)
        token = api.config.token
        http_ms = []
        with httpx.Client(
            base_url=hub.url,
            verify=str(hub.data_dir / "pki" / "ca.pem"),
            headers={"authorization": f"Bearer {token}"},
        ) as http:
            for _ in range(calls):
                began = time.perf_counter()
                answer = http.post("/v1/fn/noop", content=b'{"n": 1}')
                http_ms.append((time.perf_counter() - began) * 1000)
                answer.raise_for_status()
        cold_ms, cold_in_pool = [], []
        for _ in range(colds):
            api.deploy_function("noop", {"main.py": NOOP})
            began = time.perf_counter()
            invocation = api.invoke_function("noop", 0)
            cold_ms.append((time.perf_counter() - began) * 1000)
            assert invocation["cold"], invocation
            cold_in_pool.append(invocation["duration_ms"])
        return {
            "hub_http": _quantiles(http_ms),
            "hub_cold": _quantiles(cold_ms),
            "hub_cold_in_pool": _quantiles(cold_in_pool),
        }


class _TimedStore(Outbox):
    """The agent's store, noting when each event's result is committed to the outbox."""

    def __init__(self, path: Path, max_messages: int) -> None:
        super().__init__(path, max_messages)
        self._expected: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self.handled_ms: list[float] = []  # each result's transaction

    def expect(self, key: str) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        """Resolved with (``perf_counter``, the invocation's record) once the event whose
        idempotency key is ``key`` is handled."""
        future: asyncio.Future[tuple[float, dict[str, Any]]]
        future = asyncio.get_running_loop().create_future()
        self._expected[key] = future
        return future

    def handled(self, seq: int, events: Iterable[dict[str, Any]], now: float) -> None:
        bodies = list(events)
        began = time.perf_counter()
        super().handled(seq, bodies, now)
        at = time.perf_counter()
        self.handled_ms.append((at - began) * 1000)
        for body in bodies:
            event = body["event"]
            future = self._expected.pop(event["id"], None) if event["type"] == INVOKED else None
            if future is not None:
                future.set_result((at, event["data"]))


def _no_hub(name: str, version: int) -> bytes:
    raise RuntimeError(f"the bench runs no hub: {name} v{version} must be in place already")


def _install_verified(data_dir: Path) -> None:
    """The file a device keeps once it verified the function, as the hub signs it."""
    row = FunctionRow(name=EDGE_NAME, version=1, trigger={"type": [EDGE_TYPE]}, cron="", **DEFAULTS)
    stored = FunctionVersion(version=1, entry="main", files=json.dumps({"main.py": NOOP}))
    path = data_dir / "functions" / f"{EDGE_NAME}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(bundle(row, stored))


class _Device:
    """One device's edge functions and an app putting events in its store."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = AgentSettings(data_dir=data_dir)
        _install_verified(data_dir)
        self.store = _TimedStore(data_dir / "agent.db", self.settings.outbox_max_messages)
        # A second connection, as the app events socket's (durable: the app is told its
        # event is kept).
        self.app = Outbox(data_dir / "agent.db", self.settings.outbox_max_messages, durable=True)
        self.put_ms: list[float] = []
        self._sent = 0
        self._task: asyncio.Task[None] | None = None
        self.edge = self._new()

    def _new(self) -> EdgeFunctions:
        edge = EdgeFunctions(
            self.settings,
            self.store,
            _no_hub,
            "bench-device",
            on_sent=lambda: None,
            on_change=lambda: None,
        )
        edge.want({EDGE_NAME: 1})
        return edge

    def start(self) -> None:
        """Run the edge functions, a new instance each time but the first (a restart)."""
        if self._task is not None:
            self.edge = self._new()
        self._task = asyncio.create_task(self.edge.run())

    async def ready(self) -> None:
        """Until the function is loaded and the store feeds the inbox."""
        assert self._task is not None
        deadline = time.monotonic() + READY_S
        while self.edge.report()[EDGE_NAME]["state"] != "running" or not self.store.get(EDGE_FEED):
            if self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edge function is not running: {self.edge.report()}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop the edge functions (and their workers), as an agent stopping does."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def put(self) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        """Put one event in the store; resolved when its result is in the outbox."""
        self._sent += 1
        event = {
            "specversion": "1.0",
            "id": f"e{self._sent}",
            "source": "bench",
            "type": EDGE_TYPE,
            "subject": "",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "datacontenttype": "application/json",
            "data": {"n": self._sent, "text": "x" * 64},
        }
        landed = self.store.expect(invocation_key(event))
        began = time.perf_counter()
        self.app.put(Up.EVENT, {"event": event}, time.time())
        self.put_ms.append((time.perf_counter() - began) * 1000)
        return landed

    async def one(self) -> tuple[float, dict[str, Any]]:
        """One event from its put to its result in the outbox: ms, the invocation."""
        began = time.perf_counter()
        landed = self.put()
        self.edge.wake()  # as the agent does once the app events socket stored one
        at, record = await asyncio.wait_for(landed, 30)
        assert record["ok"], record
        return (at - began) * 1000, record

    def close(self) -> None:
        self.app.close()
        self.store.close()


def _timed(samples: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    return {
        **_quantiles([ms for ms, _ in samples]),
        "in_pool": _quantiles([record["duration_ms"] for _, record in samples]),
    }


async def through_edge(
    root: Path, warm: int, cold: int, burst: int, restarts: int
) -> dict[str, Any]:
    device = _Device(root / "agent")
    device.start()
    try:
        await device.ready()
        sandboxed = device.edge.pool.sandboxed
        colds = []
        for _ in range(cold):
            await device.edge.pool.retire(f"edge/{EDGE_NAME}")
            colds.append(await device.one())
            assert colds[-1][1]["cold"], colds[-1]
        device.put_ms.clear()
        device.store.handled_ms.clear()
        warms = [await device.one() for _ in range(warm)]
        assert not any(record["cold"] for _, record in warms)
        steady_put_ms = list(device.put_ms)
        steady_handled_ms = list(device.store.handled_ms)
        landed = [device.put() for _ in range(burst)]
        began = time.perf_counter()
        device.edge.wake()
        results = await asyncio.wait_for(asyncio.gather(*landed), 120)
        handled_s = max(at for at, _ in results) - began
        bursts = {
            "events": burst,
            "put_s": round(sum(device.put_ms[-burst:]) / 1000, 3),
            "handled_s": round(handled_s, 3),
            "events_per_s": round(burst / handled_s, 1),
            "cold": sum(1 for _, record in results if record["cold"]),
            "in_pool": _quantiles([record["duration_ms"] for _, record in results]),
        }
        restarted = []
        for _ in range(restarts):
            await device.stop()
            landed_one = device.put()  # the store still feeds the inbox
            began = time.perf_counter()
            device.start()
            at, record = await asyncio.wait_for(landed_one, 30)
            assert record["ok"], record
            assert record["cold"], record
            restarted.append(((at - began) * 1000, record))
    finally:
        await device.stop()
        device.close()
    return {
        "sandboxed": sandboxed,
        "cold_start": _timed(colds),
        "warm": _timed(warms),
        "warm_parts": {
            "put": _quantiles(steady_put_ms),
            "handled": _quantiles(steady_handled_ms),
        },
        "burst": bursts,
        "restart": _timed(restarted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=2000, help="warm invocations")
    parser.add_argument("--cold", type=int, default=30, help="cold starts")
    parser.add_argument("--http", type=int, default=500, help="HTTP trigger calls via a hub")
    parser.add_argument("--hub-cold", type=int, default=10, help="cold starts via a hub")
    parser.add_argument("--no-hub", action="store_true", help="skip the hub")
    parser.add_argument("--edge-warm", type=int, default=500, help="warm events on a device")
    parser.add_argument("--edge-cold", type=int, default=30, help="cold starts on a device")
    parser.add_argument("--edge-burst", type=int, default=2000, help="events put at once")
    parser.add_argument("--edge-restarts", type=int, default=5, help="edge functions restarted")
    parser.add_argument("--no-edge", action="store_true", help="skip the device")
    args = parser.parse_args()
    bwrap = working_bwrap()
    result: dict[str, Any] = {
        "benchmark": "functions",
        "roost": __version__,
        "python": sys.version.split()[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "warm_invocations": args.warm,
        "cold_starts": args.cold,
        "aims": {"warm_p50_ms": 2, "cold_start_ms": 300},
        "load_average_before": os.getloadavg()[0],
    }
    if bwrap is not None:
        result["sandboxed"] = asyncio.run(measure(bwrap, args.warm, args.cold))
    else:
        result["sandboxed"] = "bubblewrap does not work here"
    result["unsandboxed"] = asyncio.run(measure(None, args.warm, args.cold))
    if not args.no_hub:
        with tempfile.TemporaryDirectory(prefix="roost-bench-functions-") as root:
            result.update(through_hub(Path(root), args.http, args.hub_cold))
    if not args.no_edge:
        # This process holds the hub's modules and the runs above, which an agent does not:
        # a full collection of all that (~40-50 ms here) would land in the edge figures.
        gc.collect()
        gc.freeze()
        with tempfile.TemporaryDirectory(prefix="roost-bench-edge-") as root:
            edge = asyncio.run(
                through_edge(
                    Path(root), args.edge_warm, args.edge_cold, args.edge_burst, args.edge_restarts
                )
            )
            if bwrap is not None:
                # The raw pool as the agent makes it: its data dir hidden, 8 workers.
                hidden = [Path(root) / "agent"]
                edge["pool"] = asyncio.run(measure(bwrap, args.warm, args.cold, hidden, 8))
        result["edge"] = edge
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
