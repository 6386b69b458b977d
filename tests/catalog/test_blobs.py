"""The content-addressed blob store: the on-disk store and its in-memory fake share a contract."""

from __future__ import annotations

import hashlib
import io
import stat
from pathlib import Path

import pytest

from roost.catalog import Blob, BlobStorage, BlobStore, MemoryBlobStore
from roost.catalog.blobs import CHUNK_SIZE
from roost.errors import CatalogError, NotFoundError


@pytest.fixture(params=["disk", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStorage:
    if request.param == "disk":
        return BlobStore(tmp_path / "blobs")
    return MemoryBlobStore()


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", bytes(range(256)) * 10, b"x" * (CHUNK_SIZE * 2 + 7)],
    ids=["empty", "small", "binary", "several-chunks"],
)
def test_put_names_the_blob_by_its_sha256(store: BlobStorage, data: bytes) -> None:
    blob = store.put(io.BytesIO(data))
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert store.exists(blob.sha256)
    with store.open(blob.sha256) as stream:
        assert stream.read() == data


def test_the_same_bytes_twice_are_one_blob(store: BlobStorage) -> None:
    assert store.put(io.BytesIO(b"same")) == store.put(io.BytesIO(b"same"))


def test_put_reads_a_file(store: BlobStorage, tmp_path: Path) -> None:
    source = tmp_path / "bundle.tar.gz"
    source.write_bytes(b"bundle bytes")
    assert store.put(source).sha256 == hashlib.sha256(b"bundle bytes").hexdigest()


def test_delete(store: BlobStorage) -> None:
    blob = store.put(io.BytesIO(b"gone soon"))
    assert store.delete(blob.sha256)
    assert not store.exists(blob.sha256)
    assert not store.delete(blob.sha256)
    with pytest.raises(NotFoundError):
        store.open(blob.sha256)


def test_a_source_over_the_budget_is_refused_and_not_stored(store: BlobStorage) -> None:
    with pytest.raises(CatalogError, match="larger than the limit of 10 bytes"):
        store.put(io.BytesIO(b"x" * 11), max_size=10)
    assert not store.exists(hashlib.sha256(b"x" * 11).hexdigest())
    assert store.put(io.BytesIO(b"x" * 10), max_size=10).size == 10


@pytest.mark.parametrize(
    "name",
    ["", "abc", "A" * 64, "g" * 64, "../" + "a" * 61, "a" * 65],
    ids=["empty", "short", "uppercase", "not-hex", "traversal", "long"],
)
def test_names_that_are_not_sha256_are_refused(store: BlobStorage, name: str) -> None:
    for call in (store.open, store.exists, store.delete):
        with pytest.raises(CatalogError, match="not a SHA-256 blob name"):
            call(name)


def test_a_missing_source_file_is_one_catalog_error(store: BlobStorage, tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot store a blob"):
        store.put(tmp_path / "missing")


def test_disk_layout_and_no_leftovers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = store.put(io.BytesIO(b"layout"))
    expected = tmp_path / "blobs" / "sha256" / blob.sha256[:2] / blob.sha256
    assert blob.path == expected == store.path(blob.sha256)
    assert expected.read_bytes() == b"layout"
    with pytest.raises(CatalogError):
        store.put(io.BytesIO(b"y" * 100), max_size=1)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_put_heals_a_damaged_blob_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = store.put(io.BytesIO(b"original"))
    assert blob.path is not None
    blob.path.write_bytes(b"damaged!")
    store.put(io.BytesIO(b"original"))
    assert blob.path.read_bytes() == b"original"
    assert not stat.S_IMODE(blob.path.stat().st_mode) & stat.S_IWOTH


@pytest.mark.parametrize(
    ("sha256", "size", "message"),
    [("a" * 64, -1, "cannot be -1 bytes"), ("xyz", 1, "not a SHA-256")],
)
def test_blob_values_are_validated(sha256: str, size: int, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Blob(sha256, size)
