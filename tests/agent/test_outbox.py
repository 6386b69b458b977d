"""The agent's outbox: what is due, resend backoff, acknowledgement, overflow, values,
and two processes on one file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.agent.outbox import EDGE_FEED, MAX_RESEND_S, Outbox
from roost.errors import ConfigError

T0 = 1_900_000_000.0
RESEND = 10.0


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "agent.db", max_messages=100)
    yield box
    box.close()


def due_seqs(box: Outbox, now: float, limit: int = 100) -> list[int]:
    return [p.seq for p in box.due(now, RESEND, limit)]


def test_put_keeps_kind_and_body_in_order(outbox: Outbox) -> None:
    seqs = [outbox.put("event", {"event": {"n": n}}, T0) for n in range(3)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    due = outbox.due(T0, RESEND, 10)
    assert [(p.seq, p.kind, p.body) for p in due] == [
        (seqs[n], "event", {"event": {"n": n}}) for n in range(3)
    ]
    assert len(outbox) == 3


def test_due_respects_the_limit(outbox: Outbox) -> None:
    seqs = [outbox.put("event", {}, T0) for _ in range(5)]
    assert due_seqs(outbox, T0, limit=2) == seqs[:2]


def test_sent_messages_wait_with_a_growing_delay(outbox: Outbox) -> None:
    seq = outbox.put("reply", {"id": "c1"}, T0)
    sent_at = T0
    # After the n-th send the message waits RESEND * 2**(n-1), up to MAX_RESEND_S.
    for attempt in range(1, 10):
        outbox.mark_sent([seq], sent_at)
        wait = min(RESEND * 2 ** (attempt - 1), MAX_RESEND_S)
        assert due_seqs(outbox, sent_at + wait - 0.01) == [], attempt
        assert due_seqs(outbox, sent_at + wait) == [seq], attempt
        sent_at += wait
    assert wait == MAX_RESEND_S


def test_a_waiting_message_does_not_hold_back_new_ones(outbox: Outbox) -> None:
    old = outbox.put("event", {}, T0)
    outbox.mark_sent([old], T0)
    new = outbox.put("event", {}, T0 + 1)
    assert due_seqs(outbox, T0 + 1) == [new]


def test_reset_sent_makes_everything_due_again(outbox: Outbox) -> None:
    seqs = [outbox.put("event", {}, T0) for _ in range(3)]
    outbox.mark_sent(seqs, T0)
    outbox.mark_sent(seqs, T0)
    assert due_seqs(outbox, T0 + 1) == []
    outbox.reset_sent()
    assert due_seqs(outbox, T0 + 1) == seqs
    # The backoff starts over too.
    outbox.mark_sent(seqs, T0 + 1)
    assert due_seqs(outbox, T0 + 1 + RESEND) == seqs


def test_ack_removes_exactly_the_named_messages(outbox: Outbox) -> None:
    seqs = [outbox.put("event", {"n": n}, T0) for n in range(4)]
    outbox.ack([seqs[1], seqs[3], 999_999])
    assert len(outbox) == 2
    assert due_seqs(outbox, T0) == [seqs[0], seqs[2]]
    outbox.ack([seqs[1]])  # twice is harmless
    assert len(outbox) == 2


def test_seqs_are_never_reused_after_an_ack(outbox: Outbox) -> None:
    # The hub acknowledges by seq: a reused seq could delete a message it never stored.
    first = outbox.put("event", {}, T0)
    outbox.ack([first])
    assert len(outbox) == 0
    assert outbox.put("event", {}, T0) > first


def test_a_full_outbox_drops_the_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "agent.db", max_messages=10)
    try:
        seqs = [box.put("event", {"n": n}, T0) for n in range(13)]
        assert len(box) == 10
        assert due_seqs(box, T0) == seqs[3:]
    finally:
        box.close()


def test_values_are_kept_as_json(outbox: Outbox) -> None:
    assert outbox.get("state") is None
    outbox.set("state", {"labels": {"a": "b"}, "config": {}})
    outbox.set("desired_version", 3)
    assert outbox.get("state") == {"labels": {"a": "b"}, "config": {}}
    outbox.set("desired_version", 4)
    assert outbox.get("desired_version") == 4
    assert len(outbox) == 0  # values are not messages


def test_two_outboxes_on_one_file_act_as_two_processes(tmp_path: Path) -> None:
    agent = Outbox(tmp_path / "agent.db")
    emitter = Outbox(tmp_path / "agent.db")  # `roost agent emit` while the agent runs
    try:
        mine = agent.put("reported", {"v": 1}, T0)
        theirs = [emitter.put("event", {"n": n}, T0) for n in range(3)]
        assert len({mine, *theirs}) == 4
        assert due_seqs(agent, T0) == sorted([mine, *theirs])

        agent.mark_sent([mine, *theirs], T0)
        assert due_seqs(emitter, T0) == []
        emitter.ack(theirs)
        assert len(agent) == 1

        emitter.set("desired_version", 7)
        assert agent.get("desired_version") == 7
    finally:
        emitter.close()
        agent.close()

    reopened = Outbox(tmp_path / "agent.db")
    try:
        assert due_seqs(reopened, T0 + RESEND) == [mine]
        assert reopened.get("desired_version") == 7
    finally:
        reopened.close()


def test_what_edge_functions_emit_makes_room_in_a_full_outbox_too(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "agent.db", max_messages=10)
    try:
        seqs = [box.put("event", {"n": n}, T0) for n in range(8)]
        box.set(EDGE_FEED, True)
        box.put("event", {"event": {"source": "cli", "id": "a"}}, T0)
        (handled,) = box.inbox(10)
        emitted = [{"event": {"source": "functions/door", "id": f"out{n}"}} for n in range(4)]
        box.handled(handled.seq, emitted, T0)
        assert len(box) == 10
        assert due_seqs(box, T0)[:5] == seqs[3:], "the oldest three made room"
    finally:
        box.close()


def test_an_unusable_store_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "agent.db").mkdir()
    with pytest.raises(ConfigError, match="agent's store"):
        Outbox(tmp_path / "agent.db")


def test_events_feed_the_edge_inbox_only_while_the_feed_is_on(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "agent.db")
    other_process = Outbox(tmp_path / "agent.db")
    outbox.put("event", {"event": {"source": "apps/door", "id": "before"}}, 1.0)
    outbox.set(EDGE_FEED, True)
    other_process.put("event", {"event": {"source": "cli", "id": "a"}}, 2.0)
    outbox.put("reported", {"state": {}}, 3.0)
    outbox.put("event", {"event": {"source": "functions/door", "id": "own"}}, 4.0)
    inbox = outbox.inbox(10)
    assert [item.body["event"]["id"] for item in inbox] == ["a"], (
        "only events, only after the feed is on, never the functions' own"
    )
    outbox.handled(inbox[0].seq, [{"event": {"source": "functions/door", "id": "out"}}], 5.0)
    assert outbox.inbox(10) == []
    assert [p.body.get("event", {}).get("id") for p in outbox.due(6.0, 1.0, 10)] == [
        "before",
        "a",
        None,
        "own",
        "out",
    ]
    outbox.set(EDGE_FEED, False)
    outbox.put("event", {"event": {"source": "cli", "id": "after"}}, 7.0)
    assert outbox.inbox(10) == []


def test_the_edge_inbox_keeps_its_newest_events(outbox: Outbox) -> None:
    for n in range(5):
        outbox.to_inbox({"event": {"id": str(n)}})
    assert outbox.trim_inbox(2) == 3
    assert [item.body["event"]["id"] for item in outbox.inbox(10)] == ["3", "4"]
