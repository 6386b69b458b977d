"""Signed updates on a device: verified download of the hub's TUF metadata and targets.

The hub keeps a TUF repository per tenant (``roost.catalog``) and serves it to each device
at ``/v1/tuf/metadata/{name}`` and ``/v1/tuf/targets/{path}``, over HTTPS verified with
the CA the device pinned at enrollment and with every request signed by the device key.
``SignedUpdates`` runs python-tuf's client workflow (``tuf.ngclient.Updater``) over that
and hands out only files whose length and sha256 the signed metadata vouches for.

Invariants:

* Trust on enrollment: the first root is ``1.root.json`` fetched from the hub the device
  already authenticates by its pinned CA. Once a root is stored it is never fetched that
  way again; roots then change only through TUF's own chain of signed roots.
* Trusted metadata lives in ``DATA/tuf/metadata/`` across restarts, so rollback and
  freeze protection survive an agent restart. Verified targets live in
  ``DATA/tuf/targets/``; a file is there only once it has verified.
* Verification failures (tampered length or hash, rolled-back versions, expired metadata,
  bad or unknown signatures) raise ``UpdateRefusedError``; fetch failures raise
  ``UpdateError``. Nothing from python-tuf escapes.
* ``tuf`` is imported on first use, not with this module: most agents never update.

Everything here blocks (file I/O and the hub fetches): the asyncio agent calls it through
an executor. One instance serialises its own calls with a lock, because an ``Updater``
is not safe to share between threads.
"""

from __future__ import annotations

import contextlib
import io
import os
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from roost.agent import hubapi
from roost.errors import (
    ConfigError,
    HubError,
    HubUnreachableError,
    UpdateError,
    UpdateRefusedError,
    WireError,
)

if TYPE_CHECKING:
    # Where python-tuf defines them: its packages re-export them in a way mypy cannot see.
    from tuf.api._payload import TargetFile
    from tuf.ngclient.fetcher import FetcherInterface
    from tuf.ngclient.updater import Updater

METADATA_PATH = "/v1/tuf/metadata/"
TARGETS_PATH = "/v1/tuf/targets/"

HubFetch = Callable[[str, int], bytes]
"""The I/O seam: GET one hub path (``/v1/tuf/...``) of at most ``max_bytes`` bytes.

It raises ``HubError`` with the hub's status (404: not there), ``HubUnreachableError``
when there is no answer, and ``WireError`` when the answer is longer than ``max_bytes``.
``hub_fetch()`` is the real one; tests pass an in-memory repository.
"""


def hub_fetch(
    hub_url: str, context: ssl.SSLContext, signer: hubapi.Signer, timeout: float = 30.0
) -> HubFetch:
    """The seam over HTTPS: GETs signed with the device key, the hub checked by ``context``."""

    def fetch(path: str, max_bytes: int) -> bytes:
        return hubapi.fetch(hub_url, path, context, signer, timeout, max_bytes)

    return fetch


@dataclass(frozen=True)
class UpdateLimits:
    """Safety budgets, in bytes unless named otherwise; each must be positive."""

    root_max_bytes: int = 512_000
    timestamp_max_bytes: int = 16_384
    snapshot_max_bytes: int = 2_000_000
    targets_max_bytes: int = 5_000_000
    # Largest target the agent accepts whatever the metadata says (disk of a small box).
    target_max_bytes: int = 1 << 30
    max_root_rotations: int = 32
    max_delegations: int = 8

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ConfigError(f"update limit {name} must be positive, not {value}")


@dataclass(frozen=True)
class SignedTarget:
    """What the signed targets metadata says about one target file."""

    path: str
    length: int
    sha256: str
    custom: Mapping[str, Any] = field(default_factory=dict)


class SignedUpdates:
    """A device's verified view of its tenant's signed catalog (see the module docstring).

    Blocking: call it from an executor, never on the event loop.
    """

    def __init__(self, data_dir: Path, fetch: HubFetch, limits: UpdateLimits | None = None) -> None:
        self.metadata_dir = data_dir / "tuf" / "metadata"
        self.targets_dir = data_dir / "tuf" / "targets"
        self._fetch = fetch
        self.limits = limits or UpdateLimits()
        self._updater: Updater | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Fetch and verify the newest root, timestamp, snapshot and targets metadata."""
        with self._lock, _translated("the signed catalog metadata from the hub"):
            self._refresh()

    def target(self, path: str) -> SignedTarget | None:
        """The signed facts about ``path``, or None; refreshes first if not yet done."""
        with self._lock, _translated(f"target {path}"):
            info = self._target_file(path)
            return None if info is None else _signed_target(info)

    def download(self, path: str) -> Path:
        """A local file of ``path`` that verified against the signed metadata.

        A copy already in ``targets/`` is checked again and reused when it still
        verifies; otherwise the file is fetched and kept only if its length and sha256
        match. Raises ``UpdateError`` when the catalog has no such target.
        """
        with self._lock, _translated(f"target {path}"):
            info = self._target_file(path)
            if info is None:
                raise UpdateError(f"the signed catalog has no target {path}")
            target = _signed_target(info)
            if target.length > self.limits.target_max_bytes:
                raise UpdateRefusedError(
                    f"refused target {path}: {target.length} bytes is more than the "
                    f"agent's limit of {self.limits.target_max_bytes}"
                )
            return self._download(info)

    # -- inside the lock ------------------------------------------------------------------

    def _refresh(self) -> None:
        updater = self._new_updater()
        updater.refresh()
        self._updater = updater

    def _target_file(self, path: str) -> TargetFile | None:
        if self._updater is None:
            self._refresh()
        assert self._updater is not None
        return self._updater.get_targetinfo(path)

    def _download(self, info: TargetFile) -> Path:
        assert self._updater is not None
        final = self.targets_dir / urllib.parse.quote(info.path, safe="")
        cached = self._updater.find_cached_target(info, str(final))
        if cached is not None:
            return Path(cached)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        # ngclient verifies before it writes, but a crash while copying would still
        # leave half a file under the final name: write beside it, then rename.
        partial = final.with_name(f".{final.name}.partial")
        try:
            self._updater.download_target(info, str(partial))
            os.replace(partial, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return final

    def _new_updater(self) -> Updater:
        """A fresh ``Updater`` (each one refreshes once) over the stored trusted root."""
        from tuf.ngclient.config import UpdaterConfig
        from tuf.ngclient.updater import Updater

        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        config = UpdaterConfig(
            max_root_rotations=self.limits.max_root_rotations,
            max_delegations=self.limits.max_delegations,
            root_max_length=self.limits.root_max_bytes,
            timestamp_max_length=self.limits.timestamp_max_bytes,
            snapshot_max_length=self.limits.snapshot_max_bytes,
            targets_max_length=self.limits.targets_max_bytes,
        )
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=METADATA_PATH,
            target_dir=str(self.targets_dir),
            target_base_url=TARGETS_PATH,
            fetcher=self._fetcher(),
            config=config,
            bootstrap=self._trusted_root(),
        )

    def _trusted_root(self) -> bytes:
        """The stored root, or on first use the hub's ``1.root.json`` (trust on enrollment)."""
        stored = self.metadata_dir / "root.json"
        if stored.exists():
            return stored.read_bytes()
        return self._fetcher().download_bytes(
            f"{METADATA_PATH}1.root.json", self.limits.root_max_bytes
        )

    def _fetcher(self) -> FetcherInterface:
        return _hub_fetcher(self._fetch, self.limits.target_max_bytes)


def _hub_fetcher(fetch: HubFetch, max_bytes: int) -> FetcherInterface:
    """ngclient's fetcher over the seam; built here so that ``tuf`` loads only when used."""
    from tuf.api import exceptions
    from tuf.ngclient.fetcher import FetcherInterface

    class HubFetcher(FetcherInterface):
        # ngclient knows the length it allows for each file; the seam enforces it while
        # reading, so an oversized answer never sits in memory whole.
        @contextlib.contextmanager
        def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
            yield io.BytesIO(self._get(url, max_length))

        def download_bytes(self, url: str, max_length: int) -> bytes:
            return self._get(url, max_length)

        def _fetch(self, url: str) -> Iterator[bytes]:
            return iter([self._get(url, max_bytes)])

        def _get(self, url: str, max_length: int) -> bytes:
            path = urllib.parse.quote(url, safe="/%")
            try:
                return fetch(path, max_length)
            except HubUnreachableError as err:
                raise exceptions.DownloadError(str(err)) from err
            except HubError as err:  # ngclient reads 404 on the next root as "no newer root"
                raise exceptions.DownloadHTTPError(str(err), err.status) from err
            except WireError as err:
                raise exceptions.DownloadLengthMismatchError(
                    f"{path} is longer than {max_length} bytes"
                ) from err

    return HubFetcher()


def _signed_target(info: TargetFile) -> SignedTarget:
    sha256 = info.hashes.get("sha256")
    if sha256 is None:
        raise UpdateRefusedError(f"refused target {info.path}: its metadata has no sha256")
    custom = info.custom if isinstance(info.custom, Mapping) else {}
    return SignedTarget(info.path, info.length, sha256, dict(custom))


def _reason(err: Exception) -> str:
    """Why ngclient refused, in words, with its own detail on the same line."""
    from tuf.api import exceptions

    reasons: tuple[tuple[type[Exception], str], ...] = (  # most specific first
        (exceptions.UnsignedMetadataError, "not signed by enough trusted keys"),
        (exceptions.EqualVersionNumberError, "same version number, different content"),
        (exceptions.BadVersionNumberError, "rolled back to an older version"),
        (exceptions.ExpiredMetadataError, "expired"),
        (exceptions.LengthOrHashMismatchError, "length or sha256 differs from the signed metadata"),
        (exceptions.DownloadLengthMismatchError, "longer than the signed metadata allows"),
    )
    reason = next((text for cls, text in reasons if isinstance(err, cls)), "does not verify")
    detail = " ".join(str(err).split())
    return f"{reason} ({detail})" if detail else reason


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn python-tuf's errors (and local disk errors) into Roost's, one line each."""
    from tuf.api import exceptions

    try:
        yield
    except (exceptions.RepositoryError, exceptions.DownloadLengthMismatchError) as err:
        raise UpdateRefusedError(f"refused {what}: {_reason(err)}") from err
    except exceptions.DownloadError as err:
        cause = err.__cause__ or err
        raise UpdateError(f"cannot fetch {what}: {' '.join(str(cause).split())}") from err
    except OSError as err:
        raise UpdateError(f"cannot store {what} on this device: {err}") from err
