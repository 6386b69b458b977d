"""One repair of an object at a time across hub replicas: the lease's rule (pure), the
lease in the database on SQLite and PostgreSQL (migrated, as a hub does), and ``rebuild``
and the repair loop played by two hubs in one process (two holders), with the share
transfer replaced by a fake that counts how many rebuilds of the object run at once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.exc import OperationalError

import roost.hub.core  # noqa: F401  (imports every model onto Base.metadata)
from roost.api import HubContext
from roost.db import Database, utcnow
from roost.errors import PlacementError, RepairBusyError
from roost.fleet.models import Device
from roost.settings import HubSettings
from roost.storage import lease, repair
from roost.storage.codec import CodecParams, Encoder
from roost.storage.lease import Lease, db_now, lease_of, may_take
from roost.storage.manifest import Manifest
from roost.storage.models import ObjectRow, RepairLeaseRow, ShareRow
from roost.storage.repair import rebuild
from roost.storage.upkeep import Backoff, repair_pass

T0 = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
TTL_S = 60.0


# -- the rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease_now", "holder", "now", "free"),
    [
        (None, "a", T0, True),  # no lease
        (Lease("b", T0 + SECOND), "a", T0, False),  # another's, live
        (Lease("b", T0), "a", T0, True),  # another's, ends now
        (Lease("b", T0 - SECOND), "a", T0, True),  # another's, expired
        (Lease("a", T0 + SECOND), "a", T0, True),  # mine, live: taking renews it
        (Lease("a", T0 - SECOND), "a", T0, True),  # mine, expired
    ],
)
def test_a_lease_is_free_when_absent_expired_or_mine(
    lease_now: Lease | None, holder: str, now: dt.datetime, free: bool
) -> None:
    assert may_take(lease_now, holder, now) is free


# -- in the database ----------------------------------------------------------------------


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return migrated_db


def _take(db: Database, holder: str, now: dt.datetime, object_id: str = "o") -> bool:
    with db.session() as session:
        return lease.take(session, object_id, holder, TTL_S, now)


def _renew(db: Database, holder: str, now: dt.datetime) -> bool:
    with db.session() as session:
        return lease.renew(session, "o", holder, TTL_S, now)


def _release(db: Database, holder: str) -> None:
    with db.session() as session:
        lease.release(session, "o", holder)


def _lease(db: Database, object_id: str = "o") -> Lease | None:
    with db.session() as session:
        return lease_of(session, object_id)


def test_two_hubs_one_lease_taken_held_expired_and_released(db: Database) -> None:
    assert _take(db, "hub-a", T0)
    assert _lease(db) == Lease("hub-a", T0 + TTL_S * SECOND)
    assert not _take(db, "hub-b", T0 + 59 * SECOND), "a live lease is not taken"
    assert _take(db, "hub-a", T0 + 30 * SECOND), "the holder's own take renews it"
    assert _lease(db) == Lease("hub-a", T0 + 90 * SECOND)
    assert not _take(db, "hub-b", T0 + 89 * SECOND)
    # hub-a died: its lease runs out, and hub-b takes it.
    assert _take(db, "hub-b", T0 + 90 * SECOND)
    assert _lease(db) == Lease("hub-b", T0 + 150 * SECOND)
    assert not _renew(db, "hub-a", T0 + 91 * SECOND), "hub-a has lost it"
    _release(db, "hub-a")
    assert _lease(db) == Lease("hub-b", T0 + 150 * SECOND), "only the holder releases"
    assert _renew(db, "hub-b", T0 + 100 * SECOND)
    assert _lease(db) == Lease("hub-b", T0 + 160 * SECOND)
    _release(db, "hub-b")
    assert _lease(db) is None
    assert _take(db, "hub-a", T0 + 101 * SECOND), "a released lease is free at once"
    assert _take(db, "hub-b", T0, object_id="other"), "each object has its own lease"


@pytest.mark.parametrize(
    "lease_now",
    [
        None,
        Lease("b", T0 + SECOND),
        Lease("b", T0),
        Lease("b", T0 - SECOND),
        Lease("a", T0 + SECOND),
        Lease("a", T0 - SECOND),
    ],
)
def test_the_database_takes_a_lease_exactly_when_the_rule_says(
    db: Database, lease_now: Lease | None
) -> None:
    if lease_now is not None:
        with db.session() as session:
            session.add(
                RepairLeaseRow(
                    object_id="o", holder=lease_now.holder, expires_at=lease_now.expires_at
                )
            )
    taken = _take(db, "a", T0)
    assert taken is may_take(lease_now, "a", T0)
    assert _lease(db) == (Lease("a", T0 + TTL_S * SECOND) if taken else lease_now)


def test_of_many_hubs_taking_one_free_lease_at_once_exactly_one_gets_it(db: Database) -> None:
    hubs = [f"hub-{i}" for i in range(6)]
    start = threading.Barrier(len(hubs))
    won: list[str] = []

    def race(holder: str) -> None:
        start.wait(timeout=10)
        if _take(db, holder, T0):
            won.append(holder)

    threads = [threading.Thread(target=race, args=(holder,)) for holder in hubs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert _lease(db) == Lease(won[0], T0 + TTL_S * SECOND)


def test_leases_ended_long_ago_are_swept_and_others_kept(db: Database) -> None:
    assert _take(db, "dead-hub", T0, object_id="old")
    assert _take(db, "hub-a", T0 + 3600 * SECOND, object_id="recent")
    with db.session() as session:
        lease.sweep(session, T0 + (TTL_S + 3601) * SECOND, after_s=3600)
    assert _lease(db, "old") is None
    assert _lease(db, "recent") is not None


def test_the_lease_clock_is_the_database_s(db: Database) -> None:
    with db.session() as session:
        now = db_now(session)
    assert now.tzinfo is not None
    assert abs(now - utcnow()) < dt.timedelta(minutes=5), "one machine: the same clock"


# -- rebuild, by two hubs -----------------------------------------------------------------


@dataclasses.dataclass
class FakeHub:
    """What ``rebuild`` and the repair loop use of the hub (the transfer is faked)."""

    settings: HubSettings
    db: Database


class FakeTransfer:
    """Stands for ``_rebuild_locked``: collecting, rebuilding and sending shares. Each
    call records who holds the object's lease as it runs, and waits until ``go`` is set;
    ``most`` is the most calls that ran at once."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.running = self.most = 0
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.fail = fail

    async def __call__(
        self,
        hub: HubContext,
        tenant: str,
        obj: ObjectRow,
        manifest: Manifest,
        shares: list[ShareRow],
        leaving: Collection[str],
    ) -> int:
        held = await asyncio.to_thread(_lease, hub.db, obj.id)
        self.calls.append(held.holder if held is not None else "nobody")
        self.running += 1
        self.most = max(self.most, self.running)
        self.entered.set()
        try:
            await self.go.wait()
            if self.fail:
                raise PlacementError("no device can take share 2 of b/o")
            return 1
        finally:
            self.running -= 1


@pytest.fixture
def transfer(monkeypatch: pytest.MonkeyPatch) -> FakeTransfer:
    fake = FakeTransfer()
    monkeypatch.setattr(repair, "_rebuild_locked", fake)
    monkeypatch.setattr(lease, "POLL_S", 0.01)
    return fake


@pytest.fixture
def hub(db: Database, tmp_path: Path) -> HubContext:
    """A hub whose database holds "b/o", due for repair (``_stored_object``)."""
    settings = HubSettings(data_dir=tmp_path / "hub", store_repair_grace_s=600)
    settings.data_dir.mkdir(exist_ok=True)
    _stored_object(db)
    return cast(HubContext, FakeHub(settings, db))


def _manifest() -> Manifest:
    encoder = Encoder(CodecParams(2, 4))
    encoder.feed(b"x" * 100)
    encoder.finish()
    return encoder.manifest


def _stored_object(db: Database) -> None:
    """A complete object "b/o" (a small one: 1-of-3 copies) whose last share is on a
    revoked device: due for repair."""
    manifest = _manifest()
    with db.session() as session:
        for name, state in [("d0", "active"), ("d1", "active"), ("r", "revoked")]:
            session.add(
                Device(
                    id=name,
                    tenant_id="default",
                    state=state,
                    online=True,
                    last_seen=utcnow(),
                    cert_pem="",
                    cert_not_after=utcnow() + dt.timedelta(days=30),
                )
            )
        obj = ObjectRow(
            id="o",
            tenant_id="default",
            bucket="b",
            name="o",
            state="complete",
            k=manifest.k,
            n=manifest.n,
            manifest=manifest.to_json(),
            completed_at=utcnow(),
        )
        session.add(obj)
        session.flush()
        for index, device in enumerate(["d0", "d1", "r"]):
            session.add(
                ShareRow(
                    id=f"s{index}",
                    object_id="o",
                    index=index,
                    device_id=device,
                    state="stored",
                    hash="0" * 64,
                )
            )


async def _rebuild_as(hub: HubContext, holder: str, wait_s: float = 0) -> int:
    obj, manifest = _loaded(hub.db)
    return await rebuild(hub, "default", obj, manifest, wait_s=wait_s, holder=holder)


async def _held_in_transfer(hub: HubContext, transfer: FakeTransfer) -> asyncio.Task[int]:
    """hub-a's rebuild, started and held inside its transfer until ``transfer.go``."""
    first = asyncio.create_task(_rebuild_as(hub, "hub-a"))
    await transfer.entered.wait()
    return first


def _loaded(db: Database) -> tuple[ObjectRow, Manifest]:
    with db.session() as session:
        obj = session.get(ObjectRow, "o")
        assert obj is not None
        session.expunge(obj)
    return obj, Manifest.from_json(obj.manifest)


async def test_a_second_hub_that_will_not_wait_is_told_another_is_repairing(
    db: Database, hub: HubContext, transfer: FakeTransfer
) -> None:
    async with asyncio.timeout(30):
        first = await _held_in_transfer(hub, transfer)
        with pytest.raises(
            RepairBusyError, match=r"^another hub is repairing b/o; try again shortly$"
        ):
            await _rebuild_as(hub, "hub-b")
        transfer.go.set()
        assert await first == 1
    assert transfer.calls == ["hub-a"]
    assert _lease(db) is None, "released at the end"


async def test_a_second_hub_that_waits_rebuilds_after_the_first_never_with_it(
    db: Database, hub: HubContext, transfer: FakeTransfer
) -> None:
    async with asyncio.timeout(30):
        first = await _held_in_transfer(hub, transfer)
        second = asyncio.create_task(_rebuild_as(hub, "hub-b", wait_s=30))
        await asyncio.sleep(0.2)  # hub-b looks at the lease several times meanwhile
        assert transfer.calls == ["hub-a"]
        transfer.go.set()
        assert await asyncio.gather(first, second) == [1, 1]
    assert transfer.calls == ["hub-a", "hub-b"]
    assert transfer.most == 1
    assert _lease(db) is None


async def test_two_rebuilds_in_one_hub_wait_for_each_other(
    hub: HubContext, transfer: FakeTransfer
) -> None:
    """One holder's rebuilds share its lease: the in-process lock keeps them apart."""
    async with asyncio.timeout(30):
        drain = await _held_in_transfer(hub, transfer)
        loop = asyncio.create_task(_rebuild_as(hub, "hub-a"))
        await asyncio.sleep(0.1)
        assert len(transfer.calls) == 1
        transfer.go.set()
        assert await asyncio.gather(drain, loop) == [1, 1]
    assert transfer.most == 1


async def test_a_failed_rebuild_releases_its_lease(
    db: Database, hub: HubContext, transfer: FakeTransfer
) -> None:
    transfer.fail = True
    transfer.go.set()
    with pytest.raises(PlacementError):
        await _rebuild_as(hub, "hub-a")
    assert _lease(db) is None
    transfer.fail = False
    assert await _rebuild_as(hub, "hub-b") == 1


async def test_the_loop_skips_an_object_another_hub_repairs_without_backing_off(
    db: Database, hub: HubContext, transfer: FakeTransfer
) -> None:
    transfer.go.set()
    with db.session() as session:
        assert lease.take(session, "o", "other-hub", TTL_S, db_now(session))
    backoff = Backoff(base_s=60)
    assert await repair_pass(hub, backoff) == 0
    assert transfer.calls == []
    assert backoff.ready("o", now=0), "not a failure: the next pass tries again"
    _release_as(db, "other-hub")
    assert await repair_pass(hub, backoff) == 1
    assert transfer.calls == [lease.HOLDER]


def _release_as(db: Database, holder: str) -> None:
    with db.session() as session:
        lease.release(session, "o", holder)


# -- a long rebuild keeps its lease, and stops when it loses it ---------------------------


async def _until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:  # the database's state, polled: no event to wait for
            if await asyncio.to_thread(check):
                return
            await asyncio.sleep(0.02)


async def test_a_rebuild_longer_than_the_lease_renews_it(db: Database) -> None:
    ttl_s = 1.0  # renewed every 0.25 s: a stall of 0.75 s is still no lapse
    with db.session() as session:
        started = db_now(session)
    first_end = started + ttl_s * SECOND

    def renewed_past_its_first_end() -> bool:
        with db.session() as session:
            current = lease_of(session, "o")
            return (
                current is not None
                and current.expires_at > first_end
                and db_now(session) > first_end + ttl_s * SECOND
            )

    async def long_rebuild() -> str:
        await _until(renewed_past_its_first_end)
        with db.session() as session:
            assert not lease.take(session, "o", "hub-b", TTL_S, db_now(session))
        return "done"

    assert await lease.holding(db, "o", "b/o", long_rebuild, holder="hub-a", ttl_s=ttl_s) == "done"
    assert _lease(db) is None


async def test_a_rebuild_that_loses_its_lease_is_stopped_with_one_line(db: Database) -> None:
    stopped = asyncio.Event()

    async def rebuild_forever() -> None:
        # Another hub took it (as if hub-a had not renewed it in time).
        with db.session() as session:
            row = session.get(RepairLeaseRow, "o")
            assert row is not None
            row.holder = "hub-b"
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async with asyncio.timeout(20):
        with pytest.raises(
            RepairBusyError, match=r"^the repair of b/o stopped: .*try again shortly$"
        ):
            await lease.holding(db, "o", "b/o", rebuild_forever, holder="hub-a", ttl_s=0.2)
    assert stopped.is_set()
    after = _lease(db)
    assert after is not None
    assert after.holder == "hub-b", "hub-a's release leaves hub-b's lease alone"


async def test_a_rebuild_that_cannot_renew_its_lease_stops_before_it_ends(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def database_gone(*_: object) -> bool:
        raise OperationalError("UPDATE store_repair_leases", {}, Exception("connection refused"))

    async def rebuild_forever() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(lease, "_renew", database_gone)
    async with asyncio.timeout(20):
        with pytest.raises(RepairBusyError, match=r"^the repair of b/o stopped: "):
            await lease.holding(db, "o", "b/o", rebuild_forever, holder="hub-a", ttl_s=0.4)
    assert _lease(db) is None, "released as it stopped"


async def test_a_caller_cancelled_mid_rebuild_is_cancelled_and_releases_the_lease(
    db: Database,
) -> None:
    running, stopped = asyncio.Event(), asyncio.Event()

    async def rebuild_forever() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    caller = asyncio.create_task(lease.holding(db, "o", "b/o", rebuild_forever, holder="hub-a"))
    async with asyncio.timeout(20):
        await running.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert stopped.is_set(), "the rebuild ended before the lease went"
    assert _lease(db) is None
