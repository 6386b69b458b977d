"""The shares this device keeps for the fleet's store, and the commands that move them.

A device offers ``storage_quota_bytes`` of its disk (0, the default, offers nothing).
Each share is one file under ``DATA/shares/``, named by the hub's share id, written
atomically, with its BLAKE3 hash (as the hub gave it) in a ``.blake3`` file beside it.
A share is checked against that hash whenever it is read, so a bad disk never sends a
corrupt share as a good one.

Shares only ever move over HTTPS that the device starts, signed with its own key: the
hub asks (``share-fetch``, ``share-upload``) and the device calls back. No inbound port.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

from roost.agent import hubapi
from roost.atomic import write_atomic
from roost.errors import StorageError, ValidationError

_ID = re.compile(r"^[0-9a-f]{8,64}$")
_HASH = ".blake3"


class ShareStore:
    """Share files in one directory, within a quota, each checked on read."""

    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = root
        self.quota_bytes = quota_bytes

    def _path(self, share_id: str) -> Path:
        if not _ID.match(share_id):
            raise ValidationError(f"not a share id: {share_id!r}")
        return self.root / share_id

    def used_bytes(self) -> int:
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for p in self.root.iterdir() if _ID.match(p.name))

    def free_bytes(self) -> int:
        """What the quota still allows, capped by the free disk."""
        if self.quota_bytes <= 0:
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(self.root).free
        return max(0, min(self.quota_bytes - self.used_bytes(), disk))

    def put(self, share_id: str, data: bytes, expected_hash: str) -> None:
        """Store a share whose BLAKE3 hash must be ``expected_hash`` (hex)."""
        path = self._path(share_id)
        if blake3.blake3(data).hexdigest() != expected_hash:
            raise StorageError(f"share {share_id} does not match its hash; not stored")
        if len(data) > self.free_bytes() + (path.stat().st_size if path.exists() else 0):
            raise StorageError(
                f"share {share_id} ({len(data)} bytes) does not fit in this device's quota"
            )
        write_atomic(path, data, mode=0o600)
        write_atomic(path.with_name(share_id + _HASH), expected_hash, mode=0o600)

    def read(self, share_id: str) -> tuple[bytes, str]:
        """The share's bytes and ``""``, or ``b""`` and what is wrong with it: ``missing``,
        or ``corrupt`` (it no longer matches the hash it was stored with)."""
        path = self._path(share_id)
        try:
            data = path.read_bytes()
            expected = path.with_name(share_id + _HASH).read_text().strip()
        except FileNotFoundError:
            return b"", "missing"
        if blake3.blake3(data).hexdigest() != expected:
            return b"", "corrupt"
        return data, ""

    def delete(self, share_id: str) -> bool:
        path = self._path(share_id)
        existed = path.exists()
        for p in (path, path.with_name(share_id + _HASH)):
            p.unlink(missing_ok=True)
        return existed


HubCall = Callable[[], tuple[str, ssl.SSLContext, hubapi.Signer]]
"""(hub url, TLS context, signer) for the device's current key, read at each call."""


class ShareCommands:
    """The ``share-*`` commands: the hub asks, the device calls back over HTTPS."""

    def __init__(self, store: ShareStore, hub: HubCall, timeout: float = 60.0) -> None:
        self.store = store
        self._hub = hub
        self._timeout = timeout

    def metrics(self) -> dict[str, float | list[float]]:
        """What the heartbeat says about this device's storage."""
        return {
            "storage_quota": float(self.store.quota_bytes),
            "storage_free": float(self.store.free_bytes()),
        }

    async def fetch(self, args: dict[str, Any]) -> Any:
        share_id, size, expected = str(args["share"]), int(args["size"]), str(args["hash"])
        if size > self.store.free_bytes():
            raise StorageError(f"share {share_id} ({size} bytes) does not fit in the quota")
        url, context, signer = self._hub()
        # Blocking HTTPS and file writes: off the event loop.
        data = await asyncio.to_thread(
            hubapi.fetch,
            url,
            f"/v1/store/shares/{share_id}",
            context,
            signer,
            self._timeout,
            size,
        )
        await asyncio.to_thread(self.store.put, share_id, data, expected)
        return {"share": share_id, "bytes": len(data)}

    async def upload(self, args: dict[str, Any]) -> Any:
        share_id, path = str(args["share"]), str(args["path"])
        if not path.startswith(f"/v1/store/shares/{share_id}"):
            raise ValidationError(f"share-upload goes to /v1/store/shares/{share_id} only")
        data, problem = await asyncio.to_thread(self.store.read, share_id)
        if problem:
            # Not an error: the hub asked, and learns that this share needs repair.
            return {"share": share_id, "problem": problem}
        url, context, signer = self._hub()
        await asyncio.to_thread(
            hubapi.request, url, "PUT", path, context, data, signer, self._timeout
        )
        return {"share": share_id, "bytes": len(data)}

    async def delete(self, args: dict[str, Any]) -> Any:
        share_id = str(args["share"])
        return {"share": share_id, "deleted": await asyncio.to_thread(self.store.delete, share_id)}
