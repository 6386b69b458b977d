"""The shares this device keeps for the fleet's store, and the commands that move them.

A device offers ``storage_quota_bytes`` of its disk (0, the default, offers nothing).
Each share is one file under ``DATA/shares/``, named by the hub's share id, written
atomically, with its BLAKE3 hash (as the hub gave it) in a ``.blake3`` file beside it.
A share is checked against that hash whenever it is read, so a bad disk never sends a
corrupt share as a good one.

Shares only ever move over HTTPS that the device starts, signed with its own key: the
hub asks (``share-fetch``, ``share-upload``) and the device calls back. No inbound port.
Both ways a share streams through one buffer of ``hubapi.CHUNK`` bytes, hashed on the
way, so a device holds a chunk of it in memory, never the share (64 MiB for a 256 MiB
object at 4-of-8; a Pi has little more to spare).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3

from roost.agent import hubapi
from roost.agent.commands import CommandTable
from roost.atomic import write_atomic
from roost.errors import RoostError, StorageError, ValidationError

log = logging.getLogger(__name__)

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
        """Store a whole share whose BLAKE3 hash must be ``expected_hash`` (hex)."""
        writer = self.receive(share_id, len(data), expected_hash)
        try:
            writer.write(data)
            writer.commit()
        finally:
            writer.discard()

    def receive(self, share_id: str, size: int, expected_hash: str) -> ShareWriter:
        """A writer for a share arriving in chunks: nothing is kept unless ``commit`` finds
        exactly ``size`` bytes that hash to ``expected_hash``."""
        path = self._path(share_id)
        if size > self.free_bytes() + (path.stat().st_size if path.exists() else 0):
            raise StorageError(f"share {share_id} ({size} bytes) does not fit in the quota")
        return ShareWriter(path, size, expected_hash)

    def open(self, share_id: str) -> ShareReader | None:
        """A reader streaming the share and checking it on the way; None if it is missing."""
        path = self._path(share_id)
        try:
            expected = path.with_name(share_id + _HASH).read_text().strip()
            return ShareReader(path, path.stat().st_size, expected)
        except FileNotFoundError:
            return None

    def read(self, share_id: str) -> tuple[bytes, str]:
        """The whole share and ``""``, or ``b""`` and what is wrong with it: ``missing``, or
        ``corrupt`` (it no longer matches the hash it was stored with). Only for small
        shares: a share is sent with ``open`` and streamed."""
        reader = self.open(share_id)
        if reader is None:
            return b"", "missing"
        try:
            return b"".join(bytes(chunk) for chunk in reader.chunks()), ""
        except RottenShareError:
            return b"", "corrupt"

    def check(self, share_id: str) -> str:
        """Re-hash a share without holding it in memory: ``""``, ``missing`` or ``corrupt``."""
        path = self._path(share_id)
        try:
            expected = path.with_name(share_id + _HASH).read_text().strip()
            actual = blake3.blake3(max_threads=1).update_mmap(path).hexdigest()
        except FileNotFoundError:
            return "missing"
        return "" if actual == expected else "corrupt"

    def scrub(self) -> dict[str, str]:
        """Every share found missing or corrupt: {share id: problem}. A share counts from
        the moment its hash file is written (after its bytes), so one arriving is not
        taken for missing."""
        if not self.root.exists():
            return {}
        ids = sorted(p.name[: -len(_HASH)] for p in self.root.glob("*" + _HASH))
        found = {share_id: self.check(share_id) for share_id in ids if _ID.match(share_id)}
        return {share_id: problem for share_id, problem in found.items() if problem}

    def delete(self, share_id: str) -> bool:
        path = self._path(share_id)
        existed = path.exists()
        for p in (path, path.with_name(share_id + _HASH)):
            p.unlink(missing_ok=True)
        return existed


EVICT_EVERY = 8 << 20


def _advise(fd: int, upto: int, advice: int) -> int:
    """``posix_fadvise`` over the first ``upto`` bytes of a file (0: all of it); answers
    ``upto``. With ``POSIX_FADV_DONTNEED`` Linux evicts the clean pages of the range and
    starts writing back the dirty ones, which a later call then evicts. It does not
    wait, and it promises nothing: durability is a writer's fsync."""
    os.posix_fadvise(fd, 0, upto, advice)
    return upto


class RottenShareError(StorageError):
    """A share that no longer matches its hash, found while it was being sent."""


class ShareReader:
    """A stored share read in chunks through one buffer, hashed on the way. The last
    chunk is only handed out once the whole share matched its hash, so a rotten share
    never reaches the hub whole: ``chunks`` raises ``RottenShareError`` instead."""

    def __init__(self, path: Path, size: int, expected_hash: str) -> None:
        self.path, self.size, self.expected = path, size, expected_hash

    def chunks(self, chunk_size: int = hubapi.CHUNK) -> Iterator[memoryview]:
        """Views of one reused buffer: send each before asking for the next. What was read
        leaves the page cache as it goes (a share is cold data, read once in a while)."""
        buffer = memoryview(bytearray(chunk_size))
        digest = blake3.blake3()
        done = count = evicted = 0
        with self.path.open("rb", buffering=0) as f:
            _advise(f.fileno(), 0, os.POSIX_FADV_SEQUENTIAL)
            while done < self.size:
                count = f.readinto(buffer[: min(chunk_size, self.size - done)])
                if not count:
                    break
                digest.update(buffer[:count])
                done += count
                if done - evicted >= EVICT_EVERY:
                    evicted = _advise(f.fileno(), done, os.POSIX_FADV_DONTNEED)
                if done < self.size:
                    yield buffer[:count]
            if done != self.size or f.read(1) or digest.hexdigest() != self.expected:
                raise RottenShareError(f"share {self.path.name} does not match its hash")
            if count:
                yield buffer[:count]


class ShareWriter:
    """A share written to a temporary file as it arrives, hashed on the way; ``commit``
    checks it and renames it into place, ``discard`` (always call it) drops what is left.

    Every ``EVICT_EVERY`` bytes the kernel is told to start writing what came since, and to
    drop from the page cache what came before that it has written by now: the disk works
    while the share arrives instead of all at once in ``commit``'s fsync, and a share
    occupies a few windows of page cache, not its whole size. A small device's memory does
    not fill with a big share's pages, and the pages freed are the ones the next window
    reuses. ``commit`` still fsyncs before anything is kept.
    """

    def __init__(self, path: Path, size: int, expected_hash: str) -> None:
        self.path, self.size, self.expected = path, size, expected_hash
        self._tmp = path.with_name(f".{path.name}.part")
        self._file = self._tmp.open("wb", buffering=0)
        self._hash = blake3.blake3()
        self._written = 0
        self._flushed = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._written += len(chunk)
        if self._written > self.size:
            raise StorageError(f"share {self.path.name} is longer than the {self.size} bytes said")
        self._hash.update(chunk)
        try:
            view = memoryview(chunk)
            while view:  # an unbuffered write may take part of it
                view = view[self._file.write(view) :]
            if self._written - self._flushed >= EVICT_EVERY:
                self._flushed = _advise(self._file.fileno(), self._written, os.POSIX_FADV_DONTNEED)
        except OSError as err:  # not the network's fault: say so
            raise StorageError(f"cannot write share {self.path.name}: {err}") from err

    def commit(self) -> None:
        os.fsync(self._file.fileno())
        self._file.close()
        if self._written != self.size or self._hash.hexdigest() != self.expected:
            raise StorageError(f"share {self.path.name} does not match its size and hash")
        os.replace(self._tmp, self.path)
        write_atomic(self.path.with_name(self.path.name + _HASH), self.expected, mode=0o600)

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


HubCall = Callable[[], tuple[str, ssl.SSLContext, hubapi.Signer]]
"""(hub url, TLS context, signer) for the device's current key, read at each call."""


class ShareCommands:
    """The ``share-*`` commands: the hub asks, the device calls back over HTTPS."""

    def __init__(self, store: ShareStore, hub: HubCall, timeout: float = 60.0) -> None:
        self.store = store
        self._hub = hub
        self._timeout = timeout

    def register(self, table: CommandTable) -> None:
        table.register("share-fetch", self.fetch)
        table.register("share-upload", self.upload)
        table.register("share-check", self.check)
        table.register("share-delete", self.delete)

    def metrics(self) -> dict[str, float | list[float]]:
        """What the heartbeat says about this device's storage."""
        return {
            "storage_quota": float(self.store.quota_bytes),
            "storage_free": float(self.store.free_bytes()),
        }

    async def fetch(self, args: dict[str, Any]) -> Any:
        share_id, size, expected = str(args["share"]), int(args["size"]), str(args["hash"])
        writer = self.store.receive(share_id, size, expected)
        url, context, signer = self._hub()
        try:
            # Blocking HTTPS and file writes: off the event loop. Streamed to disk.
            await asyncio.to_thread(
                hubapi.fetch,
                url,
                f"/v1/store/shares/{share_id}",
                context,
                signer,
                self._timeout,
                size,
                writer.write,
            )
            await asyncio.to_thread(writer.commit)
        finally:
            writer.discard()
        return {"share": share_id, "bytes": size}

    async def upload(self, args: dict[str, Any]) -> Any:
        share_id, path = str(args["share"]), str(args["path"])
        if not path.startswith(f"/v1/store/shares/{share_id}"):
            raise ValidationError(f"share-upload goes to /v1/store/shares/{share_id} only")
        reader = await asyncio.to_thread(self.store.open, share_id)
        # Not errors: the hub asked, and learns that this share needs repair.
        if reader is None:
            return {"share": share_id, "problem": "missing"}
        url, context, signer = self._hub()
        try:
            # Blocking HTTPS and file reads: off the event loop. Streamed from disk.
            await asyncio.to_thread(
                hubapi.upload,
                url,
                path,
                context,
                signer,
                reader.size,
                reader.expected,
                reader.chunks(),
                self._timeout,
            )
        except RottenShareError:
            return {"share": share_id, "problem": "corrupt"}
        return {"share": share_id, "bytes": reader.size}

    async def check(self, args: dict[str, Any]) -> Any:
        """Re-hash a share on demand: ``problem`` is "", "missing" or "corrupt"."""
        share_id = str(args["share"])
        problem = await asyncio.to_thread(self.store.check, share_id)
        return {"share": share_id, "problem": problem}

    async def scrub(self) -> dict[str, str]:
        """Re-hash every share and report each bad one to the hub, which marks it for
        repair (``POST /v1/store/shares/ID/problem``); answers what was found."""
        found = await asyncio.to_thread(self.store.scrub)
        url, context, signer = self._hub()
        for share_id, problem in found.items():
            try:
                await asyncio.to_thread(
                    hubapi.request,
                    url,
                    "POST",
                    f"/v1/store/shares/{share_id}/problem",
                    context,
                    {"problem": problem},
                    signer,
                    self._timeout,
                )
            except RoostError as err:  # the next scrub tries again
                log.warning("could not report share %s as %s: %s", share_id, problem, err)
        return found

    async def delete(self, args: dict[str, Any]) -> Any:
        share_id = str(args["share"])
        return {"share": share_id, "deleted": await asyncio.to_thread(self.store.delete, share_id)}
