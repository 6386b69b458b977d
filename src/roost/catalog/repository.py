"""The hub's catalog: one TUF repository per tenant, signed with python-tuf's Metadata API.

Layout of ``DATA/catalog/<tenant_id>/``::

    metadata/N.root.json       every root version, kept: clients walk them one by one
    metadata/N.targets.json    consistent snapshots: every published version is a file
    metadata/N.snapshot.json
    metadata/timestamp.json    the only unversioned file, replaced on each publish
    keys/<keyid>.pem           private keys (PKCS#8 PEM, mode 0600), named by TUF keyid;
                               the root key's file is absent once taken offline

Target files are not copied: ``apps/<name>/<sha256>.<file>`` resolves to the blob
``<sha256>`` of the shared ``BlobStore``, and only while the current targets metadata
lists ``apps/<name>/<file>`` with that hash (a tenant never reaches another's blobs).
Edge functions' versions live beside the apps, under ``functions/<name>/``.

Invariants: every file is written atomically; a publish writes targets, then snapshot,
then the timestamp, each with a bumped version and an explicit expiry (the Metadata API
defaults ``expires`` to *now*); in-memory state changes only after all files are
written, so a failed publish leaves the repository as it was. On opening, the published
chain is followed from ``timestamp.json`` and re-signed if it does not verify against
the newest root (a rotation interrupted by a crash).

The pure helpers at the top (names, paths, what is due) do no I/O and read no clock.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.exceptions import Error as SSLibError

# python-tuf and securesystemslib re-export these names without ``__all__``, which
# mypy --strict (no implicit re-export) does not see through.
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey  # type: ignore[attr-defined]
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from roost.atomic import write_atomic, write_private
from roost.catalog.blobs import Blob, BlobStore
from roost.errors import CatalogError, ConflictError, NotFoundError

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
"""Roles whose keys stay on the hub; the root key may be taken offline."""

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}"
# Apps' releases and edge functions' versions.
_KINDS = "apps|functions"
_TARGET_PATH_RE = re.compile(rf"(?P<kind>{_KINDS})/(?P<name>{_SEGMENT})/(?P<file>{_SEGMENT})")
_HASHED_PATH_RE = re.compile(
    rf"(?P<kind>{_KINDS})/(?P<name>{_SEGMENT})/(?P<sha256>[0-9a-f]{{64}})\.(?P<file>.+)"
)
_METADATA_NAME_RE = re.compile(
    r"(?P<version>[1-9][0-9]{0,9})\.(?P<role>root|targets|snapshot)\.json"
)

_FOREIGN_ERRORS = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    RepositoryError,
    SSLibError,
    UnsupportedAlgorithm,
)

_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's metadata is valid once signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        for role in ("root", *ONLINE_ROLES):
            if self.of(role) <= timedelta(0):
                raise CatalogError(f"the {role} lifetime must be positive")

    def of(self, role: str) -> timedelta:
        lifetime: timedelta = getattr(self, role)
        return lifetime


@dataclass(frozen=True)
class TargetInfo:
    """A published target: its path in the catalog, its blob and its custom data."""

    path: str
    sha256: str
    length: int
    custom: Mapping[str, Any]

    @classmethod
    def from_tuf(cls, target: TargetFile) -> TargetInfo:
        custom = target.custom if isinstance(target.custom, dict) else {}
        return cls(target.path, target.hashes["sha256"], target.length, MappingProxyType(custom))


def check_target_path(path: str) -> str:
    """``path`` if it is ``apps/<name>/<file>`` or ``functions/<name>/<file>`` with safe
    segments, else ``CatalogError``."""
    if not _TARGET_PATH_RE.fullmatch(path):
        raise CatalogError(f"not a catalog target path (apps/<name>/<file>): {path[:200]!r}")
    return path


def parse_hashed_path(hashed_path: str) -> tuple[str, str]:
    """``apps/<name>/<sha256>.<file>`` → (``apps/<name>/<file>``, sha256)."""
    match = _HASHED_PATH_RE.fullmatch(hashed_path)
    if match is None:
        raise CatalogError(f"not a catalog target file: {hashed_path[:200]!r}")
    target_path = f"{match['kind']}/{match['name']}/{match['file']}"
    return check_target_path(target_path), match["sha256"]


def parse_metadata_name(name: str) -> tuple[str, int | None]:
    """``"N.<role>.json"`` → (role, N); ``"timestamp.json"`` → ("timestamp", None)."""
    if name == "timestamp.json":
        return "timestamp", None
    match = _METADATA_NAME_RE.fullmatch(name)
    if match is None:
        raise CatalogError(f"not a TUF metadata file name: {name[:200]!r}")
    return match["role"], int(match["version"])


def is_due(expires: datetime, lifetime: timedelta, now: datetime) -> bool:
    """Whether metadata must be re-signed: less than half of its lifetime remains."""
    return expires - now < lifetime / 2


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn python-tuf, securesystemslib and OS errors into one ``CatalogError`` line."""
    try:
        yield
    except _FOREIGN_ERRORS as err:
        raise CatalogError(f"cannot {what}: {err}") from err


class TenantRepository:
    """One tenant's TUF repository. Thread-safe; created on first open."""

    def __init__(
        self,
        directory: Path,
        blobs: BlobStore,
        *,
        lifetimes: Lifetimes | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.directory = directory
        self._blobs = blobs
        self._lifetimes = lifetimes or Lifetimes()
        self._clock = clock
        self._meta_dir = directory / "metadata"
        self._keys_dir = directory / "keys"
        self._lock = threading.RLock()
        self._signers: dict[str, Signer] = {}
        with _translated(f"open the catalog in {directory}"):
            if (self._meta_dir / "timestamp.json").is_file():
                self._load()
            else:
                self._create()

    # -- reading ---------------------------------------------------------------------

    def targets(self) -> list[TargetInfo]:
        """The published targets, sorted by path."""
        with self._lock:
            files = self._targets.signed.targets
            return [TargetInfo.from_tuf(files[path]) for path in sorted(files)]

    def metadata(self, name: str) -> bytes:
        """The metadata file a TUF client asks for by name (``N.root.json``, ...)."""
        parse_metadata_name(name)
        try:
            return (self._meta_dir / name).read_bytes()
        except FileNotFoundError as err:
            raise NotFoundError(f"no catalog metadata {name}") from err
        except OSError as err:
            raise CatalogError(f"cannot read the catalog metadata {name}: {err}") from err

    def target_file(self, hashed_path: str) -> Path:
        """The blob behind ``apps/<name>/<sha256>.<file>`` if that target is published."""
        target_path, sha256 = parse_hashed_path(hashed_path)
        with self._lock:
            target = self._targets.signed.targets.get(target_path)
        if target is None or target.hashes.get("sha256") != sha256:
            raise NotFoundError(f"no catalog target {hashed_path}")
        path = self._blobs.path(sha256)
        if not path.is_file():
            raise CatalogError(f"the blob of the published target {target_path} is missing")
        return path

    def trusted_root(self) -> bytes:
        """The newest root metadata: what a device is given at enrollment."""
        with self._lock:
            return self.metadata(f"{self._root.signed.version}.root.json")

    def expiries(self) -> dict[str, datetime]:
        """When each role's current metadata expires."""
        with self._lock:
            return {md.signed.type: md.signed.expires for md in (self._root, *self._chain())}

    @property
    def root_key_online(self) -> bool:
        """Whether the root private key is on the hub (needed to re-sign or rotate)."""
        return self._root_key_path().is_file()

    # -- publishing ------------------------------------------------------------------

    def add_target(self, target_path: str, blob: Blob, custom: Mapping[str, Any]) -> TargetInfo:
        """Publish ``blob`` as ``target_path``; the same content again is a no-op."""
        check_target_path(target_path)
        custom_dict = _json_copy(custom)
        stored = self._blobs.path(blob.sha256)
        if not stored.is_file() or stored.stat().st_size != blob.size:
            raise CatalogError(f"blob {blob.sha256} of {blob.size} bytes is not in the store")
        target = TargetFile(
            blob.size, {"sha256": blob.sha256}, target_path, {"custom": custom_dict}
        )
        with self._lock:
            files = dict(self._targets.signed.targets)
            current = files.get(target_path)
            if current is not None and current.hashes != target.hashes:
                raise ConflictError(f"the catalog has other content at {target_path} already")
            if current != target:
                files[target_path] = target
                self._publish(self._clock(), targets=files)
        return TargetInfo.from_tuf(target)

    def remove_target(self, target_path: str) -> None:
        """Stop publishing ``target_path``; its blob stays in the store."""
        with self._lock:
            files = dict(self._targets.signed.targets)
            if files.pop(target_path, None) is None:
                raise NotFoundError(f"no catalog target {target_path}")
            self._publish(self._clock(), targets=files)

    def refresh(self, now: datetime) -> bool:
        """Re-sign what has less than half its lifetime left; whether anything was.

        The root is re-signed only if its key is online; see ``expiries()``.
        """
        with self._lock:
            due = {
                md.signed.type: is_due(md.signed.expires, self._lifetimes.of(md.signed.type), now)
                for md in (self._root, *self._chain())
            }
            root = None
            if due["root"] and self.root_key_online:
                root = self._next_root(now, self._load_root_signer(None), self._signers)
            if not (root or due["targets"] or due["snapshot"] or due["timestamp"]):
                return False
            self._publish(
                now,
                targets=dict(self._targets.signed.targets) if due["targets"] else None,
                resign_snapshot=due["snapshot"],
                root=root,
            )
            return True

    # -- keys ------------------------------------------------------------------------

    def root_key(self) -> bytes:
        """The root private key as stored on the hub, for an operator to keep offline."""
        with self._lock, _translated("read the root key"):
            path = self._root_key_path()
            if not path.is_file():
                raise CatalogError("the root key of this catalog is offline already")
            return path.read_bytes()

    def export_root_key(self, dest: Path) -> None:
        """Copy the root private key to ``dest`` (mode 0600), e.g. removable media."""
        key = self.root_key()
        with _translated(f"export the root key to {dest}"):
            write_private(dest, key)

    def remove_root_key(self) -> None:
        """Delete the root private key from the hub; export it first."""
        with self._lock, _translated("remove the root key"):
            self._root_key_path().unlink(missing_ok=True)

    def rotate_online_keys(self, root_key: Path | None = None) -> None:
        """New targets, snapshot and timestamp keys, listed in a new root version.

        The root key is read from ``root_key`` if given (an offline copy), else from the
        hub; the new root is signed with it and everything else is re-signed.
        """
        with self._lock, _translated("rotate the online keys"):
            root_signer = self._load_root_signer(root_key)
            signers = self._new_online_signers()
            old_keyids = {s.public_key.keyid for s in self._signers.values()}
            now = self._clock()
            root = self._next_root(now, root_signer, signers)
            targets = dict(self._targets.signed.targets)
            self._publish(now, targets=targets, root=root, signers=signers)
            for keyid in old_keyids - {s.public_key.keyid for s in signers.values()}:
                (self._keys_dir / f"{keyid}.pem").unlink(missing_ok=True)

    # -- the imperative shell --------------------------------------------------------

    def _chain(self) -> tuple[Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
        return self._targets, self._snapshot, self._timestamp

    def _create(self) -> None:
        now = self._clock()
        root_signer = CryptoSigner.generate_ed25519()
        self._save_key(root_signer)
        signers = self._new_online_signers()
        self._meta_dir.mkdir(parents=True, exist_ok=True)
        root = Root(version=1, expires=now + self._lifetimes.root, consistent_snapshot=True)
        root.add_key(root_signer.public_key, "root")
        for role, online in signers.items():
            root.add_key(online.public_key, role)
        self._root = _sign(root, root_signer)
        self._write("1.root.json", self._root)
        lifetimes = self._lifetimes
        self._targets = _sign(Targets(1, None, now + lifetimes.targets, {}), signers["targets"])
        meta = {"targets.json": MetaFile(1)}
        self._snapshot = _sign(
            Snapshot(1, None, now + lifetimes.snapshot, meta), signers["snapshot"]
        )
        timestamp = Timestamp(1, None, now + lifetimes.timestamp, MetaFile(1))
        self._timestamp = _sign(timestamp, signers["timestamp"])
        self._signers = signers
        # The timestamp last: its presence is what marks the repository as created.
        for md in self._chain():
            self._write(_file_name(md), md)

    def _load(self) -> None:
        version = 1
        while (self._meta_dir / f"{version + 1}.root.json").is_file():
            version += 1
        self._root = self._read(f"{version}.root.json", Root)
        self._timestamp = self._read("timestamp.json", Timestamp)
        snapshot_version = self._timestamp.signed.snapshot_meta.version
        self._snapshot = self._read(f"{snapshot_version}.snapshot.json", Snapshot)
        targets_version = self._snapshot.signed.meta["targets.json"].version
        self._targets = self._read(f"{targets_version}.targets.json", Targets)
        self._signers = {role: self._load_signer(role, None) for role in ONLINE_ROLES}
        valid = {md.signed.type: self._verifies(md) for md in self._chain()}
        if not all(valid.values()):
            self._publish(
                self._clock(),
                targets=None if valid["targets"] else dict(self._targets.signed.targets),
                resign_snapshot=not valid["snapshot"],
            )

    def _publish(
        self,
        now: datetime,
        *,
        targets: dict[str, TargetFile] | None = None,
        resign_snapshot: bool = False,
        root: Metadata[Root] | None = None,
        signers: Mapping[str, Signer] | None = None,
    ) -> None:
        """Sign and write targets (if given) → snapshot → root (if given) → timestamp.

        ``signers`` replace the online signers, and only once everything is written.
        """
        signers = dict(signers or self._signers)
        lifetimes = self._lifetimes
        new_targets = self._targets
        if targets is not None:
            version = self._targets.signed.version + 1
            signed = Targets(version, None, now + lifetimes.targets, targets)
            new_targets = _sign(signed, signers["targets"])
            self._write(_file_name(new_targets), new_targets)
        new_snapshot = self._snapshot
        if targets is not None or resign_snapshot:
            version = self._snapshot.signed.version + 1
            meta = {"targets.json": MetaFile(new_targets.signed.version)}
            new_snapshot = _sign(
                Snapshot(version, None, now + lifetimes.snapshot, meta), signers["snapshot"]
            )
            self._write(_file_name(new_snapshot), new_snapshot)
        if root is not None:
            self._write(_file_name(root), root)
            self._root = root
        version = self._timestamp.signed.version + 1
        snapshot_meta = MetaFile(new_snapshot.signed.version)
        new_timestamp = _sign(
            Timestamp(version, None, now + lifetimes.timestamp, snapshot_meta),
            signers["timestamp"],
        )
        self._write(_file_name(new_timestamp), new_timestamp)
        self._targets, self._snapshot, self._timestamp = new_targets, new_snapshot, new_timestamp
        self._signers = signers

    def _next_root(
        self, now: datetime, root_signer: Signer, signers: Mapping[str, Signer]
    ) -> Metadata[Root]:
        root = Root(
            version=self._root.signed.version + 1,
            expires=now + self._lifetimes.root,
            consistent_snapshot=True,
        )
        root.add_key(root_signer.public_key, "root")
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        return _sign(root, root_signer)

    def _verifies(self, metadata: Metadata[Any]) -> bool:
        try:
            self._root.verify_delegate(metadata.signed.type, metadata)
        except RepositoryError:
            return False
        return True

    def _write(self, name: str, metadata: Metadata[Any]) -> None:
        write_atomic(self._meta_dir / name, metadata.to_bytes())

    def _read(self, name: str, kind: type[_S]) -> Metadata[_S]:
        metadata = Metadata[_S].from_bytes((self._meta_dir / name).read_bytes())
        if not isinstance(metadata.signed, kind):
            raise CatalogError(f"{self._meta_dir / name} is not {kind.type} metadata")
        return metadata

    def _new_online_signers(self) -> dict[str, Signer]:
        """Fresh targets, snapshot and timestamp keys, saved before any root lists them."""
        signers: dict[str, Signer] = {}
        for role in ONLINE_ROLES:
            signer = CryptoSigner.generate_ed25519()
            self._save_key(signer)
            signers[role] = signer
        return signers

    def _save_key(self, signer: CryptoSigner) -> None:
        self._keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._keys_dir / f"{signer.public_key.keyid}.pem", signer.private_bytes)

    def _root_key_path(self) -> Path:
        return self._keys_dir / f"{self._root.signed.roles['root'].keyids[0]}.pem"

    def _load_root_signer(self, path: Path | None) -> Signer:
        if path is None and not self.root_key_online:
            raise CatalogError("the root key is offline; give its file to sign a new root")
        return self._load_signer("root", path)

    def _load_signer(self, role: str, path: Path | None) -> Signer:
        keyid = self._root.signed.roles[role].keyids[0]
        pem = (path or self._keys_dir / f"{keyid}.pem").read_bytes()
        public_key = self._root.signed.keys[keyid]
        if not isinstance(public_key, SSlibKey):
            raise CatalogError(f"the {role} key {keyid[:16]}… is not a key Roost can use")
        return CryptoSigner(load_pem_private_key(pem, password=None), public_key)


def _sign(signed: _S, signer: Signer) -> Metadata[_S]:
    metadata = Metadata(signed)
    metadata.sign(signer)
    return metadata


def _file_name(metadata: Metadata[Any]) -> str:
    """Where a role's metadata is written: versioned, except the timestamp."""
    signed = metadata.signed
    return (
        "timestamp.json" if signed.type == "timestamp" else f"{signed.version}.{signed.type}.json"
    )


def _json_copy(custom: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``custom`` that is known to be JSON, or ``CatalogError``."""
    try:
        copied = json.loads(json.dumps(dict(custom)))
    except (TypeError, ValueError) as err:
        raise CatalogError(f"a target's custom data must be JSON: {err}") from err
    result: dict[str, Any] = copied
    return result


_TENANT_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class Catalog:
    """The hub's catalog: a shared ``BlobStore`` and a ``TenantRepository`` per tenant.

    Layout under ``data_dir``: ``blobs/`` (the store) and ``catalog/<tenant_id>/``.
    Repositories are opened (or created) on first use and cached; thread-safe.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        lifetimes: Lifetimes | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.blobs = BlobStore(data_dir / "blobs")
        self._directory = data_dir / "catalog"
        self._lifetimes = lifetimes
        self._clock = clock
        self._repositories: dict[str, TenantRepository] = {}
        self._lock = threading.Lock()

    def tenant(self, tenant_id: str) -> TenantRepository:
        """The repository of ``tenant_id``, created with fresh keys on first use."""
        if not _TENANT_ID_RE.fullmatch(tenant_id):
            raise CatalogError(f"not a tenant id: {tenant_id[:80]!r}")
        with self._lock:
            repository = self._repositories.get(tenant_id)
            if repository is None:
                repository = TenantRepository(
                    self._directory / tenant_id,
                    self.blobs,
                    lifetimes=self._lifetimes,
                    clock=self._clock,
                )
                self._repositories[tenant_id] = repository
            return repository

    def refresh(self, now: datetime) -> list[str]:
        """Refresh every opened repository; the tenants whose metadata was re-signed."""
        with self._lock:
            repositories = dict(self._repositories)
        return [tenant for tenant, repo in sorted(repositories.items()) if repo.refresh(now)]
