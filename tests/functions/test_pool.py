"""The pool of warm workers: reuse, the time and memory limits, crashes, concurrency,
and the sandbox (a function cannot read the hub's data dir, nor reach the network)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.functions.pool import Code, Pool
from roost.functions.sandbox import working_bwrap

COUNTER = """
import os
ID = os.urandom(4).hex()
calls = 0
def handle(event, ctx):
    global calls
    calls += 1
    print("call", calls)
    return {"id": ID, "calls": calls, "event": event}
"""


def code(source: str, name: str = "f", version: int = 1, **limits: object) -> Code:
    return Code(function=f"t/{name}", version=version, files={"main.py": source}, **limits)  # type: ignore[arg-type]


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(max_workers=8)
    yield pool
    await pool.close()
    assert not pool.tmp.exists()


async def test_a_warm_worker_is_reused_and_output_is_captured(pool: Pool) -> None:
    first = await pool.invoke(code(COUNTER), {"n": 1}, {})
    second = await pool.invoke(code(COUNTER), {"n": 2}, {})
    assert first.ok
    assert first.cold
    assert first.output == "call 1\n"
    assert second.ok
    assert not second.cold
    assert second.result == {"id": first.result["id"], "calls": 2, "event": {"n": 2}}
    # A new version gets a new worker; the old one is retired.
    third = await pool.invoke(code(COUNTER, version=2), None, {})
    assert third.cold
    assert third.result["calls"] == 1
    assert pool.workers() == 1
    await pool.retire("t/f")
    assert list(pool.tmp.iterdir()) == [], "a worker stopped removes its files"


async def test_a_runaway_function_is_killed_and_the_pool_goes_on(pool: Pool) -> None:
    runaway = code("def handle(event, ctx):\n    while True:\n        pass\n", timeout_s=0.5)
    outcome = await pool.invoke(runaway, None, {})
    assert not outcome.ok
    assert outcome.error == "timed out after 0.5s; the worker was killed"
    assert pool.workers() == 0
    assert pool.stats["killed"] == 1
    assert (await pool.invoke(code(COUNTER), 1, {})).ok


async def test_a_memory_hungry_function_is_stopped(pool: Pool) -> None:
    hungry = "def handle(event, ctx):\n    return len(bytearray(event << 20))\n"
    small = code(hungry, memory_bytes=200 << 20)
    assert (await pool.invoke(small, 8, {})).result == 8 << 20
    outcome = await pool.invoke(small, 400, {})
    assert not outcome.ok
    assert outcome.error.startswith("MemoryError")
    assert pool.workers() == 0  # the worker is not kept
    assert (await pool.invoke(small, 8, {})).cold


async def test_a_crashed_worker_is_reported_and_replaced(pool: Pool) -> None:
    crashing = (
        "import os\ndef handle(event, ctx):\n    if event:\n        os._exit(3)\n    return 1\n"
    )
    outcome = await pool.invoke(code(crashing), True, {})
    assert not outcome.ok
    assert "worker died (exit code 3)" in outcome.error
    assert list(pool.tmp.iterdir()) != [], "what the dead worker left, until close"
    again = await pool.invoke(code(crashing), False, {})
    assert again.ok
    assert again.cold
    assert again.result == 1


async def test_errors_and_bad_imports_are_reported(pool: Pool) -> None:
    raising = await pool.invoke(code("def handle(e, c):\n    raise ValueError('no')\n"), 1, {})
    assert not raising.ok
    assert raising.error == 'ValueError: no (File "main.py", line 2, in handle)'
    broken = await pool.invoke(code("raise RuntimeError('at import')\n", name="broken"), 1, {})
    assert "importing the function failed: RuntimeError: at import" in broken.error


async def test_concurrency_is_bounded_per_function(pool: Pool) -> None:
    slow = "import os, time\nID = os.urandom(4).hex()\ndef handle(e, c):\n"
    slow += "    began = time.time()\n    time.sleep(0.2)\n    return [ID, began, time.time()]\n"
    bounded = code(slow, concurrency=2)
    outcomes = await asyncio.gather(*(pool.invoke(bounded, i, {}) for i in range(6)))
    assert all(o.ok for o in outcomes)
    assert len({o.result[0] for o in outcomes}) <= 2  # never more than two workers
    spans = [(o.result[1], o.result[2]) for o in outcomes]
    for began, _ in spans:
        assert sum(1 for b, e in spans if b <= began < e) <= 2


@pytest.fixture
def bwrap() -> str:
    found = working_bwrap()
    assert found is not None, "bubblewrap must work here (the sandbox tests need it)"
    return found


async def test_a_sandboxed_function_cannot_read_the_hub_data_dir(
    tmp_path: Path, bwrap: str
) -> None:
    data_dir = tmp_path / "hub-data"
    data_dir.mkdir()
    (data_dir / "secret.key").write_text("hub secret")
    reader = code(f"def handle(e, c):\n    return open({str(data_dir / 'secret.key')!r}).read()\n")
    plain = Pool()
    sandboxed = Pool(hidden=[data_dir], bwrap=bwrap)
    try:
        assert (await plain.invoke(reader, None, {})).result == "hub secret"
        outcome = await sandboxed.invoke(reader, None, {})
        assert not outcome.ok
        assert outcome.error.startswith("FileNotFoundError")
    finally:
        await plain.close()
        await sandboxed.close()


async def test_a_sandboxed_function_has_no_network_by_default(bwrap: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        dial = "import socket\ndef handle(e, c):\n"
        dial += f"    socket.create_connection(('127.0.0.1', {port}), 2).close()\n"
        dial += "    return 'connected'\n"
        pool = Pool(bwrap=bwrap, allow_network=True)
        try:
            refused = await pool.invoke(code(dial), None, {})
            assert not refused.ok
            assert refused.error.startswith(("ConnectionRefusedError", "OSError"))
            allowed = await pool.invoke(code(dial, name="net", network=True), None, {})
            assert allowed.result == "connected"
        finally:
            await pool.close()


EMITTER = """
def handle(event, ctx):
    ctx.emit("app.alarm", {"n": event["n"]}, subject="door")
    if event["n"] < 0:
        raise ValueError("negative")
    if event["n"] > 1:
        ctx.emit("bad", object())
    return ctx["function"]
"""


async def test_events_a_function_emits_come_back_only_when_it_succeeds(pool: Pool) -> None:
    done = await pool.invoke(code(EMITTER), {"n": 1}, {"function": "f"})
    assert done.ok
    assert done.result == "f"
    assert done.events == ({"type": "app.alarm", "subject": "door", "data": {"n": 1}},)
    failed = await pool.invoke(code(EMITTER), {"n": -1}, {"function": "f"})
    assert not failed.ok
    assert failed.events == ()
    not_json = await pool.invoke(code(EMITTER), {"n": 2}, {"function": "f"})
    assert not not_json.ok
    assert "TypeError" in not_json.error
