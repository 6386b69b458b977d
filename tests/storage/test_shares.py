"""The agent's share store: atomic files in a quota, each checked against its hash on read."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

from roost.agent.shares import ShareStore
from roost.errors import StorageError, ValidationError

SHARE = "0123456789abcdef"


def _hash(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_a_share_is_kept_and_read_back(tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=1000)
    store.put(SHARE, b"x" * 100, _hash(b"x" * 100))
    assert store.read(SHARE) == (b"x" * 100, "")
    assert store.used_bytes() == 100
    assert store.free_bytes() == 900
    assert store.delete(SHARE)
    assert not store.delete(SHARE)
    assert store.read(SHARE) == (b"", "missing")


def test_a_share_that_does_not_match_its_hash_is_not_stored(tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=1000)
    with pytest.raises(StorageError, match="does not match its size and hash"):
        store.put(SHARE, b"abc", _hash(b"abd"))
    assert store.used_bytes() == 0
    assert list((tmp_path / "shares").iterdir()) == [], "nothing left behind"


def test_a_share_arrives_in_chunks_and_is_kept_only_whole(tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=1000)
    data = bytes(range(200))
    writer = store.receive(SHARE, len(data), _hash(data))
    for i in range(0, 200, 64):
        writer.write(data[i : i + 64])
    writer.commit()
    writer.discard()
    assert store.read(SHARE) == (data, "")

    short = store.receive("fedcba9876543210", len(data), _hash(data))
    short.write(data[:100])
    with pytest.raises(StorageError, match="size and hash"):
        short.commit()
    short.discard()
    long = store.receive("fedcba9876543210", 10, _hash(data))
    with pytest.raises(StorageError, match="longer than the 10 bytes"):
        long.write(data)
    long.discard()
    assert store.read("fedcba9876543210") == (b"", "missing")
    assert sorted(p.name for p in (tmp_path / "shares").iterdir()) == [SHARE, SHARE + ".blake3"]


def test_a_share_corrupted_on_disk_is_refused_on_read(tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=1000)
    store.put(SHARE, b"abc", _hash(b"abc"))
    (tmp_path / "shares" / SHARE).write_bytes(b"abd")
    assert store.read(SHARE) == (b"", "corrupt")


def test_the_quota_bounds_what_a_device_takes(tmp_path: Path) -> None:
    none = ShareStore(tmp_path / "none", quota_bytes=0)
    assert none.free_bytes() == 0
    with pytest.raises(StorageError, match="quota"):
        none.put(SHARE, b"a", _hash(b"a"))
    small = ShareStore(tmp_path / "small", quota_bytes=10)
    small.put(SHARE, b"a" * 10, _hash(b"a" * 10))
    with pytest.raises(StorageError, match="quota"):
        small.put("fedcba9876543210", b"b", _hash(b"b"))


@pytest.mark.parametrize("bad", ["../etc", "", "ABCDEF0123", "x" * 10])
def test_share_ids_cannot_name_other_files(tmp_path: Path, bad: str) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=1000)
    with pytest.raises(ValidationError):
        store.read(bad)
    with pytest.raises(ValidationError):
        store.put(bad, b"a", _hash(b"a"))


def test_a_scrub_names_the_shares_gone_bad_and_not_one_still_arriving(tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=10_000)
    good, rotten, lost = "aa" * 8, "bb" * 8, "cc" * 8
    for share_id in (good, rotten, lost):
        store.put(share_id, share_id.encode() * 10, _hash(share_id.encode() * 10))
    (tmp_path / "shares" / rotten).write_bytes(b"x" * 160)
    (tmp_path / "shares" / lost).unlink()
    # Bytes renamed into place but the hash file not yet written: not counted yet.
    (tmp_path / "shares" / ("dd" * 8)).write_bytes(b"arriving")
    assert store.scrub() == {rotten: "corrupt", lost: "missing"}
    assert store.check(good) == ""
    assert ShareStore(tmp_path / "none", quota_bytes=0).scrub() == {}
