"""Signed updates on a device: a real TUF repository, built here with python-tuf's Metadata
API and served through the seam, against ``SignedUpdates``: bootstrap, new versions,
tampered targets, rollback (also across a restart), freeze, unknown keys, an unreachable
hub; and ``hubapi.fetch`` against a real HTTPS server."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import re
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    TOP_LEVEL_ROLE_NAMES,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from agent.https_server import serve_https
from roost.agent import hubapi
from roost.agent.updates import SignedTarget, SignedUpdates, UpdateLimits
from roost.errors import (
    ConfigError,
    HubError,
    HubUnreachableError,
    UpdateError,
    UpdateRefusedError,
    WireError,
)

APP = "apps/demo/demo-1.0.tar"
APP_BYTES = b"the demo app, version 1.0\n" * 40
APP2 = "apps/demo/demo-1.1.tar"
APP2_BYTES = b"the demo app, version 1.1\n" * 40


def _in(days: float) -> dt.datetime:
    # Whole seconds: TUF metadata does not carry fractions.
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(microsecond=0)


class Repository:
    """A hub's TUF repository for one tenant, in memory, served as the hub serves it.

    Consistent snapshots: ``N.root.json``, ``N.snapshot.json``, ``N.targets.json`` and
    ``timestamp.json`` under ``/v1/tuf/metadata/``, targets as ``dir/<sha256>.<name>``
    under ``/v1/tuf/targets/``. ``fetch`` is the seam ``SignedUpdates`` uses.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self.reachable = True
        self.signers: dict[str, list[Signer]] = {}
        self.root = Metadata(Root(expires=_in(365), consistent_snapshot=True))
        for role in TOP_LEVEL_ROLE_NAMES:
            signer = CryptoSigner.generate_ecdsa()
            self.signers[role] = [signer]
            self.root.signed.add_key(signer.public_key, role)
        self.targets = Metadata(Targets(expires=_in(30)))
        self.snapshot = Metadata(Snapshot(expires=_in(7)))
        self.timestamp = Metadata(Timestamp(expires=_in(1)))
        self.publish_root()
        self.publish_targets()

    # -- the seam ------------------------------------------------------------------------

    def fetch(self, path: str, max_bytes: int) -> bytes:
        self.fetched.append(path)
        if not self.reachable:
            raise HubUnreachableError("https://hub.test:8443", "connection refused")
        if path not in self.files:
            raise HubError(f"no {path}", 404)
        data = self.files[path]
        if len(data) > max_bytes:
            raise WireError(f"more than {max_bytes} bytes")
        return data

    # -- publishing ----------------------------------------------------------------------

    def _sign(self, metadata: Metadata[Any], role: str) -> bytes:
        metadata.signatures.clear()
        for signer in self.signers[role]:
            metadata.sign(signer, append=True)
        return metadata.to_bytes()

    def publish_root(self) -> None:
        name = f"{self.root.signed.version}.root.json"
        self.files[f"/v1/tuf/metadata/{name}"] = self._sign(self.root, "root")

    def publish_timestamp(self) -> None:
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.files["/v1/tuf/metadata/timestamp.json"] = self._sign(self.timestamp, "timestamp")

    def publish_snapshot(self) -> None:
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        name = f"{self.snapshot.signed.version}.snapshot.json"
        self.files[f"/v1/tuf/metadata/{name}"] = self._sign(self.snapshot, "snapshot")
        self.publish_timestamp()

    def publish_targets(self) -> None:
        """Sign targets, then snapshot, then timestamp, in that order."""
        name = f"{self.targets.signed.version}.targets.json"
        self.files[f"/v1/tuf/metadata/{name}"] = self._sign(self.targets, "targets")
        self.publish_snapshot()

    def release(self) -> None:
        """A new version of targets, snapshot and timestamp."""
        for metadata in (self.targets, self.snapshot, self.timestamp):
            metadata.signed.version += 1
        self.publish_targets()

    def add_target(self, path: str, data: bytes, custom: dict[str, str] | None = None) -> None:
        info = TargetFile.from_data(path, data, ["sha256"])
        if custom is not None:
            info.unrecognized_fields["custom"] = custom
        self.targets.signed.targets[path] = info
        self.files[self.target_url(path)] = data

    def target_url(self, path: str) -> str:
        directory, _, name = path.rpartition("/")
        digest = self.targets.signed.targets[path].hashes["sha256"]
        return f"/v1/tuf/targets/{directory}/{digest}.{name}"


@pytest.fixture
def repo() -> Repository:
    repository = Repository()
    repository.add_target(APP, APP_BYTES, {"app": "demo", "version": "1.0"})
    repository.release()
    return repository


@pytest.fixture
def updates(tmp_path: Path, repo: Repository) -> SignedUpdates:
    return SignedUpdates(tmp_path, repo.fetch)


def targets_on_disk(tmp_path: Path) -> list[str]:
    where = tmp_path / "tuf" / "targets"
    return sorted(p.name for p in where.iterdir()) if where.exists() else []


# -- the happy path ----------------------------------------------------------------------


def test_bootstrap_then_download_a_verified_target(
    tmp_path: Path, repo: Repository, updates: SignedUpdates
) -> None:
    updates.refresh()
    assert repo.fetched[0] == "/v1/tuf/metadata/1.root.json"
    assert updates.target(APP) == SignedTarget(
        APP,
        len(APP_BYTES),
        hashlib.sha256(APP_BYTES).hexdigest(),
        {"app": "demo", "version": "1.0"},
    )
    local = updates.download(APP)
    assert local.read_bytes() == APP_BYTES
    assert local.parent == tmp_path / "tuf" / "targets"
    assert repo.fetched[-1] == repo.target_url(APP)
    stored = {p.name for p in (tmp_path / "tuf" / "metadata").iterdir()}
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= stored


def test_a_cached_copy_is_reused_while_it_verifies(
    tmp_path: Path, repo: Repository, updates: SignedUpdates
) -> None:
    first = updates.download(APP)
    fetches = len(repo.fetched)
    assert SignedUpdates(tmp_path, repo.fetch).download(APP) == first
    target_fetches = [p for p in repo.fetched[fetches:] if p.startswith("/v1/tuf/targets/")]
    assert target_fetches == []
    first.write_bytes(b"x" * len(APP_BYTES))  # damaged on disk: fetched again
    assert updates.download(APP).read_bytes() == APP_BYTES
    assert repo.fetched[-1] == repo.target_url(APP)


def test_a_new_version_is_found_after_a_new_timestamp(
    repo: Repository, updates: SignedUpdates
) -> None:
    updates.refresh()
    assert updates.target(APP2) is None
    repo.add_target(APP2, APP2_BYTES)
    repo.release()
    assert updates.target(APP2) is None  # not until the next refresh
    updates.refresh()
    info = updates.target(APP2)
    assert info is not None
    assert info.sha256 == hashlib.sha256(APP2_BYTES).hexdigest()
    assert updates.download(APP2).read_bytes() == APP2_BYTES


def test_target_follows_a_root_rotation(tmp_path: Path, repo: Repository) -> None:
    SignedUpdates(tmp_path, repo.fetch).refresh()
    new_key = CryptoSigner.generate_ecdsa()
    old_key = repo.signers["timestamp"][0]
    repo.root.signed.revoke_key(old_key.public_key.keyid, "timestamp")
    repo.root.signed.add_key(new_key.public_key, "timestamp")
    repo.root.signed.version += 1
    repo.publish_root()
    repo.signers["timestamp"] = [new_key]
    repo.add_target(APP2, APP2_BYTES)
    repo.release()
    updates = SignedUpdates(tmp_path, repo.fetch)
    updates.refresh()
    assert updates.target(APP2) is not None
    assert (tmp_path / "tuf" / "metadata" / "root_history" / "2.root.json").exists()


def test_an_unknown_target_is_none_and_cannot_be_downloaded(updates: SignedUpdates) -> None:
    assert updates.target("apps/none/none.tar") is None
    with pytest.raises(UpdateError, match=re.escape("no target apps/none/none.tar")) as caught:
        updates.download("apps/none/none.tar")
    assert type(caught.value) is UpdateError


# -- refusals ----------------------------------------------------------------------------

TAMPERINGS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("same length, other bytes", lambda data: data[:-1] + b"!"),
    ("longer", lambda data: data + b"more"),
    ("shorter", lambda data: data[:-1]),
]


@pytest.mark.parametrize(("name", "tamper"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_tampered_target_is_refused_and_not_kept(
    tmp_path: Path,
    repo: Repository,
    updates: SignedUpdates,
    name: str,
    tamper: Callable[[bytes], bytes],
) -> None:
    repo.files[repo.target_url(APP)] = tamper(APP_BYTES)
    with pytest.raises(UpdateRefusedError, match=f"^refused target {re.escape(APP)}: ") as caught:
        updates.download(APP)
    assert "\n" not in str(caught.value)
    assert targets_on_disk(tmp_path) == []


def _roll_back_timestamp(repo: Repository, old: dict[str, bytes]) -> None:
    repo.files["/v1/tuf/metadata/timestamp.json"] = old["/v1/tuf/metadata/timestamp.json"]


def _roll_back_snapshot(repo: Repository, old: dict[str, bytes]) -> None:
    # A newer timestamp that names the older snapshot.
    repo.snapshot.signed.version -= 1
    repo.timestamp.signed.version += 1
    repo.publish_timestamp()


def _roll_back_targets(repo: Repository, old: dict[str, bytes]) -> None:
    # A newer snapshot (and timestamp) that names the older targets.
    repo.targets.signed.version -= 1
    repo.snapshot.signed.version += 1
    repo.timestamp.signed.version += 1
    repo.publish_snapshot()


ROLLBACKS = [
    ("timestamp", _roll_back_timestamp),
    ("snapshot", _roll_back_snapshot),
    ("targets", _roll_back_targets),
]


@pytest.mark.parametrize("restart", [False, True], ids=["same agent", "after restart"])
@pytest.mark.parametrize(("role", "roll_back"), ROLLBACKS, ids=[r[0] for r in ROLLBACKS])
def test_rolled_back_metadata_is_refused(
    tmp_path: Path,
    repo: Repository,
    role: str,
    roll_back: Callable[[Repository, dict[str, bytes]], None],
    restart: bool,
) -> None:
    updates = SignedUpdates(tmp_path, repo.fetch)
    updates.refresh()
    old = dict(repo.files)
    repo.add_target(APP2, APP2_BYTES)
    repo.release()
    updates.refresh()  # the newer versions are now trusted
    roll_back(repo, old)
    if restart:
        updates = SignedUpdates(tmp_path, repo.fetch)
    with pytest.raises(UpdateRefusedError, match="rolled back") as caught:
        updates.refresh()
    assert role in str(caught.value)


def test_a_fresh_device_accepts_what_a_restarted_one_refuses(
    tmp_path: Path, repo: Repository
) -> None:
    """The rollback test above is about stored trust, not about the repository."""
    old = dict(repo.files)
    SignedUpdates(tmp_path / "seen", repo.fetch).refresh()
    repo.release()
    SignedUpdates(tmp_path / "seen", repo.fetch).refresh()
    _roll_back_timestamp(repo, old)
    SignedUpdates(tmp_path / "fresh", repo.fetch).refresh()
    with pytest.raises(UpdateRefusedError):
        SignedUpdates(tmp_path / "seen", repo.fetch).refresh()


def test_expired_timestamp_is_refused(repo: Repository, updates: SignedUpdates) -> None:
    updates.refresh()
    repo.timestamp.signed.expires = _in(-1 / 24)
    repo.timestamp.signed.version += 1
    repo.publish_timestamp()
    with pytest.raises(UpdateRefusedError, match="expired"):
        updates.refresh()


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_metadata_signed_by_an_unknown_key_is_refused(
    repo: Repository, updates: SignedUpdates, role: str
) -> None:
    updates.refresh()
    repo.signers[role] = [CryptoSigner.generate_ecdsa()]
    repo.add_target(APP2, APP2_BYTES)
    repo.release()
    with pytest.raises(UpdateRefusedError, match="not signed by enough trusted keys"):
        updates.refresh()
    assert updates.target(APP2) is None


def test_the_first_root_is_not_fetched_again(tmp_path: Path, repo: Repository) -> None:
    """Trust on enrollment happens once: a hub that later serves another 1.root.json
    (and metadata signed by its keys) is refused."""
    SignedUpdates(tmp_path, repo.fetch).refresh()
    impostor = Repository()
    impostor.add_target(APP, b"evil")
    impostor.release()
    impostor.release()
    repo.files = impostor.files
    with pytest.raises(UpdateRefusedError, match="not signed by enough trusted keys"):
        SignedUpdates(tmp_path, repo.fetch).refresh()


def test_metadata_longer_than_its_limit_is_refused(tmp_path: Path, repo: Repository) -> None:
    limited = SignedUpdates(tmp_path, repo.fetch, UpdateLimits(timestamp_max_bytes=64))
    with pytest.raises(UpdateRefusedError, match="longer than"):
        limited.refresh()


def test_a_target_over_the_agent_limit_is_refused(tmp_path: Path, repo: Repository) -> None:
    limited = SignedUpdates(tmp_path, repo.fetch, UpdateLimits(target_max_bytes=100))
    with pytest.raises(UpdateRefusedError, match="more than the agent's limit of 100"):
        limited.download(APP)
    assert targets_on_disk(tmp_path) == []


@pytest.mark.parametrize("field", ["root_max_bytes", "target_max_bytes", "max_root_rotations"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        UpdateLimits(**{field: 0})


# -- fetch failures are not refusals -----------------------------------------------------


@pytest.mark.parametrize("enrolled", [False, True], ids=["before bootstrap", "after"])
def test_unreachable_hub_is_an_update_error_not_a_refusal(
    repo: Repository, updates: SignedUpdates, enrolled: bool
) -> None:
    if enrolled:
        updates.refresh()
    repo.reachable = False
    unreachable = re.escape("cannot reach the hub at https://hub.test")
    with pytest.raises(UpdateError, match=unreachable) as caught:
        updates.refresh()
    assert type(caught.value) is UpdateError


def test_a_hub_without_a_catalog_is_an_update_error(tmp_path: Path) -> None:
    empty = Repository()
    empty.files.clear()
    with pytest.raises(UpdateError, match=re.escape("no /v1/tuf/metadata/1.root.json")) as caught:
        SignedUpdates(tmp_path, empty.fetch).refresh()
    assert type(caught.value) is UpdateError


def test_importing_the_module_does_not_import_tuf() -> None:
    code = (
        "import sys, roost.agent.updates\n"
        "loaded = sorted(m for m in sys.modules if m == 'tuf' or m.startswith('tuf.'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- hubapi.fetch over real HTTPS --------------------------------------------------------


@pytest.fixture
def https_hub() -> Iterator[tuple[str, ssl.SSLContext, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    body = bytes(range(256)) * 1024  # 256 KiB, more than one chunk

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            if self.path == "/v1/tuf/targets/big":
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                error = b'{"error": "no such file"}'
                self.send_response(404)
                self.send_header("content-length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serve_https(Handler) as (url, context):
        yield url, context, seen


def test_hubapi_fetch_signs_reads_limits_and_reports_404(
    https_hub: tuple[str, ssl.SSLContext, list[dict[str, str]]],
) -> None:
    url, context, seen = https_hub

    def signer(method: str, target: str, body: bytes) -> dict[str, str]:
        return {"x-roost-device": "d1", "x-roost-signature": f"{method} {target} {len(body)}"}

    data = hubapi.fetch(url, "/v1/tuf/targets/big", context, signer, 5.0, 256 * 1024)
    assert data == bytes(range(256)) * 1024
    assert seen[-1]["x-roost-signature"] == "GET /v1/tuf/targets/big 0"
    with pytest.raises(WireError, match="more than 1000 bytes"):
        hubapi.fetch(url, "/v1/tuf/targets/big", context, signer, 5.0, 1000)
    with pytest.raises(HubError, match="no such file") as caught:
        hubapi.fetch(url, "/v1/tuf/metadata/9.root.json", context, signer, 5.0, 1000)
    assert caught.value.status == 404
    assert not isinstance(caught.value, HubUnreachableError)


def test_hubapi_fetch_refuses_a_hub_it_cannot_verify(
    https_hub: tuple[str, ssl.SSLContext, list[dict[str, str]]],
) -> None:
    url, _, _ = https_hub
    from roost.pki.ca import CertificateAuthority

    other = hubapi.verified_context(CertificateAuthority.create().cert_pem)
    with pytest.raises(HubUnreachableError, match="cannot reach the hub"):
        hubapi.fetch(url, "/v1/tuf/targets/big", other, None, 5.0, 1000)
