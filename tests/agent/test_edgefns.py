"""Edge functions on the device: what a verified catalog file must hold, which events
start which function, what an invocation sends back (ids that are the same however often
it runs), and the shell installing versions and handling the store's inbox."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from roost.agent.edgefns import (
    CRON,
    EdgeFunction,
    EdgeFunctions,
    invocation_key,
    outputs,
    parse_bundle,
    routes,
)
from roost.agent.outbox import Outbox
from roost.errors import UpdateError, UpdateRefusedError
from roost.functions.pool import Outcome, Pool
from roost.settings import AgentSettings

BUNDLE: dict[str, Any] = {
    "name": "door",
    "version": 3,
    "entry": "main",
    "files": {"main.py": "def handle(event, ctx):\n    return 1\n"},
    "timeout_s": 2.5,
    "memory_bytes": 64 << 20,
    "concurrency": 2,
    "trigger": {"type": ["app.door.*"], "source": [], "subject": ["front"]},
    "cron": "",
}
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
EVENT = {"id": "e1", "source": "apps/door", "type": "app.door.forced", "subject": "front"}


def _raw(**changes: Any) -> bytes:
    return json.dumps({**BUNDLE, **changes}).encode()


def _door() -> EdgeFunction:
    return parse_bundle(_raw(), "door", 3)


def test_a_bundle_gives_the_function_its_limits_and_trigger() -> None:
    door = _door()
    assert door.code.function == "edge/door"
    assert door.code.version == 3
    assert door.code.timeout_s == 2.5
    assert door.code.memory_bytes == 64 << 20
    assert door.code.concurrency == 2
    assert door.trigger is not None
    assert door.trigger.to_dict() == BUNDLE["trigger"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "is not a function"),
        (_raw(name="other"), "holds other v3"),
        (_raw(version=4), "holds door v4"),
        (_raw(files={"main.py": 1}), "its files are not"),
        (json.dumps({"name": "door"}).encode(), "it has no version"),
    ],
)
def test_a_file_that_is_not_the_named_version_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(UpdateRefusedError, match=message):
        parse_bundle(raw, "door", 3)


def test_events_reach_the_functions_their_trigger_or_cron_names() -> None:
    door = _door()
    assert routes(door, EVENT)
    assert not routes(door, {**EVENT, "subject": "back"})
    assert not routes(door, {**EVENT, "type": "app.window.forced"})
    cron = {"id": "c", "source": "cron", "type": CRON, "subject": "door"}
    assert routes(door, cron)
    assert not routes(door, {**cron, "subject": "other"})
    assert not routes(door, {**cron, "source": "apps/x"}), "an app cannot fake a cron firing"


def test_an_invocation_sends_what_it_emitted_then_its_record_with_stable_ids() -> None:
    outcome = Outcome(
        ok=True,
        result={"n": 1},
        output="hi\n",
        duration_ms=1.5,
        events=({"type": "app.door.counted", "subject": "front", "data": {"n": 1}},),
    )
    sent = [body["event"] for body in outputs(_door(), EVENT, outcome, NOW, 1000)]
    assert [e["id"] for e in sent] == ["apps/door/e1/0", "apps/door/e1"]
    assert [e["type"] for e in sent] == ["app.door.counted", "roost.function.invoked"]
    assert {e["source"] for e in sent} == {"functions/door"}
    record = sent[1]["data"]
    assert record["ok"] is True
    assert record["result"] == {"n": 1}
    assert record["event"] == EVENT
    again = [body["event"]["id"] for body in outputs(_door(), EVENT, outcome, NOW, 1000)]
    assert again == ["apps/door/e1/0", "apps/door/e1"], "a rerun sends the same ids"


def test_a_bad_emitted_event_fails_the_invocation_and_sends_none() -> None:
    outcome = Outcome(ok=True, result=1, events=({"type": "no spaces allowed", "data": None},))
    sent = [body["event"] for body in outputs(_door(), EVENT, outcome, NOW, 1000)]
    assert [e["type"] for e in sent] == ["roost.function.invoked"]
    assert sent[0]["data"]["ok"] is False
    assert "emitted event 0 is refused" in sent[0]["data"]["error"]
    forged = Outcome(ok=True, events=({"type": "roost.function.invoked", "data": {"ok": True}},))
    record = outputs(_door(), EVENT, forged, NOW, 1000)[-1]["event"]["data"]
    assert "roost.* events are the hub's own" in record["error"], "no forged invocations"
    big = Outcome(ok=True, events=({"type": "app.big", "data": "x" * 2000},))
    record = outputs(_door(), EVENT, big, NOW, 1000)[-1]["event"]["data"]
    assert "2002 bytes is more than the 1000-byte limit" in record["error"]


def test_long_keys_are_hashed_to_fit_the_hub() -> None:
    key = invocation_key({"source": "apps/door", "id": "x" * 200})
    assert len(key) == 64
    assert key == invocation_key({"source": "apps/door", "id": "x" * 200})


# -- the shell, over a real store and pool, the catalog faked ------------------------------


class Catalog:
    """The download seam in memory: bundles by (name, version), or the error to raise."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, int], bytes | Exception] = {}
        self.asked: list[tuple[str, int]] = []

    def __call__(self, name: str, version: int) -> bytes:
        self.asked.append((name, version))
        found = self.files.get((name, version), UpdateError(f"no {name} v{version} yet"))
        if isinstance(found, Exception):
            raise found
        return found


COUNT = "def handle(event, ctx):\n    ctx.emit('app.door.counted', event['data'])\n    return 1\n"


async def _until(predicate: Callable[[], object], what: str) -> None:
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[EdgeFunctions, Outbox, Catalog]]:
    outbox = Outbox(tmp_path / "agent.db")
    catalog = Catalog()
    edge = EdgeFunctions(
        AgentSettings(data_dir=tmp_path),
        outbox,
        catalog,
        "dev1",
        on_sent=lambda: None,
        on_change=lambda: None,
        pool=Pool(max_workers=2),
    )
    task = asyncio.create_task(edge.run())
    yield edge, outbox, catalog
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    outbox.close()


def _sent(outbox: Outbox) -> list[dict[str, Any]]:
    return [p.body["event"] for p in outbox.due(0.0, 1.0, 100) if p.kind == "event"]


async def test_a_wanted_version_is_installed_and_handles_local_events(
    device: tuple[EdgeFunctions, Outbox, Catalog], tmp_path: Path
) -> None:
    edge, outbox, catalog = device
    catalog.files["door", 3] = _raw(files={"main.py": COUNT})
    edge.want({"door": 3})
    await _until(lambda: edge.report() == {"door": {"version": 3, "state": "running"}}, "install")
    assert (tmp_path / "functions" / "door.json").is_file(), "kept for a restart offline"
    outbox.put("event", {"event": {**EVENT, "data": {"n": 1}}}, 1.0)
    outbox.put("event", {"event": {**EVENT, "id": "e2", "subject": "back"}}, 1.0)
    edge.wake()
    await _until(lambda: not outbox.inbox(10) and len(_sent(outbox)) == 4, "the results")
    sent = _sent(outbox)
    assert [e["type"] for e in sent[2:]] == ["app.door.counted", "roost.function.invoked"]
    assert sent[2]["data"] == {"n": 1}
    edge.want({})
    await _until(lambda: not (tmp_path / "functions" / "door.json").exists(), "the removal")
    assert edge.report() == {}


async def test_refused_and_unreachable_versions_are_reported(
    device: tuple[EdgeFunctions, Outbox, Catalog],
) -> None:
    edge, _, catalog = device
    catalog.files["door", 3] = UpdateRefusedError("refused target: not signed by enough keys")
    edge.want({"door": 3, "late": 1})
    await _until(lambda: edge.report()["door"]["state"] == "failed", "the refusal")
    assert "not signed by enough keys" in edge.report()["door"]["error"]
    assert edge.report()["late"] == {"version": 1, "state": "installing"}
    catalog.files["late", 1] = _raw(name="late", version=1)
    await _until(lambda: edge.report()["late"]["state"] == "running", "the retry")
    assert catalog.asked.count(("door", 3)) == 1, "a refused version is not asked for again"
