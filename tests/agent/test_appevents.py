"""Events from apps: the line an app sends, the rate limit, and the socket protocol for real.

The pure parts are table-driven (and the bucket checked with hypothesis); the protocol runs
over real Unix sockets into a real outbox in a temporary data dir, as the agent runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.agent.appevents import AppEvents, Bucket, app_event, read_line, socket_path
from roost.agent.outbox import Outbox
from roost.errors import ValidationError
from roost.settings import AgentSettings

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def _event(line: str | bytes, max_bytes: int = 300) -> dict[str, Any]:
    raw = line.encode() if isinstance(line, str) else line
    return app_event(raw, "bp", max_bytes, NOW)


# -- one line, one event -------------------------------------------------------------------


def test_the_agent_fills_in_id_time_and_source() -> None:
    event = _event('{"type": "home.bp.reading"}')
    assert event["source"] == "apps/bp"
    assert event["type"] == "home.bp.reading"
    assert len(event["id"]) == 36  # a UUID
    assert event["time"] == "2026-05-01T12:00:00Z"
    assert (event["subject"], event["data"], event["specversion"]) == ("", None, "1.0")


def test_what_the_app_gives_is_kept_but_its_source() -> None:
    event = _event(
        json.dumps(
            {
                "specversion": "1.0",
                "id": "r-1",
                "type": "home.bp.reading",
                "source": "roost://devices/someone-else/apps/other",
                "subject": "alice",
                "time": "2026-05-01T14:00:00+02:00",
                "data": {"systolic": 150, "diastolic": 95},
            }
        )
    )
    assert event["source"] == "apps/bp"
    assert (event["id"], event["subject"]) == ("r-1", "alice")
    assert event["time"] == "2026-05-01T12:00:00Z"
    assert event["data"] == {"systolic": 150, "diastolic": 95}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "the event is not JSON"),
        (b"\xff\xfe{}", "the event is not JSON"),
        (b'{"type": "t", "data": NaN}', "NaN is not a JSON number"),
        (b'{"type": "t", "data": -Infinity}', "-Infinity is not a JSON number"),
        (b"[1, 2]", "event must be a JSON object"),
        (b"{}", "event.type: a non-empty string is required"),
        (b'{"type": 7}', "event.type: a non-empty string is required"),
        (b'{"type": "not a type"}', "event.type: 'not a type' must be letters"),
        (b'{"type": "t", "colour": "red"}', "event.colour: not an attribute Roost keeps"),
        (b'{"type": "t", "specversion": "0.3"}', "event.specversion: only CloudEvents 1.0"),
        (b'{"type": "t", "time": "noon"}', "event.time: 'noon' is not an RFC 3339"),
        (b'{"type": "t", "time": "2026-05-01T12:00:00"}', "needs a time zone"),
        (b'{"type": "t", "subject": "a\\nb"}', "event.subject: at most 256 characters"),
        (b'{"type": "t", "id": "' + b"x" * 129 + b'"}', "event.id: at most 128 characters"),
        (b'{"type": "t", "datacontenttype": "text/plain"}', "data must be JSON"),
        (b'{"type": "t", "data": "' + b"x" * 300 + b'"}', "more than the 300-byte limit"),
    ],
)
def test_a_bad_line_is_refused_with_what_is_wrong(line: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")) as refused:
        _event(line)
    assert "\n" not in str(refused.value)


# -- the rate limit ------------------------------------------------------------------------


def test_a_bucket_lets_a_burst_through_then_the_rate() -> None:
    bucket = Bucket(3.0, 0.0)
    for _ in range(3):
        bucket, wait = bucket.take(2.0, 3, 0.0)
        assert wait == 0.0
    bucket, wait = bucket.take(2.0, 3, 0.0)
    assert wait == pytest.approx(0.5)
    bucket, wait = bucket.take(2.0, 3, 0.5)
    assert wait == 0.0
    # A long pause refills it to the burst, never beyond.
    for _ in range(3):
        bucket, wait = bucket.take(2.0, 3, 1000.0)
        assert wait == 0.0
    assert bucket.take(2.0, 3, 1000.0)[1] > 0


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=200),
)
def test_a_bucket_never_lets_more_through_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket, now, taken = Bucket(float(burst), 0.0), 0.0, 0
    for gap in gaps:
        now += gap
        bucket, wait = bucket.take(rate, burst, now)
        if wait == 0.0:
            taken += 1
        else:
            # Once the wait is over, there is an event to take.
            assert bucket.take(rate, burst, now + wait)[1] == pytest.approx(0.0, abs=1e-6)
    assert taken <= burst + rate * now + 1e-6


# -- reading lines -------------------------------------------------------------------------


async def test_lines_long_lines_and_the_last_line_without_a_newline() -> None:
    reader = asyncio.StreamReader(limit=10)
    reader.feed_data(b"short\n" + b"y" * 25 + b"\n\nend")
    reader.feed_eof()
    assert await read_line(reader) == b"short"
    assert await read_line(reader) == 25  # too long: its size, skipped
    assert await read_line(reader) == b""
    assert await read_line(reader) == b"end"
    assert await read_line(reader) is None


# -- the socket, for real ------------------------------------------------------------------


def _settings(data_dir: Path, **kw: Any) -> AgentSettings:
    values: dict[str, Any] = {"events_max_bytes": 300, "events_burst": 100}
    values.update(kw)
    return AgentSettings.load(env={}, data_dir=data_dir, **values)


class _Agent:
    """AppEvents as the agent runs it, and what its outbox holds."""

    events: AppEvents

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.woken = data_dir, 0

    def wake(self) -> None:
        self.woken += 1

    def stored(self) -> list[dict[str, Any]]:
        outbox = Outbox(self.data_dir / "agent.db")  # a connection of its own: on disk
        try:
            return [p.body["event"] for p in outbox.due(0.0, 10.0, 1000)]
        finally:
            outbox.close()


@contextlib.asynccontextmanager
async def _running(data_dir: Path, **settings: Any) -> AsyncIterator[_Agent]:
    """The sockets of apps ``bp`` and ``door``, served."""
    agent = _Agent(data_dir)
    async with AppEvents(_settings(data_dir, **settings), agent.wake) as events:
        agent.events = events
        await events.serve(["bp", "door"])
        yield agent


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[_Agent]:
    async with _running(tmp_path / "agent") as running:
        yield running


async def _talk(path: Path, payload: bytes, answers: int) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(payload)
        await writer.drain()
        return [json.loads(await reader.readline()) for _ in range(answers)]
    finally:
        writer.close()


async def test_each_line_is_answered_in_order_once_it_is_in_the_outbox(agent: _Agent) -> None:
    lines = [
        {"type": "home.bp.reading", "id": "r-1", "subject": "alice", "data": {"sys": 150}},
        {"type": "home.bp.reading", "source": "roost://devices/other/apps/x", "id": "r-2"},
        {"type": "bad type"},
        {"type": "home.bp.reading"},
    ]
    payload = b"".join(json.dumps(e).encode() + b"\n" for e in lines) + b"\n"
    answers = await _talk(agent.events.path("bp"), payload, 4)
    assert answers[:2] == [{"ok": True, "id": "r-1"}, {"ok": True, "id": "r-2"}]
    assert answers[2]["ok"] is False
    assert "event.type: 'bad type' must be letters" in answers[2]["error"]
    assert "retry_after" not in answers[2]
    assert answers[3]["ok"] is True
    stored = agent.stored()
    assert [e["id"] for e in stored] == ["r-1", "r-2", answers[3]["id"]]
    assert {e["source"] for e in stored} == {"apps/bp"}, "the app's claimed source is not kept"
    assert (stored[0]["subject"], stored[0]["data"]) == ("alice", {"sys": 150})
    assert agent.woken == 3

    # The other app's socket says the other app, whatever the line claims.
    door = await _talk(agent.events.path("door"), b'{"type": "d", "source": "apps/bp"}\n', 1)
    assert door[0]["ok"] is True
    assert agent.stored()[-1]["source"] == "apps/door"


async def test_an_oversized_event_is_refused_and_the_connection_goes_on(agent: _Agent) -> None:
    big = json.dumps({"type": "t", "data": "x" * 5000}).encode()
    answers = await _talk(agent.events.path("bp"), big + b'\n{"type": "t", "id": "after"}\n', 2)
    assert answers[0] == {
        "ok": False,
        "error": f"the event is {len(big)} bytes, more than the 300-byte limit",
    }
    assert answers[1] == {"ok": True, "id": "after"}
    assert [e["id"] for e in agent.stored()] == ["after"]


async def test_an_app_over_its_rate_is_told_when_to_come_back(tmp_path: Path) -> None:
    async with _running(tmp_path, events_burst=2, events_rate_per_s=0.01) as agent:
        await _over_the_rate(agent)


async def _over_the_rate(agent: _Agent) -> None:
    payload = b'{"type": "t"}\n' * 3
    answers = await _talk(agent.events.path("bp"), payload, 3)
    assert [a["ok"] for a in answers] == [True, True, False]
    assert "may emit 0.01 events a second (2 at once)" in answers[2]["error"]
    assert 0 < answers[2]["retry_after"] <= 100
    # The limit is per app: another app is not slowed down by this one.
    assert (await _talk(agent.events.path("door"), b'{"type": "t"}\n', 1))[0]["ok"] is True
    assert len(agent.stored()) == 3


async def test_an_app_has_a_bounded_number_of_connections(tmp_path: Path) -> None:
    async with _running(tmp_path, events_max_connections=1) as agent:
        await _one_connection_at_a_time(agent)


async def _one_connection_at_a_time(agent: _Agent) -> None:
    path = agent.events.path("bp")
    first_reader, first = await asyncio.open_unix_connection(path)
    try:
        first.write(b'{"type": "t"}\n')
        assert json.loads(await first_reader.readline())["ok"] is True
        reader, second = await asyncio.open_unix_connection(path)
        answer = json.loads(await reader.readline())
        assert answer["error"] == "app bp has 1 connections open, the most it may"
        assert await reader.read() == b""
        second.close()
    finally:
        first.close()
    # Once it is closed, the app may connect again.
    async with asyncio.timeout(10):
        while True:
            answer = (await _talk(path, b'{"type": "t"}\n', 1))[0]
            if answer["ok"]:
                break
            await asyncio.sleep(0.02)


async def test_sockets_are_private_and_follow_the_apps(agent: _Agent) -> None:
    path = agent.events.path("bp")
    assert path == socket_path(agent.data_dir, "bp") == agent.data_dir / "run/apps/bp/events.sock"
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    await agent.events.serve(["door"])
    assert not path.exists()
    assert not path.parent.exists()
    with pytest.raises(FileNotFoundError):
        await _talk(path, b'{"type": "t"}\n', 1)
    assert (await _talk(agent.events.path("door"), b'{"type": "t"}\n', 1))[0]["ok"]


async def test_a_socket_left_by_an_agent_before_is_replaced(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stale = socket_path(tmp_path, "bp")
    stale.parent.mkdir(parents=True)
    stale.write_text("left behind")
    async with AppEvents(settings, lambda: None) as events:
        await events.serve(["bp"])
        assert (await _talk(stale, b'{"type": "t", "id": "1"}\n', 1))[0] == {"ok": True, "id": "1"}


async def test_a_data_dir_too_long_for_a_socket_address_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    settings = _settings(deep)
    async with AppEvents(settings, lambda: None) as events:
        await events.serve(["bp"])
        path = events.path("bp")
        assert len(str(path)) > 108
        from roost.device import unix_address

        with unix_address(path) as address:
            answers = await _talk(Path(address), b'{"type": "t", "id": "deep"}\n', 1)
        assert answers == [{"ok": True, "id": "deep"}]
