"""Shares between the hub and devices: the devices' routes, and the hub's side of moving.

Devices call ``GET /v1/store/shares/ID`` to fetch a share the hub asked them to keep
(spooled under ``DATA/store/out/OBJECT/INDEX``) and ``PUT /v1/store/shares/ID?get=TOKEN``
to hand one back for a get (into ``DATA/store/in/TOKEN/``). Both are signed by the
device's own key and answer only that device's shares. ``collect`` asks devices for
shares until k have arrived; ``Spool`` writes an object's share files as it is encoded.

Shares stream both ways in chunks of about a MiB; neither side holds a whole share. A
``PUT`` is signed over the body's declared BLAKE3 hash, not the body (which the
signature would otherwise need whole, first): the hub refuses it unless that hash and
the declared size are the share's, and keeps the body only if it hashes to them. So a
device still writes only its own shares, and a tampered body is refused and marked.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import blake3
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from roost.api import DeviceDep, HubContext, HubDep, signed_by_device
from roost.db import utcnow
from roost.errors import NotFoundError, StorageError, ValidationError
from roost.events.store import hub_event, insert_events
from roost.fleet.models import Device
from roost.pki.signing import DIGEST_HEADER, signed_digest
from roost.storage.codec import EncodedSegment, Share
from roost.storage.models import ObjectRow, ShareRow
from roost.storage.objects import Placed, mark, own_share, store_dir
from roost.storage.transfer import Answer, ask, ask_all, online, timeout_for

router = APIRouter()  # under /v1, through roost.storage.routes

_TOKEN_RE = re.compile(r"^[0-9a-f]{16}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
# A share moves in chunks of about this many bytes (file reads, thread hops).
CHUNK = 1 << 20


class ShareFile(FileResponse):
    """A spooled share sent in 1 MiB reads (Starlette's 64 KiB cost a thread hop each)."""

    chunk_size = CHUNK


@router.get("/store/shares/{share_id}", tags=["devices"])
async def fetch_share(share_id: str, device: DeviceDep, hub: HubDep) -> FileResponse:
    """A share the hub asked this device to keep (while its put is in progress)."""
    share = await run_in_threadpool(own_share, hub, share_id, device.id)
    path = store_dir(hub) / "out" / share.object_id / str(share.index)
    if not path.exists():
        raise NotFoundError(f"share {share_id} is no longer waiting on the hub")
    return ShareFile(path, media_type="application/octet-stream")


async def streaming_device(request: Request, hub: HubDep) -> Device:
    """The device whose own key signed this streamed upload; revoked devices are refused.

    Like ``DeviceDep``, but the signature covers the body's declared BLAKE3 hash
    (``DIGEST_HEADER``) instead of the body, which is left unread for the route to stream
    and check against that hash.
    """
    declared = request.headers.get(DIGEST_HEADER, "")
    return await signed_by_device(request, hub, signed_digest(declared))


StreamingDeviceDep = Annotated[Device, Depends(streaming_device)]


@router.put("/store/shares/{share_id}", tags=["devices"])
async def upload_share(
    share_id: str, get: str, request: Request, device: StreamingDeviceDep, hub: HubDep
) -> dict[str, Any]:
    """A share this device keeps, streamed for the get ``get`` that asked for it: kept in
    the get's inbox only if it is the share's size and hashes to the share's hash."""
    share = await run_in_threadpool(own_share, hub, share_id, device.id)
    inbox = store_dir(hub) / "in" / get
    if not _TOKEN_RE.match(get) or not inbox.is_dir():
        raise NotFoundError(f"no get {get!r} is waiting for shares")
    declared = request.headers.get(DIGEST_HEADER, "")
    length = request.headers.get("content-length", "")
    if not _HASH_RE.match(declared) or not length.isdigit():
        raise ValidationError(f"a share upload needs content-length and {DIGEST_HEADER}")
    if declared != share.hash or int(length) != share.size:
        why = f"its device sent {length} bytes hashed {declared}"
        await run_in_threadpool(mark, hub, {share_id: ("corrupt", why)})
        raise StorageError(f"share {share_id} is not the one the hub stored; marked corrupt")
    inbox_file = await run_in_threadpool(InboxFile, inbox, share_id)
    try:
        await _receive_share(request, inbox_file, share.size)
        if not await run_in_threadpool(inbox_file.keep, share.hash):
            why = "what its device sent did not match its hash"
            await run_in_threadpool(mark, hub, {share_id: ("corrupt", why)})
            raise StorageError(f"share {share_id} does not match its hash; marked corrupt")
    finally:
        await run_in_threadpool(inbox_file.discard)
    return {"share": share_id, "bytes": share.size}


async def _receive_share(request: Request, inbox_file: InboxFile, size: int) -> None:
    """Stream the body into ``inbox_file`` about a MiB per thread hop; stop once the get is
    over (its inbox gone: it had k shares without this one)."""
    batch: list[bytes] = []
    pending = 0
    try:
        async for chunk in request.stream():
            batch.append(chunk)
            pending += len(chunk)
            if pending >= CHUNK:
                await run_in_threadpool(inbox_file.write, batch)
                batch, pending = [], 0
        await run_in_threadpool(inbox_file.write, batch)
    except ClientDisconnect as err:
        # The device stopped: it found its share rotten on the way, and answers so.
        raise ValidationError(f"the upload of share {inbox_file.name} was cut off") from err
    if inbox_file.size != size:
        raise ValidationError(
            f"share {inbox_file.name} came with {inbox_file.size} of {size} bytes"
        )


class InboxFile:
    """A share arriving for a get, hashed as written; ``keep`` renames it into the inbox if
    it matches. Not fsynced: a get's inbox is scratch, gone when the get ends, and the
    share stays on its device."""

    def __init__(self, inbox: Path, share_id: str) -> None:
        self.name, self.path = share_id, inbox / share_id
        self._tmp = inbox / f".{share_id}.part"
        self._file = self._tmp.open("wb")
        self._hash = blake3.blake3()
        self.size = 0

    def write(self, chunks: list[bytes]) -> None:
        if not self.path.parent.is_dir():
            raise NotFoundError(f"the get that asked for share {self.name} is over")
        for chunk in chunks:
            self._hash.update(chunk)
            self._file.write(chunk)
            self.size += len(chunk)

    def keep(self, expected_hash: str) -> bool:
        self._file.close()
        if self._hash.hexdigest() != expected_hash:
            return False
        os.replace(self._tmp, self.path)
        return True

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class ProblemReport(BaseModel):
    problem: Literal["missing", "corrupt"]


@router.post("/store/shares/{share_id}/problem", tags=["devices"])
async def report_share(
    share_id: str, body: ProblemReport, device: DeviceDep, hub: HubDep
) -> dict[str, Any]:
    """A device's scrub found one of its shares missing or corrupt: marked, so the repair
    loop rebuilds it elsewhere, and a ``roost.store.share-corrupt`` (or ``-missing``)
    event for rules to act on (once per share and problem)."""
    share = await run_in_threadpool(own_share, hub, share_id, device.id)
    if share.state == body.problem:  # reported by an earlier scrub, not repaired yet
        return {"share": share_id, "state": body.problem}
    why = f"device {device.id} found it {body.problem} when scrubbing"
    await run_in_threadpool(mark, hub, {share_id: (body.problem, why)})

    def record() -> None:
        with hub.db.session() as session:
            obj = session.get(ObjectRow, share.object_id)
            if obj is None:
                return
            data = {"bucket": obj.bucket, "name": obj.name, "share": share_id, "index": share.index}
            kind = f"roost.store.share-{body.problem}"
            insert_events(session, [hub_event(obj.tenant_id, kind, device.id, utcnow(), data)])

    await run_in_threadpool(record)
    return {"share": share_id, "state": body.problem}


class SharesUnavailableError(StorageError):
    """Fewer than k of an object's shares could be read; the message names the rest."""

    status = 503


def need_k(what: str, k: int, arrived: dict[int, Path], problems: dict[int, str]) -> None:
    """Raise ``SharesUnavailableError`` naming each missing share unless k arrived."""
    if len(arrived) < k:
        missing = "; ".join(f"share {i}: {why}" for i, why in sorted(problems.items()))
        raise SharesUnavailableError(
            f"{what} cannot be read: {len(arrived)} of the {k} shares it needs arrived ({missing})"
        )


class Spool:
    """Share files of one object being encoded: one file per share index, hashed as written."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.files: list[BinaryIO] = [(root / str(i)).open("wb") for i in range(n)]
        self.hashes = [blake3.blake3() for _ in range(n)]
        self.sizes = [0] * n

    def write(self, segments: list[EncodedSegment]) -> None:
        for segment in segments:
            self.add(segment.shares)

    def add(self, shares: Iterable[Share]) -> None:
        for share in shares:
            self.files[share.index].write(share.data)
            self.hashes[share.index].update(share.data)
            self.sizes[share.index] += len(share.data)

    def close(self) -> None:
        for f in self.files:
            f.close()


async def delete_shares(hub: HubContext, tenant_id: str, shares: list[Placed]) -> None:
    """Ask devices to drop shares; best effort (an offline device keeps an orphan)."""
    timeout = hub.settings.command_timeout_s
    await ask_all(
        hub,
        tenant_id,
        [(device, "share-delete", {"share": share}, timeout) for device, share in shares],
    )


async def collect(
    hub: HubContext, tenant_id: str, k: int, shares: list[ShareRow], token: str
) -> tuple[dict[int, Path], dict[int, str]]:
    """Ask devices to upload their shares for the get ``token``, k + 1 at a time, another
    for each that fails, until k have arrived (the rest are not waited for) or none are
    left. Answers the share files by index, and why each other share did not come."""
    inbox = store_dir(hub) / "in" / token
    problems = {s.index: f"it is {s.state} on device {s.device_id}" for s in shares}
    up = await run_in_threadpool(online, hub, [s.device_id for s in shares])
    waiting: deque[ShareRow] = deque()
    for s in shares:
        if s.state == "stored" and s.device_id in up:
            waiting.append(s)
            del problems[s.index]
        elif s.state == "stored":
            problems[s.index] = f"device {s.device_id} is offline"
    arrived: dict[int, Path] = {}
    bad: dict[str, tuple[str, str]] = {}
    running: dict[asyncio.Task[Answer], ShareRow] = {}
    try:
        while len(arrived) < k and (running or waiting):
            while waiting and len(arrived) + len(running) < k + 1:
                s = waiting.popleft()
                args = {"share": s.id, "path": f"/v1/store/shares/{s.id}?get={token}"}
                asked = ask(
                    hub, tenant_id, s.device_id, "share-upload", args, timeout_for(hub, s.size)
                )
                running[asyncio.create_task(asked)] = s
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                share, answer = running.pop(task), task.result()
                result = answer.result if isinstance(answer.result, dict) else {}
                problem = str(result.get("problem", ""))
                if problem:
                    bad[share.id] = (problem, "its device found it so when asked for it")
                    problems[share.index] = f"it is {problem} on device {share.device_id}"
                elif answer.ok and (inbox / share.id).exists():
                    arrived[share.index] = inbox / share.id
                else:
                    problems[share.index] = answer.error or "it did not arrive"
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if bad:
            await run_in_threadpool(mark, hub, bad)
    return arrived, problems
