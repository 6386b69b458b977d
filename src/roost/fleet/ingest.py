"""Device messages into fleet state, in batches.

``Ingest.accept`` runs on the MQTT callback for every message: it decodes and validates
(drops and counts what is malformed, oversized or from an unknown device) and buffers.
``Ingest.flush`` writes everything buffered in one transaction — heartbeats coalesced to
the latest per device and written with one ``executemany`` — and returns what the hub
must publish afterwards: outbox acknowledgements and desired states to resend.
Acknowledgements go out only after the commit, so an outbox entry leaves its device only
once it is stored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Dialect, Table, select, update
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from roost.errors import WireError
from roost.events.cloudevents import device_time
from roost.events.store import insert_events
from roost.fleet.models import CommandRow, Device
from roost.fleet.service import desired_message
from roost.functions import edge
from roost.wire import Birth, Desired, Event, Heartbeat, Reply, Reported, Status, topics
from roost.wire.functions import INVOKED
from roost.wire.topics import Up

log = logging.getLogger("roost.fleet.ingest")


@dataclass
class Batch:
    heartbeats: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    births: dict[str, Birth] = field(default_factory=dict)
    statuses: list[tuple[str, Status]] = field(default_factory=list)
    reported: dict[str, Reported] = field(default_factory=dict)
    replies: list[tuple[str, Reply]] = field(default_factory=list)
    events: list[tuple[str, Event]] = field(default_factory=list)
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def __len__(self) -> int:
        return (
            len(self.heartbeats)
            + len(self.births)
            + len(self.statuses)
            + len(self.reported)
            + len(self.replies)
            + len(self.events)
        )

    def count_from(self, devices: set[str]) -> int:
        """How many of the buffered messages came from ``devices``."""
        return (
            sum(d in devices for d in self.heartbeats)
            + sum(d in devices for d in self.births)
            + sum(d in devices for d, _ in self.statuses)
            + sum(d in devices for d in self.reported)
            + sum(d in devices for d, _ in self.replies)
            + sum(d in devices for d, _ in self.events)
        )


@dataclass
class FlushResult:
    acks: dict[str, list[int]]
    desired: list[tuple[str, Desired]]
    replies: list[Reply]
    went_online: list[str]
    went_offline: list[str]


_DECODERS: dict[str, Callable[[bytes, int], Any]] = {
    Up.BIRTH: Birth.decode,
    Up.STATUS: Status.decode,
    Up.HEARTBEAT: Heartbeat.decode,
    Up.REPORTED: Reported.decode,
    Up.REPLY: Reply.decode,
    Up.EVENT: Event.decode,
}


class Ingest:
    """Buffers decoded device messages between flushes. Not thread-safe: one event loop."""

    def __init__(self, max_payload: int, max_twin: int) -> None:
        self.max_payload = max_payload
        self.max_twin = max_twin
        self.stats: Counter[str] = Counter()
        # device id -> tenant id of active devices; None marks a known-bad id.
        self._tenants: dict[str, str | None] = {}
        self._batch = Batch()

    def __len__(self) -> int:
        return len(self._batch)

    def known(self, device_id: str, tenant_id: str | None) -> None:
        """Tell the ingest a device's tenant (None: revoked or gone)."""
        self._tenants[device_id] = tenant_id

    def accept(self, topic: str, payload: bytes) -> bool:
        """Decode one message into the batch; bad messages are dropped and counted.

        True when the message should be written soon: anything but a heartbeat.
        """
        self.stats["received"] += 1
        try:
            parsed = topics.parse(topic)
            if parsed.direction != "up":
                raise WireError("devices may not send down messages")
            message = _DECODERS[parsed.kind](payload, self.max_payload)
        except WireError as err:
            self.stats["dropped_malformed"] += 1
            log.debug("dropped message on %s: %s", topic[:120], err)
            return False
        device_id = parsed.device_id
        if self._tenants.get(device_id, "") is None:
            self.stats["dropped_unknown_device"] += 1
            return False
        batch = self._batch
        match message:
            case Heartbeat():
                if device_id in batch.heartbeats:
                    # Only the newest heartbeat of a device in a batch is written.
                    self.stats["superseded"] += 1
                batch.heartbeats[device_id] = (message.time, message.metrics)
                return False
            case Birth():
                batch.births[device_id] = message
            case Status():
                batch.statuses.append((device_id, message))
            case Reported():
                newest = batch.reported.get(device_id)
                if newest is None or newest.desired_version <= message.desired_version:
                    batch.reported[device_id] = message
                batch.seqs[device_id].append(message.seq)
            case Reply():
                batch.replies.append((device_id, message))
                batch.seqs[device_id].append(message.seq)
            case Event():
                batch.events.append((device_id, message))
                batch.seqs[device_id].append(message.seq)
        return True

    def take(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        return batch

    def flush(self, session: Session, batch: Batch, now: dt.datetime) -> FlushResult:
        """Write ``batch`` in the caller's transaction. Runs in a worker thread."""
        result = FlushResult(acks={}, desired=[], replies=[], went_online=[], went_offline=[])
        ids = (
            set(batch.heartbeats)
            | set(batch.births)
            | {d for d, _ in batch.statuses}
            | set(batch.reported)
            | {d for d, _ in batch.replies}
            | {d for d, _ in batch.events}
        )
        self._resolve(session, ids - set(self._tenants))
        active = {d for d in ids if self._tenants.get(d)}
        # Every message of an unknown or revoked device, not only its heartbeats and births.
        dropped = batch.count_from(ids - active)
        self.stats["dropped_unknown_device"] += dropped
        self._write_births(session, batch, active, now, result)
        self._write_heartbeats(session, batch, active, now)
        self._write_statuses(session, batch, active, result)
        self._write_reported(session, batch, active, now)
        self._write_replies(session, batch, active, now, result)
        self._write_events(session, batch, active, now)
        result.acks = {d: seqs for d, seqs in batch.seqs.items() if d in active}
        self.stats["ingested"] += len(batch) - dropped
        return result

    def _resolve(self, session: Session, unknown: set[str]) -> None:
        if not unknown:
            return
        rows = session.execute(
            select(Device.id, Device.tenant_id, Device.state).where(Device.id.in_(unknown))
        )
        found = {i: (t if s == "active" else None) for i, t, s in rows}
        for device_id in unknown:
            self._tenants[device_id] = found.get(device_id)

    def _write_births(
        self,
        session: Session,
        batch: Batch,
        active: set[str],
        now: dt.datetime,
        result: FlushResult,
    ) -> None:
        births = {d: b for d, b in batch.births.items() if d in active}
        if not births:
            return
        devices = session.scalars(select(Device).where(Device.id.in_(births)))
        for device in devices:
            birth = births[device.id]
            if birth.epoch < device.epoch:
                continue  # an older connection's birth arriving late
            if not device.online:
                result.went_online.append(device.id)
            device.epoch = birth.epoch
            device.online = True
            device.last_seen = now
            device.inventory = birth.inventory
            device.agent_version = birth.agent_version
            if birth.desired_version != device.desired_version:
                result.desired.append((device.id, desired_message(device)))

    def _write_heartbeats(
        self, session: Session, batch: Batch, active: set[str], now: dt.datetime
    ) -> None:
        beats = [(d, t, m) for d, (t, m) in batch.heartbeats.items() if d in active]
        if not beats:
            return
        # Thousands of rows a second: SQLAlchemy's executemany would run every parameter
        # of every row through its type processing, which costs more than the database's
        # own work. The columns' processors are applied here instead (the timestamp once)
        # and the rows go to the driver as they are.
        connection = session.connection()
        dialect = connection.dialect
        columns = _device_table().c
        as_json = _processor(columns.metrics.type, dialect)
        seen = _processor(columns.last_seen.type, dialect)(now)
        rows = [(as_json({**metrics, "time": t}), seen, True, d) for d, t, metrics in beats]
        statement = "UPDATE devices SET metrics = ?, last_seen = ?, online = ? WHERE id = ?"
        if dialect.paramstyle != "qmark":
            statement = statement.replace("?", "%s")
        connection.exec_driver_sql(statement, rows)

    def _write_statuses(
        self, session: Session, batch: Batch, active: set[str], result: FlushResult
    ) -> None:
        for device_id, status in batch.statuses:
            if device_id not in active or status.online:
                continue
            gone = session.execute(
                update(Device)
                .where(Device.id == device_id, Device.epoch <= status.epoch, Device.online)
                .values(online=False)
            )
            if gone.rowcount:  # type: ignore[attr-defined]
                result.went_offline.append(device_id)

    def _write_reported(
        self, session: Session, batch: Batch, active: set[str], now: dt.datetime
    ) -> None:
        for device_id, reported in batch.reported.items():
            if device_id not in active:
                continue
            if len(json.dumps(reported.state)) > self.max_twin:
                self.stats["dropped_oversized_twin"] += 1
                continue
            session.execute(
                update(Device)
                # A resent older report never overwrites a newer one.
                .where(Device.id == device_id, Device.reported_version <= reported.desired_version)
                .values(
                    reported=reported.state,
                    reported_version=reported.desired_version,
                    reported_at=now,
                )
            )

    def _write_replies(
        self,
        session: Session,
        batch: Batch,
        active: set[str],
        now: dt.datetime,
        result: FlushResult,
    ) -> None:
        for device_id, reply in batch.replies:
            if device_id not in active:
                continue
            done = session.execute(
                update(CommandRow)
                .where(
                    CommandRow.id == reply.id,
                    CommandRow.device_id == device_id,
                    CommandRow.status == "pending",
                )
                .values(
                    status="ok" if reply.ok else "error",
                    result=reply.result,
                    error=reply.error,
                    completed_at=now,
                )
            )
            if done.rowcount:  # type: ignore[attr-defined]
                result.replies.append(reply)

    def _write_events(
        self, session: Session, batch: Batch, active: set[str], now: dt.datetime
    ) -> None:
        rows = []
        invoked: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for device_id, message in batch.events:
            tenant = self._tenants.get(device_id)
            if device_id not in active or tenant is None:
                continue
            event = message.event
            if event["type"] == INVOKED:
                invoked[tenant, device_id].append(event)
            rows.append(
                {
                    "tenant_id": tenant,
                    "event_id": str(event["id"])[:128],
                    # A device speaks for itself only: its events' source is its own.
                    "source": f"roost://devices/{device_id}/{str(event['source'])[:180]}",
                    "type": str(event["type"])[:256],
                    "subject": str(event.get("subject", ""))[:256],
                    "device_id": device_id,
                    "time": device_time(event.get("time"), now),
                    "data": event.get("data"),
                    "received_at": now,
                }
            )
        if rows:
            insert_events(session, rows)
        for (tenant, device_id), events in invoked.items():
            edge.record_invocations(session, tenant, device_id, events)


def _device_table() -> Table:
    table = Device.__table__
    assert isinstance(table, Table)
    return table


def _processor(column_type: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any]:
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else (lambda value: value)
