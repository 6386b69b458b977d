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
of ``--hub-cold`` deploys. Prints one JSON object; asserts nothing. Aims: warm p50 <= 2
ms, cold start <= 300 ms.

    .venv/bin/python bench/functions.py
    .venv/bin/python bench/functions.py --warm 5000 --cold 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from roost import __version__
from roost.client import RoostClient
from roost.functions.pool import Code, Pool
from roost.functions.sandbox import working_bwrap
from roost.sim.bench import LocalHub

NOOP = "def handle(event, ctx):\n    return event\n"


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "max_ms": round(ordered[-1], 3),
    }


async def measure(bwrap: str | None, warm: int, cold: int) -> dict[str, Any]:
    pool = Pool(bwrap=bwrap, hidden=[], max_workers=4)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=2000, help="warm invocations")
    parser.add_argument("--cold", type=int, default=30, help="cold starts")
    parser.add_argument("--http", type=int, default=500, help="HTTP trigger calls via a hub")
    parser.add_argument("--hub-cold", type=int, default=10, help="cold starts via a hub")
    parser.add_argument("--no-hub", action="store_true", help="measure the pool only")
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
    }
    if bwrap is not None:
        result["sandboxed"] = asyncio.run(measure(bwrap, args.warm, args.cold))
    else:
        result["sandboxed"] = "bubblewrap does not work here"
    result["unsandboxed"] = asyncio.run(measure(None, args.warm, args.cold))
    if not args.no_hub:
        with tempfile.TemporaryDirectory(prefix="roost-bench-functions-") as root:
            result.update(through_hub(Path(root), args.http, args.hub_cold))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
