"""A TUF client as a device runs it, wired to a ``TenantRepository`` without HTTP.

``HubFetcher`` answers python-tuf's ngclient from ``metadata()`` and ``target_file()``
(``NotFoundError`` becomes a 404, as the hub's routes would answer) and lets a test
serve other bytes for chosen files: the attacker. ``Device`` keeps its metadata
directory between updates, as a real device must, and bootstraps from the root it was
given at enrollment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from roost.catalog import TenantRepository
from roost.errors import NotFoundError

METADATA_URL = "https://hub.test/catalog/metadata/"
TARGETS_URL = "https://hub.test/catalog/targets/"


class HubFetcher(FetcherInterface):
    """Serves one repository; ``forged`` maps a file name to the bytes served instead."""

    def __init__(self, repository: TenantRepository) -> None:
        self.repository = repository
        self.forged: dict[str, bytes] = {}
        self.requests: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests.append(url)
        try:
            if url.startswith(METADATA_URL):
                name = url.removeprefix(METADATA_URL)
                data = self.forged.get(name) or self.repository.metadata(name)
            elif url.startswith(TARGETS_URL):
                name = url.removeprefix(TARGETS_URL)
                data = self.forged.get(name) or self.repository.target_file(name).read_bytes()
            else:
                raise DownloadHTTPError(f"no such URL {url}", 404)
        except NotFoundError as err:
            raise DownloadHTTPError(str(err), 404) from err
        return iter([data])


@dataclass
class Device:
    """A device's TUF state on disk, enrolled with ``root`` (bytes of a root version)."""

    directory: Path
    fetcher: HubFetcher
    root: bytes
    targets: dict[str, bytes] = field(default_factory=dict)

    def updater(self) -> Updater:
        """A fresh ngclient updater over the device's kept metadata (one per update)."""
        metadata = self.directory / "metadata"
        metadata.mkdir(parents=True, exist_ok=True)
        return Updater(
            str(metadata),
            METADATA_URL,
            str(self.directory / "targets"),
            TARGETS_URL,
            self.fetcher,
            bootstrap=self.root,
        )

    def update(self) -> Updater:
        """Refresh the top-level metadata; raises what ngclient raises."""
        updater = self.updater()
        updater.refresh()
        return updater

    def download(self, target_path: str) -> bytes:
        """Refresh, then download and verify one target; its bytes."""
        updater = self.update()
        info = updater.get_targetinfo(target_path)
        if info is None:
            raise LookupError(target_path)
        path = updater.download_target(info, str(self.directory / "download"))
        return Path(path).read_bytes()

    def sees(self, target_path: str) -> bool:
        """Whether the device, once refreshed, finds ``target_path`` in trusted targets."""
        return self.update().get_targetinfo(target_path) is not None
