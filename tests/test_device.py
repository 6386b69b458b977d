"""The apps' SDK helper, ``roost.device.emit``, against the agent's real events socket; and
the fallbacks docs/apps.md gives for apps without Python's roost package, as written there."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from roost import device
from roost.agent.appevents import AppEvents
from roost.agent.outbox import Outbox
from roost.errors import ConfigError, EventRefusedError
from roost.settings import AgentSettings

DOCS = Path(__file__).parents[1] / "docs" / "apps.md"


class _Device:
    def __init__(self, data_dir: Path, events: AppEvents) -> None:
        self.data_dir, self.events = data_dir, events

    def stored(self) -> list[dict[str, Any]]:
        outbox = Outbox(self.data_dir / "agent.db")
        try:
            return [p.body["event"] for p in outbox.due(0.0, 10.0, 1000)]
        finally:
            outbox.close()


async def _serve(data_dir: Path, **settings: Any) -> AsyncIterator[_Device]:
    values = {"events_max_bytes": 1024, **settings}
    async with AppEvents(
        AgentSettings.load(env={}, data_dir=data_dir, **values), lambda: None
    ) as ev:
        await ev.serve(["sensor"])
        yield _Device(data_dir, ev)


@pytest.fixture
async def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Device]:
    async for served in _serve(tmp_path):
        monkeypatch.setenv(device.SOCKET_ENV, str(served.events.path("sensor")))
        yield served


async def test_emit_returns_the_id_once_the_agent_has_the_event(agent: _Device) -> None:
    event_id = await asyncio.to_thread(
        device.emit, "home.bp.reading", {"systolic": 150}, "alice", time="2026-05-01T12:00:00Z"
    )
    again = await asyncio.to_thread(device.emit, "home.bp.reading", id="fixed-1")
    assert again == "fixed-1"
    stored = agent.stored()
    assert [e["id"] for e in stored] == [event_id, "fixed-1"]
    first = stored[0]
    assert (first["type"], first["subject"], first["data"]) == (
        "home.bp.reading",
        "alice",
        {"systolic": 150},
    )
    assert (first["source"], first["time"]) == ("apps/sensor", "2026-05-01T12:00:00Z")


async def test_a_refused_event_raises_what_the_agent_said(agent: _Device) -> None:
    with pytest.raises(EventRefusedError, match="more than the 1024-byte limit") as refused:
        await asyncio.to_thread(device.emit, "home.bp.reading", "x" * 2000)
    assert refused.value.retry_after is None
    with pytest.raises(EventRefusedError, match=r"event\.type: 'no spaces' must be letters"):
        await asyncio.to_thread(device.emit, "no spaces")
    with pytest.raises(EventRefusedError, match="the event is not JSON"):
        await asyncio.to_thread(device.emit, "t", float("nan"))
    assert agent.stored() == []


async def test_a_rate_limit_is_waited_out_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for served in _serve(tmp_path, events_burst=1, events_rate_per_s=20):
        monkeypatch.setenv(device.SOCKET_ENV, str(served.events.path("sensor")))
        first = await asyncio.to_thread(device.emit, "t")
        second = await asyncio.to_thread(device.emit, "t")  # waits for the bucket
        assert [e["id"] for e in served.stored()] == [first, second]
        with pytest.raises(EventRefusedError, match="may emit 20 events a second") as refused:
            await asyncio.to_thread(device.emit, "t", timeout=0)
        assert refused.value.retry_after is not None
        assert refused.value.retry_after > 0


def test_without_an_agent_emit_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(device.SOCKET_ENV, raising=False)
    with pytest.raises(ConfigError, match="ROOST_EVENTS_SOCKET is not set"):
        device.emit("t")
    monkeypatch.setenv(device.SOCKET_ENV, str(tmp_path / "nothing.sock"))
    with pytest.raises(ConfigError, match=r"the agent's events socket .*nothing\.sock"):
        device.emit("t")


def _docs_block(marker: str) -> str:
    """The fenced block of docs/apps.md that contains ``marker``."""
    blocks: list[str] = re.findall(r"```(?:sh|python)\n(.*?)```", DOCS.read_text(), re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/apps.md has no single block with {marker!r}"
    return found[0]


async def _run_shell(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        ["/bin/sh", "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_the_documented_python_one_liner_works(agent: _Device) -> None:
    script = _docs_block("python3 -c")
    # Only the standard library: run it without the roost package anywhere on the path.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    done = await _run_shell(script.replace("python3 -c", "python3 -S -c"), env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert agent.stored()[-1]["type"] == "home.door.opened"


async def test_the_documented_socat_line_works(agent: _Device) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat not installed (apt-get install socat; scripts/setup does)")
    done = await _run_shell(_docs_block("socat"), {})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["ok"] is True
    assert agent.stored()[-1]["type"] == "home.door.opened"
