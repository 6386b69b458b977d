"""Attacks on the signed catalog, against a real hub and a real agent.

A device runs ``hello`` 1.0.0 and is told to run 1.1.0 while the hub's data dir has been
tampered with, as by someone who can write to the hub's disk (or answers in its place):

- the 1.1.0 bundle replaced in the blob store by another of the same size;
- the whole catalog restored from a backup older than what the device already trusts,
  one that still offers the 1.1.0 the operator has since withdrawn;
- a timestamp the hub's own key signed in the past and that has expired (a freeze);
- targets signed by a key the catalog's root does not list.

In each case the agent refuses, reports why to the hub, and 1.0.0 goes on serving. Had
the agent accepted, 1.1.0 would have run: the hub serves its bundle, and the attacks
that leave its bytes alone keep the genuine 1.1.0 in the metadata the device is shown.

The hub serves metadata and blobs from its files on every request, so altering them
while it runs is what a device sees at once. A restored backup is different: the hub
keeps the signed chain in memory to serve and publish from, so it is stopped, restored
and started again on the same data dir, as an operator's restore would go.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]
from tuf.api.metadata import Metadata, MetaFile  # type: ignore[attr-defined]

from roost.apps.bundle import BuiltBundle
from roost.atomic import write_atomic
from roost.catalog import BlobStore, TenantRepository
from roost.client import RoostClient
from roost.wire.apps import target_path
from system.harness import Agent, Hub
from system.procs import StartProc, free_port
from system.releases import APP, Releases, Reports, catalog_dir, greeting, served

OLD, NEW = "1.0.0", "1.1.0"
# Short reconnect delays: the rollback case restarts the hub under a connected agent.
AGENT_ENV = {"ROOST_RECONNECT_MIN_S": "0.1", "ROOST_RECONNECT_MAX_S": "1"}


@dataclass
class Site:
    """A hub and one enrolled device that runs OLD, and the app's releases."""

    hub: Hub
    agent: Agent
    api: RoostClient
    reports: Reports
    releases: Releases

    def want(self, version: str) -> None:
        self.api.set_desired(self.agent.device_id, {"apps": {APP: {"version": version}}})

    def refusal(self, reason: str) -> dict[str, Any]:
        """Wait until the device reports that it refused NEW for ``reason``; that report.

        Fails at once if the device reports NEW: it took the bait.
        """

        def refused(app: dict[str, Any]) -> bool:
            assert app.get("version") != NEW, f"the device accepted the attack: {app}"
            return app.get("wanted") == NEW and reason in (app.get("error") or "")

        return self.reports.wait(refused, f"the device to report refusing {APP} {NEW} ({reason})")

    def assert_old_version_kept(self, report: dict[str, Any]) -> None:
        """OLD still runs and serves; NEW was never reported, installed or served."""
        assert report["version"] == OLD, report
        assert report["state"] == "failed", report
        assert served(self.releases.port) == greeting(OLD)
        assert self.reports.now()["version"] == OLD
        assert NEW not in self.reports.versions
        versions = self.agent.data_dir / "apps" / APP / "versions"
        assert sorted(p.name for p in versions.iterdir()) == [OLD]


@contextmanager
def site(
    start_proc: StartProc, tmp_path: Path, hub: Hub | None = None, releases: Releases | None = None
) -> Iterator[Site]:
    """A device running OLD; a new hub with OLD published unless ``hub`` is given."""
    releases = releases or Releases(tmp_path, free_port())
    if hub is None:
        hub = Hub.start(start_proc, tmp_path / "hub")
        with hub.client() as api:
            releases.publish(api, OLD)
    agent = hub.join(tmp_path / "agent", env=AGENT_ENV)
    hub.wait_online([agent.device_id])
    with hub.client() as api:
        here = Site(hub, agent, api, Reports(api, agent.device_id), releases)
        here.want(OLD)
        here.reports.wait_running(OLD)
        assert served(releases.port) == greeting(OLD)
        yield here


# -- forging with the hub's own online keys ----------------------------------------------


def _read(catalog: Path, name: str) -> Metadata[Any]:
    return Metadata.from_bytes((catalog / "metadata" / name).read_bytes())


def _published(catalog: Path) -> dict[str, Metadata[Any]]:
    """The published chain: timestamp, the snapshot it names, the targets that names."""
    timestamp = _read(catalog, "timestamp.json")
    snapshot = _read(catalog, f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    targets = _read(catalog, f"{snapshot.signed.meta['targets.json'].version}.targets.json")
    return {"timestamp": timestamp, "snapshot": snapshot, "targets": targets}


def _hub_key(catalog: Path, role: str) -> CryptoSigner:
    """The hub's online key for ``role``, as listed by its newest root."""
    roots = sorted((catalog / "metadata").glob("*.root.json"), key=lambda p: int(p.name[:-10]))
    root = Metadata.from_bytes(roots[-1].read_bytes()).signed
    keyid = root.roles[role].keyids[0]
    public_key = root.keys[keyid]
    assert isinstance(public_key, SSlibKey)
    pem = (catalog / "keys" / f"{keyid}.pem").read_bytes()
    return CryptoSigner(load_pem_private_key(pem, password=None), public_key)


def _write(catalog: Path, metadata: Metadata[Any], signer: CryptoSigner) -> None:
    """Sign ``metadata`` (dropping other signatures) and put it where the hub serves it."""
    metadata.sign(signer)
    role, version = metadata.signed.type, metadata.signed.version
    name = "timestamp.json" if role == "timestamp" else f"{version}.{role}.json"
    write_atomic(catalog / "metadata" / name, metadata.to_bytes())


def _same_size_impostor(releases: Releases, genuine: BuiltBundle) -> bytes:
    """A valid bundle of NEW whose page says so, exactly as long as ``genuine``: gzip
    readers skip the zeros that pad it."""
    for word in ("evil", "bad", "x"):
        impostor = releases.bundle(NEW, word=word)
        if impostor.size <= genuine.size:
            return impostor.path.read_bytes() + bytes(genuine.size - impostor.size)
    raise AssertionError(f"no impostor bundle fits in {genuine.size} bytes")


# -- attacks on the files of a running hub ------------------------------------------------


def _tamper_with_the_bundle(here: Site, published: dict[str, Any]) -> None:
    """NEW's blob replaced by a valid bundle of NEW, of the same length: only the signed
    sha256 tells them apart."""
    impostor = _same_size_impostor(here.releases, here.releases.bundle(NEW))
    BlobStore(here.hub.data_dir / "blobs").path(published["sha256"]).write_bytes(impostor)


def _serve_an_expired_timestamp(here: Site, published: dict[str, Any]) -> None:
    """A timestamp the hub's key signed two days ago, newer than any the device has seen,
    served instead of today's: the device would stay frozen in the past."""
    catalog = catalog_dir(here.hub.data_dir)
    timestamp = _published(catalog)["timestamp"]
    timestamp.signed.version += 1
    timestamp.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    _write(catalog, timestamp, _hub_key(catalog, "timestamp"))


def _sign_the_targets_as_a_stranger(here: Site, published: dict[str, Any]) -> None:
    """The same targets (NEW in them) signed by a key the root does not list; snapshot
    and timestamp name them and carry the hub's valid signatures."""
    catalog = catalog_dir(here.hub.data_dir)
    chain = _published(catalog)
    targets, snapshot, timestamp = chain["targets"], chain["snapshot"], chain["timestamp"]
    targets.signed.version += 1
    _write(catalog, targets, CryptoSigner.generate_ed25519())
    snapshot.signed.version += 1
    snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
    _write(catalog, snapshot, _hub_key(catalog, "snapshot"))
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
    _write(catalog, timestamp, _hub_key(catalog, "timestamp"))


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (_tamper_with_the_bundle, "length or sha256 differs from the signed metadata"),
        (_serve_an_expired_timestamp, "expired"),
        (_sign_the_targets_as_a_stranger, "not signed by enough trusted keys"),
    ],
    ids=["tampered-bundle", "expired-timestamp", "targets-by-an-unknown-key"],
)
def test_an_update_from_tampered_hub_files_is_refused(
    start_proc: StartProc,
    tmp_path: Path,
    mosquitto_bin: str,
    attack: Callable[[Site, dict[str, Any]], None],
    reason: str,
) -> None:
    with site(start_proc, tmp_path) as here:
        attack(here, here.releases.publish(here.api, NEW))
        here.want(NEW)
        here.assert_old_version_kept(here.refusal(reason))


# -- a catalog restored from an old backup ------------------------------------------------


def test_a_catalog_rolled_back_to_an_older_backup_is_refused(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    catalog = catalog_dir(hub.data_dir)
    releases = Releases(tmp_path, free_port())
    with hub.client() as api:
        for version in (OLD, NEW):
            releases.publish(api, version)
    backup = tmp_path / "backup"
    shutil.copytree(catalog, backup)
    # The operator withdraws NEW (the hub has no command for it yet: the repository API).
    hub.stop()
    repository = TenantRepository(catalog, BlobStore(hub.data_dir / "blobs"))
    repository.remove_target(target_path(APP, NEW))
    hub.run()

    with site(start_proc, tmp_path, hub, releases) as here:
        # The device now trusts the catalog without NEW. The hub is restored from the
        # backup: older timestamp, snapshot and targets, all validly signed, NEW in them.
        hub.stop()
        shutil.rmtree(catalog)
        shutil.copytree(backup, catalog)
        hub.run()
        hub.wait_online([here.agent.device_id])

        here.want(NEW)
        here.assert_old_version_kept(here.refusal("rolled back to an older version"))
