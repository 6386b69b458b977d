"""Quotas and usage in the database, on SQLite and PostgreSQL (migrated, as a hub does):
what counts, the reservation a put holds, and two puts at once under one quota."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import roost.hub.core  # noqa: F401  (imports every model onto Base.metadata)
from roost.access.service import Principal
from roost.api import HubContext
from roost.db import Base, Database, utcnow
from roost.errors import QuotaExceededError
from roost.fleet.models import Device
from roost.hub.database import migrate
from roost.settings import HubSettings
from roost.storage import objects, usage
from roost.storage.codec import CodecParams, Encoder
from roost.storage.models import ObjectRow, QuotaRow, ShareRow
from roost.storage.objects import begin_put, record_placement, release
from roost.storage.quota import Usage
from roost.storage.usage import STALE_PENDING_S, tenant_usage, usage_of

OWNER = Principal(tenant_id="default", role="owner", token_id="t")


@dataclasses.dataclass
class FakeHub:
    """What the store's database functions use of the hub."""

    settings: HubSettings
    db: Database


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return migrated_db


def _hub(db: Database, tmp_path: Path, default_quota: int = 0) -> HubContext:
    settings = HubSettings(data_dir=tmp_path / "hub", store_tenant_quota_bytes=default_quota)
    settings.data_dir.mkdir(exist_ok=True)
    return cast(HubContext, FakeHub(settings, db))


def _object(db: Database, name: str, state: str, size: int, age_s: float = 0) -> None:
    with db.session() as session:
        session.add(
            ObjectRow(
                id=name,
                tenant_id="default",
                bucket="b",
                name=name,
                state=state,
                size=size,
                created_at=utcnow() - dt.timedelta(seconds=age_s),
            )
        )


def _set_quota(db: Database, quota: int | None) -> None:
    with db.session() as session:
        session.merge(QuotaRow(tenant_id="default", quota_bytes=quota))


def test_the_migrations_build_the_quota_table_on_both_databases(db: Database) -> None:
    migrate(db)  # a second start finds nothing to do
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_usage_counts_complete_objects_and_fresh_puts_but_not_the_name_being_replaced(
    db: Database,
) -> None:
    _object(db, "done", "complete", 100)
    _object(db, "putting", "pending", 30)
    _object(db, "crashed", "pending", 1000, age_s=STALE_PENDING_S + 60)
    with db.session() as session:
        assert usage_of(session, "default", utcnow()) == Usage(stored=100, pending=30)
        assert usage_of(session, "default", utcnow(), ("b", "done")) == Usage(pending=30)
        assert usage_of(session, "other", utcnow()) == Usage()


def test_the_usage_view_shows_objects_shares_per_device_and_the_quota(
    db: Database, tmp_path: Path
) -> None:
    hub = _hub(db, tmp_path, default_quota=1000)
    with db.session() as session:
        for name, metrics in [
            ("d1", {"storage_quota": 500.0, "storage_free": 400.0}),
            ("d2", {"storage_quota": 500.0, "storage_free": 500.0}),
            ("keeps-nothing", {"storage_quota": 0.0}),
        ]:
            session.add(
                Device(
                    id=name,
                    tenant_id="default",
                    metrics=metrics,
                    online=True,
                    cert_pem="",
                    cert_not_after=utcnow() + dt.timedelta(days=30),
                )
            )
    _object(db, "done", "complete", 100)
    _object(db, "putting", "pending", 30)
    with db.session() as session:
        for index, (device, state) in enumerate([("d1", "stored"), ("d2", "stored")]):
            session.add(
                ShareRow(
                    id=f"s{index}",
                    object_id="done",
                    index=index,
                    device_id=device,
                    state=state,
                    size=60,
                    hash="0" * 64,
                    error="",
                )
            )
        session.add(
            ShareRow(
                id="s2",
                object_id="done",
                index=2,
                device_id="d1",
                state="failed",
                size=60,
                hash="0" * 64,
                error="no room",
            )
        )
    with db.session() as session:
        seen = tenant_usage(session, hub.settings, "default").model_dump()
    devices = seen.pop("devices")
    assert seen == {
        "tenant": "default",
        "objects": 1,
        "bytes": 100,
        "pending_objects": 1,
        "pending_bytes": 30,
        "raw_bytes": 120,  # stored shares only
        "quota_bytes": 1000,
        "quota_from": "hub",
        "room_bytes": 870,
    }
    assert devices == [
        {
            "device_id": "d1",
            "online": True,
            "shares": 1,
            "bytes": 60,
            "offered_bytes": 500,
            "free_bytes": 400,
        },
        {
            "device_id": "d2",
            "online": True,
            "shares": 1,
            "bytes": 60,
            "offered_bytes": 500,
            "free_bytes": 500,
        },
    ]
    _set_quota(db, None)
    with db.session() as session:
        mine = tenant_usage(session, hub.settings, "default")
    assert (mine.quota_bytes, mine.quota_from, mine.room_bytes) == (None, "tenant", None)


def test_a_put_past_the_quota_is_refused_and_leaves_nothing(db: Database, tmp_path: Path) -> None:
    hub = _hub(db, tmp_path)
    _set_quota(db, 100)
    _object(db, "done", "complete", 80)
    with pytest.raises(QuotaExceededError, match=r"^b/new \(30 B\) does not fit"):
        begin_put(hub, OWNER, "b", "new", 30)
    # Replacing "done" frees its 80 bytes: it fits.
    object_id, _, quota, seen = begin_put(hub, OWNER, "b", "done", 90)
    assert (quota, seen) == (100, Usage())
    with db.session() as session:
        assert usage_of(session, "default", utcnow()) == Usage(stored=80, pending=90)
    release(hub, object_id, forget=True)
    with db.session() as session:
        assert session.get(ObjectRow, object_id) is None
        assert usage_of(session, "default", utcnow()) == Usage(stored=80)


def test_a_failed_put_gives_its_reservation_back_but_stays_pending(
    db: Database, tmp_path: Path
) -> None:
    hub = _hub(db, tmp_path, default_quota=100)
    object_id, *_ = begin_put(hub, OWNER, "b", "cut", 60)
    release(hub, object_id, forget=False)
    with db.session() as session:
        row = session.get(ObjectRow, object_id)
        assert row is not None
        assert (row.state, row.size) == ("pending", 0)


def test_a_chunked_put_is_checked_again_with_its_size_before_its_shares_are_placed(
    db: Database, tmp_path: Path
) -> None:
    """It declared no size; meanwhile another put took the room."""
    hub = _hub(db, tmp_path, default_quota=100)
    object_id, *_ = begin_put(hub, OWNER, "b", "chunked", None)
    begin_put(hub, OWNER, "b", "other", 50)
    encoder = Encoder(CodecParams(1, 3))
    encoder.feed(b"x" * 60)
    encoder.finish()
    placement = {0: "d0", 1: "d1", 2: "d2"}
    with pytest.raises(QuotaExceededError, match=r"b/chunked \(60 B\).*50 B of 100 B used"):
        record_placement(hub, OWNER, object_id, encoder, placement, [1, 1, 1], ["0" * 64] * 3)
    with db.session() as session:
        assert session.scalars(ShareRow.__table__.select()).all() == [], "no share placed"


def test_two_puts_at_once_cannot_both_take_the_same_room(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each put, having read the usage, waits for the other to read it too: with the lock
    the other cannot until the first has recorded its reservation (the wait runs out)."""
    hub = _hub(db, tmp_path, default_quota=100)
    both_read = threading.Barrier(2)
    real_usage_of: Callable[..., Usage] = usage.usage_of

    def usage_then_wait(*args: Any) -> Usage:
        seen = real_usage_of(*args)
        try:
            both_read.wait(timeout=2)
        except threading.BrokenBarrierError:
            both_read.abort()  # the other put was held back: the lock works
        return seen

    monkeypatch.setattr(objects, "usage_of", usage_then_wait)
    outcomes: list[str] = []

    def put(name: str) -> None:
        try:
            begin_put(hub, OWNER, "b", name, 60)
        except QuotaExceededError:
            outcomes.append("refused")
        else:
            outcomes.append("reserved")

    threads = [threading.Thread(target=put, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "reserved"]
