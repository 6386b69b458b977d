"""Device messages into fleet state: ``Ingest.accept`` then ``Ingest.flush`` on SQLite."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from roost.db import Database
from roost.events.models import EventRow
from roost.fleet.ingest import FlushResult, Ingest
from roost.fleet.models import CommandRow, Device
from roost.wire import Ack, Birth, Event, Heartbeat, Reply, Reported, Status, topics
from roost.wire.topics import Down, Up

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
A = "d" + "a" * 20
B = "d" + "b" * 20
ACME = "d" + "c" * 20
REVOKED = "d" + "r" * 20
STRANGER = "d" + "s" * 20  # a well-formed id the hub never issued
MAX_PAYLOAD = 1024
MAX_TWIN = 256


@pytest.fixture
def ingest(db: Database) -> Ingest:
    with db.session() as session:
        for device_id, tenant, state in [
            (A, "default", "active"),
            (B, "default", "active"),
            (ACME, "acme", "active"),
            (REVOKED, "default", "revoked"),
        ]:
            session.add(
                Device(
                    id=device_id,
                    tenant_id=tenant,
                    state=state,
                    cert_pem="-",
                    cert_not_after=NOW + dt.timedelta(days=30),
                    desired_version=1,
                )
            )
    return Ingest(MAX_PAYLOAD, MAX_TWIN)


@pytest.fixture
def updates(db: Database) -> Iterator[list[tuple[bool, int]]]:
    """(executemany?, parameter sets) of every UPDATE of the devices table."""
    seen: list[tuple[bool, int]] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("UPDATE DEVICES"):
            seen.append((many, len(params) if many else 1))

    event.listen(db.engine, "before_cursor_execute", record)
    yield seen
    event.remove(db.engine, "before_cursor_execute", record)


def send(ingest: Ingest, device_id: str, kind: Up, message: Any) -> None:
    ingest.accept(topics.up(device_id, kind), message.encode())


def flush(ingest: Ingest, db: Database, now: dt.datetime = NOW) -> FlushResult:
    with db.session() as session:
        return ingest.flush(session, ingest.take(), now)


def device(db: Database, device_id: str) -> Device:
    with db.session() as session:
        row = session.get(Device, device_id)
        assert row is not None
        return row


def set_device(db: Database, device_id: str, **values: Any) -> None:
    with db.session() as session:
        row = session.get(Device, device_id)
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)


def stored_events(db: Database) -> list[EventRow]:
    with db.session() as session:
        return list(session.scalars(select(EventRow).order_by(EventRow.seq)))


def cloudevent(event_id: str, source: str = "app", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "source": source, "type": "test.reading", **extra}


# -- heartbeats -------------------------------------------------------------------------


def test_heartbeats_coalesce_per_device_and_are_written_in_one_statement(
    db: Database, ingest: Ingest, updates: list[tuple[bool, int]]
) -> None:
    for n in (1, 2, 3):
        send(ingest, A, Up.HEARTBEAT, Heartbeat(time=float(n), metrics={"cpu": float(n)}))
    for n in (4, 5):
        send(ingest, B, Up.HEARTBEAT, Heartbeat(time=float(n), metrics={"load": [n, n]}))
    assert len(ingest) == 2

    flush(ingest, db)

    assert updates == [(True, 2)]
    a, b = device(db, A), device(db, B)
    assert a.metrics == {"cpu": 3.0, "time": 3.0}
    assert b.metrics == {"load": [5, 5], "time": 5.0}
    assert a.online
    assert b.online
    assert a.last_seen == NOW
    assert ingest.stats["received"] == 5
    assert ingest.stats["superseded"] == 3
    assert ingest.stats["ingested"] == 2
    assert len(ingest) == 0


@pytest.mark.parametrize(
    ("kind", "message", "soon"),
    [
        (Up.HEARTBEAT, Heartbeat(time=1.0, metrics={}), False),
        (Up.BIRTH, Birth(epoch=1, agent_version="1", inventory={}, labels={}), True),
        (Up.STATUS, Status(online=False, epoch=1), True),
        (Up.REPORTED, Reported(seq=1, desired_version=1, state={}), True),
        (Up.REPLY, Reply(seq=1, id="c1", ok=True), True),
        (Up.EVENT, Event(seq=1, event=cloudevent("e1")), True),
    ],
)
def test_everything_but_heartbeats_asks_to_be_written_soon(
    ingest: Ingest, kind: Up, message: Any, soon: bool
) -> None:
    assert ingest.accept(topics.up(A, kind), message.encode()) is soon


def test_a_dropped_message_asks_for_no_write(ingest: Ingest) -> None:
    assert ingest.accept(topics.up(A, Up.REPORTED), b"{not json") is False


# -- what is dropped --------------------------------------------------------------------

GOOD_HB = Heartbeat(time=1.0, metrics={}).encode()

MALFORMED = [
    ("not a roost topic", "sensors/kitchen", GOOD_HB),
    ("a down topic", topics.down(A, Down.ACK), Ack(seqs=[1]).encode()),
    ("an unknown kind", f"{topics.PREFIX}/{A}/up/nonsense", GOOD_HB),
    ("a bad device id", f"{topics.PREFIX}/NOT-A-DEVICE/up/hb", GOOD_HB),
    ("too many levels", f"{topics.PREFIX}/{A}/up/hb/extra", GOOD_HB),
    ("not JSON", topics.up(A, Up.EVENT), b"{not json"),
    ("not UTF-8", topics.up(A, Up.HEARTBEAT), b"\xff\xfe\x00"),
    ("a JSON array", topics.up(A, Up.HEARTBEAT), b"[1, 2, 3]"),
    ("a JSON string", topics.up(A, Up.BIRTH), b'"hello"'),
    ("a wrong type", topics.up(A, Up.HEARTBEAT), b'{"time": "now", "metrics": {}}'),
    ("a bool for a number", topics.up(A, Up.HEARTBEAT), b'{"time": true, "metrics": {}}'),
    ("a metric of text", topics.up(A, Up.HEARTBEAT), b'{"time": 1, "metrics": {"cpu": "hi"}}'),
    ("a missing field", topics.up(A, Up.BIRTH), b'{"agent_version": "1", "inventory": {}}'),
    (
        "non-string labels",
        topics.up(A, Up.BIRTH),
        b'{"epoch": 1, "agent_version": "1", "inventory": {}, "labels": {"a": 1}}',
    ),
    ("a status of text", topics.up(A, Up.STATUS), b'{"online": "no", "epoch": 1}'),
    ("a reply without ok", topics.up(A, Up.REPLY), b'{"seq": 1, "id": "c1"}'),
    (
        "an event without id",
        topics.up(A, Up.EVENT),
        b'{"seq": 1, "event": {"source": "s", "type": "t"}}',
    ),
    (
        "a reported list",
        topics.up(A, Up.REPORTED),
        b'{"seq": 1, "desired_version": 1, "state": []}',
    ),
    (
        "an oversized payload",
        topics.up(A, Up.EVENT),
        Event(seq=1, event=cloudevent("big", data="x" * MAX_PAYLOAD)).encode(),
    ),
]


@pytest.mark.parametrize(
    ("topic", "payload"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_messages_are_dropped_and_counted(
    db: Database, ingest: Ingest, topic: str, payload: bytes
) -> None:
    ingest.accept(topic, payload)
    assert len(ingest) == 0
    assert ingest.stats["dropped_malformed"] == 1
    assert ingest.stats["received"] == 1
    result = flush(ingest, db)
    assert result.acks == {}
    assert device(db, A).metrics == {}
    assert stored_events(db) == []


def test_a_payload_at_the_limit_is_accepted(db: Database, ingest: Ingest) -> None:
    payload = Heartbeat(time=1.0, metrics={}).encode()
    payload = payload[:-1] + b" " * (MAX_PAYLOAD - len(payload)) + b"}"
    assert len(payload) == MAX_PAYLOAD
    ingest.accept(topics.up(A, Up.HEARTBEAT), payload)
    assert len(ingest) == 1
    assert ingest.stats["dropped_malformed"] == 0


@pytest.mark.parametrize("sender", [STRANGER, REVOKED])
def test_messages_of_unknown_or_revoked_devices_are_dropped_and_counted(
    db: Database, ingest: Ingest, sender: str
) -> None:
    def burst() -> None:
        send(ingest, sender, Up.HEARTBEAT, Heartbeat(time=1.0, metrics={"cpu": 1.0}))
        send(ingest, sender, Up.BIRTH, Birth(epoch=1, agent_version="x", inventory={}, labels={}))
        send(ingest, sender, Up.EVENT, Event(seq=1, event=cloudevent("e1")))
        send(ingest, sender, Up.REPLY, Reply(seq=2, id="c1", ok=True))

    burst()  # not known yet: looked up in the database at flush
    result = flush(ingest, db)
    assert result.acks == {}
    assert result.went_online == []
    assert ingest.stats["dropped_unknown_device"] == 4
    burst()  # known to be bad now: dropped at once
    assert len(ingest) == 0
    assert ingest.stats["dropped_unknown_device"] == 8
    assert ingest.stats["ingested"] == 0
    assert stored_events(db) == []
    if sender == REVOKED:
        assert not device(db, REVOKED).online
        assert device(db, REVOKED).metrics == {}


def test_a_device_marked_revoked_is_dropped_at_once(db: Database, ingest: Ingest) -> None:
    ingest.known(A, None)
    send(ingest, A, Up.HEARTBEAT, Heartbeat(time=1.0, metrics={"cpu": 1.0}))
    assert len(ingest) == 0
    assert ingest.stats["dropped_unknown_device"] == 1


# -- presence ---------------------------------------------------------------------------


def birth(epoch: int, desired_version: int = 1, version: str = "1.0") -> Birth:
    return Birth(
        epoch=epoch,
        agent_version=version,
        inventory={"os": f"os-{epoch}"},
        labels={},
        desired_version=desired_version,
    )


def test_a_birth_brings_a_device_online_with_its_inventory(db: Database, ingest: Ingest) -> None:
    send(ingest, A, Up.BIRTH, birth(200, version="2.0"))
    result = flush(ingest, db)
    assert result.went_online == [A]
    assert result.desired == []  # the device has the newest desired state
    a = device(db, A)
    assert (a.online, a.epoch, a.agent_version) == (True, 200, "2.0")
    assert a.inventory == {"os": "os-200"}
    assert a.last_seen == NOW

    # Another birth of the same connection is no new coming online.
    send(ingest, A, Up.BIRTH, birth(200))
    assert flush(ingest, db).went_online == []


def test_a_birth_of_an_older_connection_is_ignored(db: Database, ingest: Ingest) -> None:
    set_device(db, A, epoch=100)
    send(ingest, A, Up.BIRTH, birth(50, desired_version=0))
    result = flush(ingest, db)
    assert result.went_online == []
    assert result.desired == []
    a = device(db, A)
    assert (a.online, a.epoch, a.inventory) == (False, 100, {})


def test_a_birth_behind_on_desired_state_gets_it_again(db: Database, ingest: Ingest) -> None:
    set_device(db, A, desired={"config": {"mode": "eco"}}, desired_version=4, labels={"k": "v"})
    send(ingest, A, Up.BIRTH, birth(1, desired_version=2))
    result = flush(ingest, db)
    assert len(result.desired) == 1
    device_id, desired = result.desired[0]
    assert device_id == A
    assert desired.version == 4
    assert desired.state == {"config": {"mode": "eco"}, "labels": {"k": "v"}}


def test_a_last_will_of_an_older_connection_is_ignored(db: Database, ingest: Ingest) -> None:
    set_device(db, A, epoch=200, online=True)
    send(ingest, A, Up.STATUS, Status(online=False, epoch=100))
    assert flush(ingest, db).went_offline == []
    assert device(db, A).online

    send(ingest, A, Up.STATUS, Status(online=True, epoch=300))
    assert flush(ingest, db).went_offline == []
    assert device(db, A).online

    send(ingest, A, Up.STATUS, Status(online=False, epoch=200))
    assert flush(ingest, db).went_offline == [A]
    assert not device(db, A).online

    # Already offline: no second going offline.
    send(ingest, A, Up.STATUS, Status(online=False, epoch=200))
    assert flush(ingest, db).went_offline == []


def test_a_reconnect_and_the_old_connections_will_in_one_batch(
    db: Database, ingest: Ingest
) -> None:
    set_device(db, A, epoch=100, online=True)
    send(ingest, A, Up.BIRTH, birth(300))
    send(ingest, A, Up.STATUS, Status(online=False, epoch=100))
    result = flush(ingest, db)
    assert result.went_offline == []
    assert device(db, A).online
    assert device(db, A).epoch == 300


# -- outbox messages: events, replies, reported state, acks -----------------------------


def test_events_are_stored_once_per_source_and_id(db: Database, ingest: Ingest) -> None:
    send(ingest, A, Up.EVENT, Event(seq=1, event=cloudevent("e1", time="2030-01-02T03:04:05Z")))
    send(ingest, A, Up.EVENT, Event(seq=2, event=cloudevent("e1")))  # a resend
    send(ingest, B, Up.EVENT, Event(seq=1, event=cloudevent("e1")))  # same id, other device
    send(ingest, ACME, Up.EVENT, Event(seq=9, event=cloudevent("e2", time="garbage")))
    result = flush(ingest, db)
    send(ingest, A, Up.EVENT, Event(seq=3, event=cloudevent("e1")))  # and again, later
    later = flush(ingest, db)

    # Every copy is acknowledged, or the device would send it forever.
    assert result.acks == {A: [1, 2], B: [1], ACME: [9]}
    assert later.acks == {A: [3]}
    rows = stored_events(db)
    assert [(r.device_id, r.event_id, r.tenant_id) for r in rows] == [
        (A, "e1", "default"),
        (B, "e1", "default"),
        (ACME, "e2", "acme"),
    ]
    assert rows[0].source == f"roost://devices/{A}/app"
    assert rows[0].time == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert rows[2].time == NOW


def test_a_device_cannot_speak_for_the_hub(db: Database, ingest: Ingest) -> None:
    forged = cloudevent("x", source="roost://hub", type="roost.device.offline", subject=B)
    send(ingest, A, Up.EVENT, Event(seq=1, event=forged))
    flush(ingest, db)
    (row,) = stored_events(db)
    assert row.source == f"roost://devices/{A}/roost://hub"
    assert row.device_id == A


@pytest.fixture
def commands(db: Database, ingest: Ingest) -> None:
    with db.session() as session:
        for command_id, device_id, status in [
            ("c-pending", A, "pending"),
            ("c-late", A, "timeout"),
            ("c-other", B, "pending"),
            ("c-fails", A, "pending"),
        ]:
            session.add(
                CommandRow(
                    id=command_id,
                    tenant_id="default",
                    device_id=device_id,
                    name="ping",
                    status=status,
                    deadline=NOW + dt.timedelta(seconds=10),
                )
            )


def command(db: Database, command_id: str) -> CommandRow:
    with db.session() as session:
        row = session.get(CommandRow, command_id)
        assert row is not None
        return row


@pytest.mark.usefixtures("commands")
def test_replies_complete_only_the_devices_own_pending_commands(
    db: Database, ingest: Ingest
) -> None:
    send(ingest, A, Up.REPLY, Reply(seq=1, id="c-pending", ok=True, result={"pong": True}))
    send(ingest, A, Up.REPLY, Reply(seq=2, id="c-late", ok=True, result="late"))
    send(ingest, A, Up.REPLY, Reply(seq=3, id="c-other", ok=True, result="forged"))
    send(ingest, A, Up.REPLY, Reply(seq=4, id="c-unknown", ok=True))
    send(ingest, A, Up.REPLY, Reply(seq=5, id="c-fails", ok=False, error="boom"))
    result = flush(ingest, db)

    assert sorted(r.id for r in result.replies) == ["c-fails", "c-pending"]
    assert result.acks == {A: [1, 2, 3, 4, 5]}
    done = command(db, "c-pending")
    assert (done.status, done.result, done.completed_at) == ("ok", {"pong": True}, NOW)
    failed = command(db, "c-fails")
    assert (failed.status, failed.error) == ("error", "boom")
    assert command(db, "c-late").status == "timeout"
    assert command(db, "c-late").result is None
    assert command(db, "c-other").status == "pending"

    # A second copy of a reply changes nothing and wakes nobody.
    send(ingest, A, Up.REPLY, Reply(seq=6, id="c-pending", ok=False, error="again"))
    assert flush(ingest, db).replies == []
    assert command(db, "c-pending").status == "ok"


def test_reported_state_is_written_and_acknowledged(db: Database, ingest: Ingest) -> None:
    send(ingest, A, Up.REPORTED, Reported(seq=5, desired_version=2, state={"config": {}}))
    send(ingest, A, Up.REPORTED, Reported(seq=6, desired_version=3, state={"config": {"a": 1}}))
    result = flush(ingest, db, now=NOW)
    assert result.acks == {A: [5, 6]}
    a = device(db, A)
    assert (a.reported, a.reported_version, a.reported_at) == ({"config": {"a": 1}}, 3, NOW)


def test_a_resent_older_reported_state_never_overwrites_a_newer_one(
    db: Database, ingest: Ingest
) -> None:
    newer = Reported(seq=6, desired_version=3, state={"config": {"a": 1}})
    older = Reported(seq=5, desired_version=2, state={"config": {}})
    send(ingest, A, Up.REPORTED, newer)
    send(ingest, A, Up.REPORTED, older)  # same batch, arriving late
    assert flush(ingest, db).acks == {A: [6, 5]}
    send(ingest, A, Up.REPORTED, older)  # a later batch
    flush(ingest, db)
    a = device(db, A)
    assert (a.reported, a.reported_version) == ({"config": {"a": 1}}, 3)


def test_an_oversized_reported_state_is_dropped_but_acknowledged(
    db: Database, ingest: Ingest
) -> None:
    send(ingest, A, Up.REPORTED, Reported(seq=1, desired_version=2, state={"x": "y" * MAX_TWIN}))
    result = flush(ingest, db)
    assert result.acks == {A: [1]}
    assert ingest.stats["dropped_oversized_twin"] == 1
    assert device(db, A).reported_version == 0


def test_acks_are_returned_per_device_for_outbox_messages_only(
    db: Database, ingest: Ingest
) -> None:
    send(ingest, A, Up.HEARTBEAT, Heartbeat(time=1.0, metrics={}))
    send(ingest, A, Up.BIRTH, birth(1))
    send(ingest, A, Up.REPORTED, Reported(seq=5, desired_version=1, state={}))
    send(ingest, A, Up.EVENT, Event(seq=6, event=cloudevent("e1")))
    send(ingest, B, Up.EVENT, Event(seq=7, event=cloudevent("e1")))
    send(ingest, STRANGER, Up.EVENT, Event(seq=8, event=cloudevent("e1")))
    send(ingest, B, Up.STATUS, Status(online=False, epoch=1))
    result = flush(ingest, db)
    assert result.acks == {A: [5, 6], B: [7]}
    assert ingest.stats["ingested"] == 6
