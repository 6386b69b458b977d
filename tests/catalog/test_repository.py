"""A tenant's TUF repository, judged by a real ngclient updater as a device runs it."""

from __future__ import annotations

import io
import json
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile  # type: ignore[attr-defined]

from catalog.tuf_device import Device, HubFetcher
from roost.catalog import BlobStore, Catalog, Lifetimes, TargetInfo, TenantRepository
from roost.catalog.repository import (
    check_target_path,
    is_due,
    parse_hashed_path,
    parse_metadata_name,
)
from roost.errors import CatalogError, ConflictError, NotFoundError

APP_V1 = "apps/thermo/thermo-1.0.0.tar.gz"
APP_V2 = "apps/thermo/thermo-1.1.0.tar.gz"


class Clock:
    """A settable clock for the repository (ngclient itself reads the real time)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def repo(tmp_path: Path, blobs: BlobStore) -> TenantRepository:
    return TenantRepository(tmp_path / "catalog" / "acme", blobs)


def publish(repo: TenantRepository, blobs: BlobStore, path: str, data: bytes) -> TargetInfo:
    version = path.rsplit("-", 1)[-1].removesuffix(".tar.gz")
    return repo.add_target(path, blobs.put(io.BytesIO(data)), {"version": version})


def enroll(repo: TenantRepository, directory: Path) -> Device:
    return Device(directory, HubFetcher(repo), repo.trusted_root())


def version(repo: TenantRepository, name: str) -> int:
    signed = Metadata.from_bytes(repo.metadata(name)).signed
    result: int = signed.version
    return result


def current(repo: TenantRepository, role: str) -> str:
    """The file name of the role's published metadata."""
    timestamp = Metadata.from_bytes(repo.metadata("timestamp.json")).signed
    if role == "timestamp":
        return "timestamp.json"
    snapshot_version = timestamp.snapshot_meta.version
    if role == "snapshot":
        return f"{snapshot_version}.snapshot.json"
    snapshot = Metadata.from_bytes(repo.metadata(f"{snapshot_version}.snapshot.json")).signed
    return f"{snapshot.meta['targets.json'].version}.targets.json"


# -- what a device sees ------------------------------------------------------------------


def test_a_device_downloads_a_published_target(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path
) -> None:
    info = publish(repo, blobs, APP_V1, b"bundle one")
    device = enroll(repo, tmp_path / "device")
    assert device.download(APP_V1) == b"bundle one"
    target = device.update().get_targetinfo(APP_V1)
    assert target is not None
    assert target.hashes == {"sha256": info.sha256}
    assert target.custom == {"version": "1.0.0"}
    assert any(
        url.endswith(f"apps/thermo/{info.sha256}.thermo-1.0.0.tar.gz")
        for url in device.fetcher.requests
    )


def test_a_second_version_is_seen_on_the_next_update(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path
) -> None:
    publish(repo, blobs, APP_V1, b"bundle one")
    device = enroll(repo, tmp_path / "device")
    assert device.sees(APP_V1)
    assert not device.sees(APP_V2)
    publish(repo, blobs, APP_V2, b"bundle two")
    assert device.download(APP_V2) == b"bundle two"
    assert device.sees(APP_V1)


def test_a_removed_target_is_gone_for_the_device(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path
) -> None:
    info = publish(repo, blobs, APP_V1, b"bundle one")
    device = enroll(repo, tmp_path / "device")
    assert device.sees(APP_V1)
    repo.remove_target(APP_V1)
    assert not device.sees(APP_V1)
    assert repo.targets() == []
    assert blobs.exists(info.sha256)
    with pytest.raises(NotFoundError):
        repo.target_file(f"apps/thermo/{info.sha256}.thermo-1.0.0.tar.gz")
    with pytest.raises(NotFoundError):
        repo.remove_target(APP_V1)


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (lambda data: bytes([data[0] ^ 1]) + data[1:], tuf_errors.LengthOrHashMismatchError),
        (lambda data: data[:-1] + b"!", tuf_errors.LengthOrHashMismatchError),
        (lambda data: data + b"more", tuf_errors.DownloadLengthMismatchError),
    ],
    ids=["flipped-bit", "replaced-byte", "longer"],
)
def test_a_tampered_blob_is_refused(
    repo: TenantRepository,
    blobs: BlobStore,
    tmp_path: Path,
    damage: Callable[[bytes], bytes],
    refusal: type[Exception],
) -> None:
    info = publish(repo, blobs, APP_V1, b"bundle one")
    path = blobs.path(info.sha256)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(refusal):
        enroll(repo, tmp_path / "device").download(APP_V1)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_rolled_back_metadata_is_refused(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path, role: str
) -> None:
    publish(repo, blobs, APP_V1, b"bundle one")
    old = repo.metadata(current(repo, role))
    device = enroll(repo, tmp_path / "device")
    device.update()
    publish(repo, blobs, APP_V2, b"bundle two")
    assert device.sees(APP_V2)
    publish(repo, blobs, "apps/thermo/thermo-1.2.0.tar.gz", b"bundle three")
    # The attacker answers with the older, validly signed file under the newest name.
    device.fetcher.forged[current(repo, role)] = old
    with pytest.raises(tuf_errors.BadVersionNumberError):
        device.update()
    device.fetcher.forged.clear()
    assert device.sees("apps/thermo/thermo-1.2.0.tar.gz")


def test_an_expired_timestamp_is_refused_until_refreshed(tmp_path: Path, blobs: BlobStore) -> None:
    clock = Clock(datetime.now(UTC) - timedelta(days=3))
    repo = TenantRepository(tmp_path / "acme", blobs, clock=clock)
    publish(repo, blobs, APP_V1, b"bundle one")
    device = enroll(repo, tmp_path / "device")
    with pytest.raises(tuf_errors.ExpiredMetadataError, match="timestamp"):
        device.update()
    before = {role: version(repo, current(repo, role)) for role in ("snapshot", "targets")}
    assert repo.refresh(datetime.now(UTC))
    assert device.download(APP_V1) == b"bundle one"
    # Only the timestamp was due: snapshot (4 of 7 days left) and targets stay.
    assert {role: version(repo, current(repo, role)) for role in before} == before
    assert not repo.refresh(datetime.now(UTC))


@pytest.mark.parametrize(
    ("age", "resigned"),
    [
        (timedelta(hours=11), set()),
        (timedelta(hours=13), {"timestamp"}),
        (timedelta(days=4), {"timestamp", "snapshot"}),
        (timedelta(days=46), {"timestamp", "snapshot", "targets"}),
    ],
)
def test_refresh_re_signs_what_is_past_half_its_lifetime(
    tmp_path: Path, blobs: BlobStore, age: timedelta, resigned: set[str]
) -> None:
    clock = Clock()
    repo = TenantRepository(tmp_path / "acme", blobs, clock=clock)
    roles = ("timestamp", "snapshot", "targets")
    before = {role: version(repo, current(repo, role)) for role in roles}
    assert repo.refresh(clock.now + age) == bool(resigned)
    after = {role: version(repo, current(repo, role)) for role in roles}
    assert {role for role in roles if after[role] == before[role] + 1} == resigned
    assert {role for role in roles if after[role] == before[role]} == set(roles) - resigned
    for role in resigned:
        expected = clock.now + age + Lifetimes().of(role)
        assert repo.expiries()[role] == expected.replace(microsecond=0)


@pytest.mark.parametrize("key_online", [True, False])
def test_refresh_re_signs_the_root_only_with_its_key(
    tmp_path: Path, blobs: BlobStore, key_online: bool
) -> None:
    clock = Clock()
    repo = TenantRepository(tmp_path / "acme", blobs, clock=clock)
    publish(repo, blobs, APP_V1, b"bundle one")
    device = enroll(repo, tmp_path / "device")
    if not key_online:
        repo.remove_root_key()
    later = clock.now + timedelta(days=200)  # past half of the root's 365 days
    assert repo.refresh(later)
    assert version(repo, "timestamp.json") == 3
    if key_online:
        root = json.loads(repo.metadata("2.root.json"))["signed"]
        assert root["keys"] == json.loads(repo.metadata("1.root.json"))["signed"]["keys"]
        assert repo.trusted_root() == repo.metadata("2.root.json")
        assert repo.expiries()["root"] == (later + timedelta(days=365)).replace(microsecond=0)
    else:
        with pytest.raises(NotFoundError):
            repo.metadata("2.root.json")
    assert device.sees(APP_V1)


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_metadata_signed_by_an_unknown_key_is_refused(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path, role: str
) -> None:
    publish(repo, blobs, APP_V1, b"bundle one")
    name = current(repo, role)
    forged = Metadata.from_bytes(repo.metadata(name))
    if role == "targets":
        evil = blobs.put(io.BytesIO(b"evil bundle"))
        forged.signed.targets[APP_V1] = TargetFile(
            evil.size, {"sha256": evil.sha256}, APP_V1, {"custom": {}}
        )
    forged.sign(CryptoSigner.generate_ed25519())
    device = enroll(repo, tmp_path / "device")
    device.fetcher.forged[name] = forged.to_bytes()
    with pytest.raises(tuf_errors.UnsignedMetadataError, match=role):
        device.download(APP_V1)


def test_keys_and_versions_survive_reopening(tmp_path: Path, blobs: BlobStore) -> None:
    directory = tmp_path / "acme"
    first = TenantRepository(directory, blobs)
    publish(first, blobs, APP_V1, b"bundle one")
    device = enroll(first, tmp_path / "device")
    assert device.sees(APP_V1)
    versions = {role: version(first, current(first, role)) for role in ("snapshot", "targets")}

    second = TenantRepository(directory, blobs)
    assert second.trusted_root() == first.trusted_root()
    with pytest.raises(NotFoundError):
        second.metadata("2.root.json")
    assert second.targets() == first.targets()
    publish(second, blobs, APP_V2, b"bundle two")
    assert {role: version(second, current(second, role)) for role in versions} == {
        role: v + 1 for role, v in versions.items()
    }
    device.fetcher.repository = second
    assert device.download(APP_V2) == b"bundle two"


def test_reopening_re_signs_metadata_the_newest_root_does_not_trust(
    tmp_path: Path, blobs: BlobStore
) -> None:
    directory = tmp_path / "acme"
    repo = TenantRepository(directory, blobs)
    publish(repo, blobs, APP_V1, b"bundle one")
    timestamp = directory / "metadata" / "timestamp.json"
    rogue = Metadata.from_bytes(timestamp.read_bytes())
    rogue.sign(CryptoSigner.generate_ed25519())
    timestamp.write_bytes(rogue.to_bytes())  # as if a rotation stopped half-way
    reopened = TenantRepository(directory, blobs)
    assert enroll(reopened, tmp_path / "device").download(APP_V1) == b"bundle one"


def test_tenants_have_their_own_keys_and_targets(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "data")
    acme, globex = catalog.tenant("acme"), catalog.tenant("globex")
    assert catalog.tenant("acme") is acme
    info = publish(acme, catalog.blobs, APP_V1, b"acme bundle")
    assert globex.targets() == []
    with pytest.raises(NotFoundError):
        globex.target_file(f"apps/thermo/{info.sha256}.thermo-1.0.0.tar.gz")

    def keyids(repo: TenantRepository) -> set[str]:
        return set(json.loads(repo.trusted_root())["signed"]["keys"])

    assert not keyids(acme) & keyids(globex)
    # A globex device served acme's (validly signed) timestamp refuses it.
    device = enroll(globex, tmp_path / "device")
    device.fetcher.forged["timestamp.json"] = acme.metadata("timestamp.json")
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        device.update()
    assert (tmp_path / "data" / "catalog" / "acme" / "metadata" / "1.root.json").is_file()
    assert catalog.refresh(datetime.now(UTC) + timedelta(hours=13)) == ["acme", "globex"]


@pytest.mark.parametrize("tenant_id", ["", "../acme", "Acme", "a/b", "-acme"])
def test_catalog_refuses_unsafe_tenant_ids(tmp_path: Path, tenant_id: str) -> None:
    with pytest.raises(CatalogError, match="not a tenant id"):
        Catalog(tmp_path).tenant(tenant_id)


# -- keys --------------------------------------------------------------------------------


def test_layout_and_private_keys_on_disk(repo: TenantRepository, blobs: BlobStore) -> None:
    names = {p.name for p in (repo.directory / "metadata").iterdir()}
    assert names == {"1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"}
    info = publish(repo, blobs, APP_V1, b"bundle one")
    assert (repo.directory / "metadata" / "2.targets.json").is_file()
    assert (repo.directory / "metadata" / "2.snapshot.json").is_file()
    assert repo.target_file(f"apps/thermo/{info.sha256}.thermo-1.0.0.tar.gz") == blobs.path(
        info.sha256
    )
    root = json.loads(repo.trusted_root())["signed"]
    assert root["consistent_snapshot"] is True
    keys = sorted((repo.directory / "keys").iterdir())
    assert {k.stem for k in keys} == set(root["keys"])
    assert len(keys) == 4
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_the_root_key_can_be_taken_offline(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path
) -> None:
    offline = tmp_path / "usb" / "root.pem"
    offline.parent.mkdir()
    repo.export_root_key(offline)
    assert stat.S_IMODE(offline.stat().st_mode) == 0o600
    repo.remove_root_key()
    assert not repo.root_key_online
    with pytest.raises(CatalogError, match="offline already"):
        repo.export_root_key(tmp_path / "again.pem")
    with pytest.raises(CatalogError, match="root key is offline"):
        repo.rotate_online_keys()
    # Online keys still sign new targets.
    publish(repo, blobs, APP_V1, b"bundle one")
    assert enroll(repo, tmp_path / "device").download(APP_V1) == b"bundle one"
    # A key that is not this root's is refused.
    other = tmp_path / "other.pem"
    other.write_bytes(CryptoSigner.generate_ed25519().private_bytes)
    with pytest.raises(CatalogError, match="cannot rotate"):
        repo.rotate_online_keys(other)


def test_rotating_online_keys_signs_a_new_root_devices_follow(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path
) -> None:
    publish(repo, blobs, APP_V1, b"bundle one")
    device = enroll(repo, tmp_path / "device")
    assert device.sees(APP_V1)
    old_root = json.loads(repo.trusted_root())["signed"]
    repo.rotate_online_keys()
    new_root = json.loads(repo.metadata("2.root.json"))["signed"]
    assert repo.trusted_root() == repo.metadata("2.root.json")
    for role in ("targets", "snapshot", "timestamp"):
        assert new_root["roles"][role]["keyids"] != old_root["roles"][role]["keyids"]
    assert new_root["roles"]["root"] == old_root["roles"]["root"]
    assert {k.stem for k in (repo.directory / "keys").iterdir()} == set(new_root["keys"])
    publish(repo, blobs, APP_V2, b"bundle two")
    assert device.download(APP_V2) == b"bundle two"
    reopened = TenantRepository(repo.directory, blobs)
    publish(reopened, blobs, "apps/thermo/thermo-2.0.0.tar.gz", b"bundle three")
    device.fetcher.repository = reopened
    assert device.sees("apps/thermo/thermo-2.0.0.tar.gz")


# -- publishing --------------------------------------------------------------------------


def test_publishing_the_same_target_again_changes_nothing(
    repo: TenantRepository, blobs: BlobStore
) -> None:
    publish(repo, blobs, APP_V1, b"bundle one")
    before = repo.metadata("timestamp.json")
    publish(repo, blobs, APP_V1, b"bundle one")
    assert repo.metadata("timestamp.json") == before
    with pytest.raises(ConflictError, match="other content"):
        publish(repo, blobs, APP_V1, b"not bundle one")


@pytest.mark.parametrize(
    "path",
    [
        "thermo-1.0.0.tar.gz",
        "apps/thermo",
        "apps/../keys/x.pem",
        "apps/thermo/../../keys",
        "apps/thermo/.hidden",
        "apps/thermo/sub/file",
        "/apps/thermo/file",
        "apps//file",
        "other/thermo/file",
    ],
)
def test_unsafe_target_paths_are_refused(
    repo: TenantRepository, blobs: BlobStore, path: str
) -> None:
    blob = blobs.put(io.BytesIO(b"bytes"))
    with pytest.raises(CatalogError, match="not a catalog target path"):
        repo.add_target(path, blob, {})


def test_add_target_refuses_blobs_not_stored_and_custom_that_is_not_json(
    repo: TenantRepository, blobs: BlobStore
) -> None:
    stored = blobs.put(io.BytesIO(b"bytes"))
    with pytest.raises(CatalogError, match="not in the store"):
        repo.add_target(APP_V1, type(stored)("a" * 64, 5), {})
    with pytest.raises(CatalogError, match="not in the store"):
        repo.add_target(APP_V1, type(stored)(stored.sha256, 6), {})
    with pytest.raises(CatalogError, match="must be JSON"):
        repo.add_target(APP_V1, stored, {"when": datetime.now(UTC)})
    assert repo.targets() == []


def test_targets_lists_what_is_published(repo: TenantRepository, blobs: BlobStore) -> None:
    two = publish(repo, blobs, APP_V2, b"bundle two")
    one = publish(repo, blobs, APP_V1, b"bundle one")
    assert repo.targets() == [one, two]
    assert one == TargetInfo(APP_V1, one.sha256, 10, {"version": "1.0.0"})


def test_concurrent_publishers_lose_nothing(
    repo: TenantRepository, blobs: BlobStore, tmp_path: Path
) -> None:
    paths = [f"apps/app{i}/app{i}-1.0.tar.gz" for i in range(8)]
    threads = [
        threading.Thread(target=publish, args=(repo, blobs, path, path.encode())) for path in paths
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [t.path for t in repo.targets()] == sorted(paths)
    assert version(repo, current(repo, "targets")) == 1 + len(paths)
    device = enroll(repo, tmp_path / "device")
    assert all(device.download(path) == path.encode() for path in paths)


# -- serving -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("1.root.json", None),
        ("timestamp.json", None),
        ("1.snapshot.json", None),
        ("1.targets.json", None),
        ("2.root.json", NotFoundError),
        ("9.targets.json", NotFoundError),
        ("root.json", CatalogError),
        ("0.root.json", CatalogError),
        ("1.timestamp.json", CatalogError),
        ("../keys/x.pem", CatalogError),
        ("1.root.json/../../keys", CatalogError),
    ],
)
def test_metadata_serves_only_tuf_file_names(
    repo: TenantRepository, name: str, error: type[Exception] | None
) -> None:
    if error is None:
        assert Metadata.from_bytes(repo.metadata(name)).signed.type in name
    else:
        with pytest.raises(error):
            repo.metadata(name)


def test_target_file_resolves_only_published_hashed_paths(
    repo: TenantRepository, blobs: BlobStore
) -> None:
    info = publish(repo, blobs, APP_V1, b"bundle one")
    other = blobs.put(io.BytesIO(b"unpublished"))
    for hashed, error in [
        (f"apps/thermo/{other.sha256}.thermo-1.0.0.tar.gz", NotFoundError),
        (f"apps/other/{info.sha256}.thermo-1.0.0.tar.gz", NotFoundError),
        (f"apps/thermo/{info.sha256}.thermo-9.tar.gz", NotFoundError),
        (APP_V1, CatalogError),
        (f"apps/thermo/{info.sha256}.../../keys", CatalogError),
        (f"apps/../{info.sha256}.x", CatalogError),
        (f"sha256/{info.sha256[:2]}/{info.sha256}", CatalogError),
    ]:
        with pytest.raises(error):
            repo.target_file(hashed)
    blobs.delete(info.sha256)
    with pytest.raises(CatalogError, match="missing"):
        repo.target_file(f"apps/thermo/{info.sha256}.thermo-1.0.0.tar.gz")


# -- the pure helpers --------------------------------------------------------------------


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expires", "lifetime", "due"),
    [
        (NOW + timedelta(days=1), timedelta(days=1), False),
        (NOW + timedelta(hours=12), timedelta(days=1), False),
        (NOW + timedelta(hours=11, minutes=59), timedelta(days=1), True),
        (NOW - timedelta(days=1), timedelta(days=1), True),
        (NOW + timedelta(days=46), timedelta(days=90), False),
        (NOW + timedelta(days=44), timedelta(days=90), True),
    ],
)
def test_is_due(expires: datetime, lifetime: timedelta, due: bool) -> None:
    assert is_due(expires, lifetime, NOW) is due


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("timestamp.json", ("timestamp", None)),
        ("1.root.json", ("root", 1)),
        ("12.snapshot.json", ("snapshot", 12)),
        ("3.targets.json", ("targets", 3)),
    ],
)
def test_parse_metadata_name(name: str, parsed: tuple[str, int | None]) -> None:
    assert parse_metadata_name(name) == parsed


def test_parse_hashed_path() -> None:
    sha = "ab" * 32
    assert parse_hashed_path(f"apps/x/{sha}.x-1.tar.gz") == ("apps/x/x-1.tar.gz", sha)


@pytest.mark.parametrize("field", ["root", "targets", "snapshot", "timestamp"])
def test_lifetimes_must_be_positive(field: str) -> None:
    with pytest.raises(CatalogError, match=f"the {field} lifetime"):
        Lifetimes(**{field: timedelta(0)})


@pytest.mark.parametrize(
    "path",
    [
        "apps/thermo/thermo-1.0.0.tar.gz",
        "apps/thermo/thermo-1.0.0-rc.1+build.5.tar.gz",
        f"apps/{'a' * 63}/{'a' * 63}-{'1' * 20}.0.0.tar.gz",
    ],
)
def test_release_paths_are_target_paths(path: str) -> None:
    assert check_target_path(path) == path
