"""Data keys wrapped with a tenant's key: they open for that tenant and object only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.errors import ConfigError, StorageError
from roost.storage.keys import KEY_FILE, KeyRing


def test_a_wrapped_key_opens_for_its_tenant_and_object_only(tmp_path: Path) -> None:
    ring = KeyRing.open(tmp_path)
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    data_key = os.urandom(32)
    wrapped = ring.wrap("t1", "obj", data_key)
    assert data_key not in wrapped
    assert KeyRing.open(tmp_path).unwrap("t1", "obj", wrapped) == data_key
    for tenant, object_id in (("t2", "obj"), ("t1", "other")):
        with pytest.raises(StorageError, match="does not open"):
            ring.unwrap(tenant, object_id, wrapped)


def test_another_hub_key_opens_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wrapped = KeyRing.open(tmp_path / "a").wrap("t1", "obj", os.urandom(32))
    with pytest.raises(StorageError, match=KEY_FILE):
        KeyRing.open(tmp_path / "b").unwrap("t1", "obj", wrapped)


def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError, match="32 bytes"):
        KeyRing.open(tmp_path)
