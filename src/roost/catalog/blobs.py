"""Content-addressed blob storage: app bundles and other large files, named by SHA-256.

A blob's name is the hex SHA-256 of its bytes, so storing the same bytes twice is one
file, and a name can never point at different content. ``BlobStorage`` is the seam:
its public methods validate names and turn ``OSError`` into ``CatalogError``;
implementations override one private hook each. ``BlobStore`` keeps blobs on disk under
``root/sha256/<first two hex digits>/<hex>``; ``MemoryBlobStore`` is the fake for unit
tests.

Invariants of ``BlobStore``: a blob file appears whole or not at all (written to
``root/tmp/``, hashed while written, fsynced, renamed into place, directory fsynced);
its bytes hash to its name unless someone edited the file behind the store's back.
"""

from __future__ import annotations

import abc
import hashlib
import io
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from roost.errors import CatalogError, NotFoundError

CHUNK_SIZE = 1 << 20
"""Bytes read and hashed at a time while storing a blob."""

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits, else ``CatalogError``."""
    if not _SHA256_RE.fullmatch(sha256):
        raise CatalogError(f"not a SHA-256 blob name: {sha256[:80]!r}")
    return sha256


@dataclass(frozen=True)
class Blob:
    """A stored blob: its SHA-256 (hex), its size in bytes, and where it lies on disk.

    ``path`` is ``None`` for blobs that live in no file (``MemoryBlobStore``).
    """

    sha256: str
    size: int
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_sha256(self.sha256)
        if self.size < 0:
            raise CatalogError(f"a blob cannot be {self.size} bytes long")


class BlobStorage(abc.ABC):
    """The blob store seam. Public methods validate and translate errors; hooks do I/O."""

    def put(self, source: BinaryIO | Path, max_size: int | None = None) -> Blob:
        """Store the bytes of a stream or a file; the same bytes twice give the same blob.

        ``max_size`` is a budget: a source longer than it is refused with
        ``CatalogError`` and nothing is stored.
        """
        try:
            if isinstance(source, Path):
                with source.open("rb") as stream:
                    return self._put(stream, max_size)
            return self._put(source, max_size)
        except OSError as err:
            raise CatalogError(f"cannot store a blob: {err}") from err

    def open(self, sha256: str) -> BinaryIO:
        """A binary stream of the blob's bytes; ``NotFoundError`` if there is none."""
        check_sha256(sha256)
        try:
            return self._open(sha256)
        except FileNotFoundError as err:
            raise NotFoundError(f"no blob {sha256}") from err
        except OSError as err:
            raise CatalogError(f"cannot read the blob {sha256}: {err}") from err

    def exists(self, sha256: str) -> bool:
        check_sha256(sha256)
        try:
            return self._exists(sha256)
        except OSError as err:
            raise CatalogError(f"cannot look for the blob {sha256}: {err}") from err

    def delete(self, sha256: str) -> bool:
        """Remove the blob; ``False`` if there was none."""
        check_sha256(sha256)
        try:
            return self._delete(sha256)
        except OSError as err:
            raise CatalogError(f"cannot delete the blob {sha256}: {err}") from err

    @abc.abstractmethod
    def _put(self, stream: BinaryIO, max_size: int | None) -> Blob: ...

    @abc.abstractmethod
    def _open(self, sha256: str) -> BinaryIO: ...

    @abc.abstractmethod
    def _exists(self, sha256: str) -> bool: ...

    @abc.abstractmethod
    def _delete(self, sha256: str) -> bool: ...


def _chunks(stream: BinaryIO, max_size: int | None) -> Iterator[bytes]:
    """The stream's bytes in chunks, refusing to go past ``max_size``."""
    total = 0
    while chunk := stream.read(CHUNK_SIZE):
        total += len(chunk)
        if max_size is not None and total > max_size:
            raise CatalogError(f"the blob is larger than the limit of {max_size} bytes")
        yield chunk


class BlobStore(BlobStorage):
    """Blobs on disk under ``root``; what the catalog serves target files from."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` lies (whether or not it is there)."""
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def _put(self, stream: BinaryIO, max_size: int | None) -> Blob:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{secrets.token_hex(8)}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("xb") as out:
                for chunk in _chunks(stream, max_size):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            final = self.path(digest.hexdigest())
            final.parent.mkdir(parents=True, exist_ok=True)
            # Replacing an existing blob with the same bytes is harmless and heals a
            # file damaged on disk.
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return Blob(digest.hexdigest(), size, final)

    def _open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def _exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def _delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MemoryBlobStore(BlobStorage):
    """Blobs in a dict: the fake for unit tests of code that only stores and reads."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def _put(self, stream: BinaryIO, max_size: int | None) -> Blob:
        data = b"".join(_chunks(stream, max_size))
        sha256 = hashlib.sha256(data).hexdigest()
        self.blobs[sha256] = data
        return Blob(sha256, len(data))

    def _open(self, sha256: str) -> BinaryIO:
        try:
            return io.BytesIO(self.blobs[sha256])
        except KeyError:
            raise FileNotFoundError(sha256) from None

    def _exists(self, sha256: str) -> bool:
        return sha256 in self.blobs

    def _delete(self, sha256: str) -> bool:
        return self.blobs.pop(sha256, None) is not None
