"""Events per second through the rule engine: routing and CEL conditions, on one core.

Builds a rule set of ``--rules`` rules (default 1,000) over ``--types`` event types
(default 100), ten rules a type, so that about ten reach each event: nine in ten indexed
by their exact type, one in ten by a ``*`` pattern, a third also filtered by a subject
pattern; conditions of the kinds people write (comparisons, ``has``, string tests, a
small ``exists`` loop), about one in seven true; two templated actions each (a webhook
and an emit). Then it runs ``--events`` random CloudEvents through
``Engine.evaluate`` in this one process and thread, ``--repeat`` times (interleaved with
the variants below), and reports the median run (and the best: on a shared machine the
best run is the closest to a quiet core):

- ``events_per_s``: events evaluated per second of wall time, with the firings' actions
  rendered; ``cpu_events_per_s`` the same per second of this process's CPU time;
- ``latency_us``: p50 / p99 / max of one ``evaluate`` call;
- ``routed_per_event`` and ``fired_per_event``;
- ``parts_us_per_event``: routing alone, the CEL activation, and the rest (conditions
  and rendering), measured apart on the same events;
- ``without_templates``: the same rules with one plain action each (nothing to render):
  routing and conditions with the least firing work;
- ``with_windows``: the same rules with one in ten given a sliding window grouped by
  subject (a sum and a threshold).

No hub, broker or database: this is the pure core the hub drives. Prints one JSON
object; asserts nothing. Aim (issue 4): >= 20,000 events/s.

    .venv/bin/python bench/rules.py
    .venv/bin/python bench/rules.py --events 200000 --json-out rules.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from roost.errors import RoostError
from roost.rules import Engine, expressions, parse_rules
from roost.rules.engine import device_of
from roost.sim.bench import run_bench

AIM_EVENTS_PER_S = 20_000
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
# Readings are 0..120 and thresholds 95..115: about one routed rule in ten fires.
CONDITIONS = [
    "event.data.value > {n}",
    "event.data.value > {n} && event.data.status == 'ok'",
    "has(event.data.flag) && event.data.flag || event.data.value > {n}",
    "event.subject.startsWith('room-1{d}') || event.data.value > {n}",
    "event.data.tags.exists(t, t == 'alarm') && event.data.value >= {n}",
    "event.data.status in ['warn', 'error'] && device == 'd{d}' || event.data.value > {n}",
]
TEMPLATED = [
    {
        "kind": "webhook",
        "url": "https://example.org/hook",
        "body": {"value": "{{ event.data.value }}", "device": "{{ device }}"},
    },
    {"kind": "emit", "type": "app.alert", "subject": "{{ event.subject }}"},
]
PLAIN = [{"kind": "invoke", "function": "f", "input": {}}]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--types", type=int, default=100)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median counts")
    parser.add_argument("--json-out", type=Path, help="write the JSON here too")
    return parser.parse_args()


def rule_set(
    count: int, types: int, rng: random.Random, windows: bool, templated: bool = True
) -> str:
    """``count`` rules, nine in ten on an exact type, one in ten on a pattern."""
    rules = []
    for index in range(count):
        number = index // 10 % types
        kind = f"app.sensor.t{number:03d}"
        trigger: dict[str, Any] = {"type": kind if index % 10 else f"app.sensor.t{number:03d}*"}
        if index % 3 == 0:
            trigger["subject"] = "room-*"
        condition = rng.choice(CONDITIONS).format(n=rng.randint(95, 115), d=rng.randint(0, 9))
        rule: dict[str, Any] = {
            "id": f"r{index:04d}",
            "trigger": trigger,
            "condition": condition,
            "actions": TEMPLATED if templated else PLAIN,
        }
        if windows and index % 10 == 5:
            rule["window"] = {
                "over": "10m",
                "group_by": "event.subject",
                "value": "event.data.value",
                "threshold": "count >= 5 && sum > 300",
            }
        rules.append(rule)
    return yaml.safe_dump({"rules": rules}, sort_keys=False)


def events(count: int, types: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for index in range(count):
        data: dict[str, Any] = {
            "value": rng.randint(0, 120),
            "status": rng.choice(["ok", "ok", "ok", "warn", "error"]),
            "tags": rng.sample(["alarm", "door", "temp", "hum", "motion"], 2),
        }
        if rng.random() < 0.5:
            data["flag"] = rng.random() < 0.5
        device = f"d{rng.randint(0, 999)}"
        out.append(
            {
                "specversion": "1.0",
                "id": f"e{index}",
                "source": f"roost://devices/{device}/sensor",
                "type": f"app.sensor.t{rng.randrange(types):03d}",
                "subject": f"{'room' if rng.random() < 0.9 else 'hall'}-{rng.randint(0, 20)}",
                "time": T0.isoformat(),
                "data": data,
            }
        )
    return out


def measure(rules_text: str, stream: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    engine = Engine(parse_rules(rules_text))
    load_s = time.perf_counter() - started
    for item in stream[:1000]:  # warm the routes and the CEL runtime
        engine.route(item)
    latencies: list[float] = []
    fired = 0
    now = T0
    step = dt.timedelta(milliseconds=10)
    cpu, wall = time.process_time(), time.perf_counter()
    for item in stream:
        begin = time.perf_counter()
        fired += len(engine.evaluate(item, now))
        latencies.append(time.perf_counter() - begin)
        now += step
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "rules": len(engine.rules),
        "parse_and_compile_s": round(load_s, 3),
        "events": len(stream),
        "events_per_s": round(len(stream) / wall),
        "cpu_events_per_s": round(len(stream) / cpu),
        "latency_us": {
            "p50": round(quantiles[49] * 1e6, 1),
            "p99": round(quantiles[98] * 1e6, 1),
            "max": round(max(latencies) * 1e6, 1),
        },
        "routed_per_event": round(sum(len(engine.route(e)) for e in stream) / len(stream), 2),
        "fired_per_event": round(fired / len(stream), 2),
        "parts_us_per_event": parts(engine, stream, wall),
    }


def parts(engine: Engine, stream: list[dict[str, Any]], total_s: float) -> dict[str, float]:
    """Routing alone and the activation alone, over the same events; the rest is CEL."""
    started = time.perf_counter()
    for item in stream:
        engine.route(item)
    routing = time.perf_counter() - started
    started = time.perf_counter()
    for item in stream:
        expressions.bind({"event": item, "device": device_of(item)})
    binding = time.perf_counter() - started
    per = 1e6 / len(stream)
    return {
        "routing": round(routing * per, 2),
        "activation": round(binding * per, 2),
        "conditions_and_rendering": round((total_s - routing - binding) * per, 2),
        "total": round(total_s * per, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    stream = events(args.events, args.types, rng)
    load_before = os.getloadavg()[0]
    state = rng.getstate()
    texts = {}
    for name, windows, templated in (
        ("stateless", False, True),
        ("plain", False, False),
        ("windowed", True, True),
    ):
        rng.setstate(state)  # the same rules each time, but for actions and windows
        texts[name] = rule_set(args.rules, args.types, rng, windows, templated)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in texts}
    for _ in range(args.repeat):  # interleaved, so a busy moment hits every kind alike
        for name, text in texts.items():
            runs[name].append(measure(text, stream))
    stateless, plain, windowed = (_median(runs[name]) for name in texts)
    keep = ("events_per_s", "latency_us", "fired_per_event")
    return {
        "bench": "rules",
        **stateless,
        "runs_events_per_s": [r["events_per_s"] for r in runs["stateless"]],
        "best_events_per_s": max(r["events_per_s"] for r in runs["stateless"]),
        "aim_events_per_s": AIM_EVENTS_PER_S,
        "meets_aim": stateless["events_per_s"] >= AIM_EVENTS_PER_S,
        "without_templates": {k: plain[k] for k in keep},
        "with_windows": {k: windowed[k] for k in keep},
        "cel_expr_python": _version("cel-expr-python"),
        # Another busy process on a 2-vCPU machine slows this one thread by up to half.
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["events_per_s"])[len(runs) // 2]


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> int:
    args = parse_args()
    return run_bench("rules", False, lambda _root: run(args), (RoostError,), args.json_out)


if __name__ == "__main__":
    sys.exit(main())
