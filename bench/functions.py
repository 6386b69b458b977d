"""The hub's function runtime: warm invocation overhead and cold start.

Runs ``roost.functions.pool.Pool`` as the hub does (bubblewrap when it works here, the
worker's ``RLIMIT_AS``), with a function that does nothing (``return event``), so every
millisecond measured is the runtime's own:

- warm: ``--warm`` invocations on one warm worker, one after another: p50, p99, mean of
  the round trip (the event to the worker over its pipe as JSON, the result back);
- cold: ``--cold`` first invocations of a new version (a new worker each: bubblewrap,
  an interpreter, ``worker.py``, the function's import, then the call): p50, p99, max.

Both with and without the sandbox. Prints one JSON object; asserts nothing. Aims: warm
p50 <= 2 ms, cold start <= 300 ms. The hub's own cost around an invocation (HTTP, the
database row of the invocation) is not in these figures.

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
import time
from typing import Any

from roost import __version__
from roost.functions.pool import Code, Pool
from roost.functions.sandbox import working_bwrap

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=2000, help="warm invocations")
    parser.add_argument("--cold", type=int, default=30, help="cold starts")
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
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
