"""Wrapping objects' data keys with their tenant's key.

The hub keeps one 32-byte key file in its data dir (``storage.key``, mode 0600, made on
first use). Each tenant's key is derived from it with HKDF-SHA256 (the tenant id as
``info``), and an object's data key is sealed with AES-256-GCM under the tenant's key,
the tenant and the object id bound in as associated data: a wrapped key copied to
another object or tenant does not open. A database dump alone reveals no data key;
hubs sharing one database share the key file, as they share ``pki/``. Losing the key
file loses every object: back it up with ``pki/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from roost.atomic import write_private
from roost.errors import ConfigError, StorageError

KEY_FILE = "storage.key"
_NONCE = 12


class KeyRing:
    """The hub's storage key, and the tenant keys that wrap data keys."""

    def __init__(self, hub_key: bytes) -> None:
        if len(hub_key) != 32:
            raise ConfigError(f"the storage key is 32 bytes, not {len(hub_key)}")
        self._hub_key = hub_key

    @classmethod
    def open(cls, data_dir: Path) -> KeyRing:
        path = data_dir / KEY_FILE
        if not path.exists():
            write_private(path, os.urandom(32))
        return cls(path.read_bytes())

    def _tenant(self, tenant_id: str) -> AESGCM:
        info = f"roost-store/tenant/{tenant_id}".encode()
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._hub_key)
        return AESGCM(key)

    def wrap(self, tenant_id: str, object_id: str, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        bound = f"{tenant_id}/{object_id}".encode()
        return nonce + self._tenant(tenant_id).encrypt(nonce, data_key, bound)

    def unwrap(self, tenant_id: str, object_id: str, wrapped: bytes) -> bytes:
        bound = f"{tenant_id}/{object_id}".encode()
        try:
            return self._tenant(tenant_id).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], bound)
        except InvalidTag as err:
            raise StorageError(
                f"the data key of object {object_id} does not open with this hub's "
                f"{KEY_FILE}: restore the key file the object was stored with"
            ) from err
