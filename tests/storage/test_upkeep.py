"""Which objects the repair loop picks, and which devices their shares must leave."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

# Importing the model modules registers their tables.
import roost.access.models
import roost.fleet.models  # noqa: F401
from roost.access.service import ensure_default_tenant
from roost.db import Base, Database
from roost.fleet.models import Device
from roost.storage.models import ObjectRow, ShareRow
from roost.storage.upkeep import Backoff, due_for_repair

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
GRACE_S = 600


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database("sqlite://")
    Base.metadata.create_all(database.engine)
    with database.session() as session:
        ensure_default_tenant(session)
        for name, online, seen_s_ago, state, labels in [
            ("up1", True, 1, "active", {}),
            ("up2", True, 1, "active", {}),
            ("up3", True, 1, "active", {}),
            ("up4", True, 1, "active", {}),
            ("rebooting", False, 60, "active", {}),
            ("gone", False, 3600, "active", {}),
            ("revoked", True, 1, "revoked", {}),
            ("draining", True, 1, "active", {"storage.drain": "true"}),
        ]:
            session.add(
                Device(
                    id=name,
                    tenant_id="default",
                    state=state,
                    labels=labels,
                    online=online,
                    last_seen=NOW - dt.timedelta(seconds=seen_s_ago),
                    cert_pem="",
                    cert_not_after=NOW + dt.timedelta(days=30),
                )
            )
    yield database
    database.dispose()


def _object(db: Database, name: str, shares: list[tuple[str, str]]) -> None:
    """A complete 2-of-4 object (repair threshold 3) with (device, state) per index."""
    with db.session() as session:
        session.add(
            ObjectRow(
                id=name, tenant_id="default", bucket="b", name=name, state="complete", k=2, n=4
            )
        )
        session.flush()
        for index, (device, state) in enumerate(shares):
            session.add(
                ShareRow(
                    id=f"{name}-{index}",
                    object_id=name,
                    index=index,
                    device_id=device,
                    state=state,
                    hash="0" * 64,
                )
            )


def test_the_loop_picks_bad_shares_and_devices_gone_but_not_a_short_reboot(db: Database) -> None:
    healthy = [("up1", "stored"), ("up2", "stored"), ("up3", "stored"), ("up4", "stored")]
    _object(db, "fine", healthy)
    _object(db, "rebooting", [*healthy[:3], ("rebooting", "stored")])
    _object(db, "corrupt", [*healthy[:3], ("up4", "corrupt")])
    _object(db, "unplaced", [*healthy[:3], ("up4", "failed")])
    _object(db, "gone", [*healthy[:3], ("gone", "stored")])
    _object(db, "revoked", [*healthy[:3], ("revoked", "stored")])
    _object(db, "draining", [*healthy[:3], ("draining", "stored")])
    # Two devices rebooting: within the grace, but below the threshold of 3 healthy.
    _object(db, "thin", [*healthy[:2], ("rebooting", "stored"), ("rebooting", "stored")])
    with db.session() as session:  # pending objects are a put's business
        session.add(ObjectRow(id="p", tenant_id="default", bucket="b", name="p", k=2, n=4))

    due = {d.object_id: d for d in due_for_repair(db, GRACE_S, NOW)}
    assert sorted(due) == ["corrupt", "draining", "gone", "revoked", "thin", "unplaced"]
    assert due["corrupt"].why == "share 3 is corrupt"
    assert due["corrupt"].leaving == frozenset()
    assert due["gone"].leaving == frozenset({"gone"})
    assert due["revoked"].leaving == frozenset({"revoked"})
    assert due["draining"].leaving == frozenset({"draining"})
    assert due["thin"].why == "2 of 4 shares healthy"
    assert due["thin"].leaving == frozenset(), "a reboot within the grace leaves nothing"
    # Past the grace, the rebooting device is gone too.
    later = {d.object_id for d in due_for_repair(db, GRACE_S, NOW + dt.timedelta(hours=1))}
    assert "rebooting" in later


def test_an_object_that_cannot_be_repaired_waits_longer_each_time() -> None:
    backoff = Backoff(base_s=60, cap_s=600)
    assert backoff.ready("a", now=0)
    assert [backoff.failed("a", now=0) for _ in range(4)] == [120, 240, 480, 600]
    assert not backoff.ready("a", now=599)
    assert backoff.ready("a", now=600)
    assert backoff.ready("b", now=0), "other objects do not wait"
    backoff.keep_only({"b"})  # "a" no longer needs repair: forgotten
    assert backoff.ready("a", now=0)
