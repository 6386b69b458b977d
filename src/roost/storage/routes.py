"""The store's HTTP API for people (``/v1/store``); the devices' share routes, included
here, are in ``exchange.py``.

A put streams the request body through the codec (never the whole object in memory),
spools each share index to one file under ``DATA/store/out/OBJECT/``, places the shares
(one per device that offers space), and asks each device to fetch its share. The object
turns ``complete`` once at least the repair threshold of shares is stored, and only then
replaces an older object of the same name; until then it is ``pending`` and invisible.

A get asks k + 1 online devices holding shares to upload theirs to
``DATA/store/in/TOKEN/``, another for each that fails, checks each share file against
its hash as it arrives, and streams the plaintext decoded from the first k to arrive.
Fewer than k is a ``SharesUnavailableError`` (``exchange.need_k``) naming every missing
share and why.

A share file holds one share index of every segment, one after the other; its hash
(BLAKE3 of the file) is on the share row, and the manifest has each piece's hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.requests import ClientDisconnect

from roost.access import Principal
from roost.api import HubContext, HubDep, PrincipalDep
from roost.errors import QuotaExceededError, StorageError, ValidationError
from roost.storage import exchange, repair
from roost.storage.codec import CodecParams, Decoder, Encoder, Share
from roost.storage.erasure import tune_malloc
from roost.storage.exchange import Spool, collect, delete_shares, need_k
from roost.storage.manifest import Manifest
from roost.storage.models import ObjectRow
from roost.storage.objects import (
    ObjectView,
    Placed,
    begin_put,
    complete_object,
    drop,
    finish_put,
    mark,
    placed_on,
    record_placement,
    release,
    shares_of,
    store_dir,
    to_read,
    view,
)
from roost.storage.placement import StorageNode, choose_code, place, repair_threshold
from roost.storage.quota import check_put
from roost.storage.transfer import ask_all, fetch_all, online, storage_nodes
from roost.storage.usage import router as usage_router

router = APIRouter(prefix="/v1")
# The devices' share routes first: /store/shares/ID must not be taken for a bucket's object.
router.include_router(exchange.router)
router.include_router(repair.router)
router.include_router(usage_router)

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")


def _check_names(bucket: str, name: str) -> None:
    if not BUCKET_RE.match(bucket) or bucket == "shares":
        raise ValidationError(f"bucket {bucket!r}: use a-z, 0-9, '.', '_', '-' (not 'shares')")
    if not NAME_RE.match(name):
        raise ValidationError(f"object name {name!r}: use A-Z, a-z, 0-9, '.', '_', '-'")


# -- people: objects ----------------------------------------------------------------------


@router.put("/store/{bucket}/{name}", tags=["store"], status_code=201)
async def put_object(
    bucket: str,
    name: str,
    request: Request,
    principal: PrincipalDep,
    hub: HubDep,
    k: int | None = None,
    n: int | None = None,
) -> ObjectView:
    """Store the request body as ``bucket/name``: sealed, coded and spread over devices.

    Refused (413) if it would take the tenant past its quota, before any share is sent:
    at once when its ``content-length`` does not fit, else as soon as what arrived does
    not. The rest of a refused body is read and dropped, so the client gets the answer.
    """
    _check_names(bucket, name)
    tune_malloc()  # once the store is used: see tune_malloc
    nodes = await run_in_threadpool(storage_nodes, hub, principal.tenant_id)
    code = choose_code(len(nodes), (k, n) if k is not None and n is not None else None)
    what = f"{bucket}/{name}"
    body = request.stream()
    try:
        object_id, leftovers, quota, usage = await run_in_threadpool(
            begin_put, hub, principal, bucket, name, _declared(request)
        )
    except QuotaExceededError:
        await _discard(body)
        raise
    await delete_shares(hub, principal.tenant_id, leftovers)
    encoder = Encoder(CodecParams(*code))
    root = store_dir(hub) / "out" / object_id
    try:
        spool = await run_in_threadpool(Spool, root, code[1])
        await _receive(
            what, body, encoder, spool, lambda got: check_put(what, got, quota, usage, so_far=True)
        )
        return await _place(hub, principal, what, object_id, encoder, spool, nodes)
    except QuotaExceededError:
        await _discard(body)
        await run_in_threadpool(release, hub, object_id, True)
        raise
    except Exception:
        await run_in_threadpool(release, hub, object_id, False)
        raise
    finally:
        await run_in_threadpool(shutil.rmtree, root, True)


async def _receive(
    what: str,
    body: AsyncIterator[bytes],
    encoder: Encoder,
    spool: Spool,
    fits: Callable[[int], None],
) -> None:
    """Code the body into the spool; ``fits(bytes so far)`` raises once they pass the
    tenant's quota, before the rest is read.

    The codec and the disk block, so a worker thread codes about a MiB at a time (one
    thread hop per MiB, not per read of the socket, ~64 KiB) while the next MiB is read:
    one batch in flight, so the encoder sees the chunks in order.
    """
    received = 0
    batch: list[bytes] = []
    pending = 0
    coding: asyncio.Future[None] | None = None

    def code(chunks: list[bytes], last: bool) -> None:
        for chunk in chunks:
            spool.write(encoder.feed(chunk))
        if last:
            spool.write(encoder.finish())

    try:
        async for chunk in body:
            received += len(chunk)
            fits(received)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= exchange.CHUNK:
                if coding is not None:
                    await coding
                coding = asyncio.ensure_future(run_in_threadpool(code, batch, False))
                batch, pending = [], 0
        if coding is not None:
            await coding
        await run_in_threadpool(code, batch, True)
    except ClientDisconnect as err:
        raise ValidationError(
            f"the upload of {what} was cut off; it stays pending until a retry"
        ) from err
    finally:
        if coding is not None:  # the spool is closed only once its thread is done with it
            await asyncio.wait([coding])
        await run_in_threadpool(spool.close)


async def _place(
    hub: HubContext,
    principal: Principal,
    what: str,
    object_id: str,
    encoder: Encoder,
    spool: Spool,
    nodes: list[StorageNode],
) -> ObjectView:
    """Place the spooled shares, have the devices fetch them, and complete the object if
    enough of them are stored."""
    manifest = encoder.manifest
    size = max(spool.sizes[: manifest.n])
    placement = place(object_id, nodes, manifest.n, size)
    rows = await run_in_threadpool(
        record_placement,
        hub,
        principal,
        object_id,
        encoder,
        placement,
        spool.sizes,
        [h.hexdigest() for h in spool.hashes],
    )
    answers = await fetch_all(hub, principal.tenant_id, rows)
    threshold = repair_threshold(manifest.k, manifest.n)
    stored, to_delete, why = await run_in_threadpool(
        finish_put,
        hub,
        principal,
        object_id,
        dict(zip([r.id for r in rows], answers, strict=True)),
        threshold,
    )
    await delete_shares(hub, principal.tenant_id, to_delete)
    if stored is None:
        raise StorageError(f"{what} was not stored: {why}")
    return stored


def _declared(request: Request) -> int | None:
    """The body's size, if the client said it (a chunked upload does not)."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


async def _discard(body: AsyncIterator[bytes]) -> None:
    """Read what is left of a refused upload: a client still sending would otherwise see
    its connection reset instead of the answer."""
    with contextlib.suppress(ClientDisconnect):
        async for _chunk in body:
            continue


@router.get("/store", tags=["store"])
async def list_objects(principal: PrincipalDep, hub: HubDep, bucket: str = "") -> list[ObjectView]:
    """The tenant's complete objects (of one bucket, if given)."""

    def run() -> list[ObjectView]:
        with hub.db.session() as session:
            query = select(ObjectRow).where(
                ObjectRow.tenant_id == principal.tenant_id, ObjectRow.state == "complete"
            )
            if bucket:
                query = query.where(ObjectRow.bucket == bucket)
            rows = session.scalars(query.order_by(ObjectRow.bucket, ObjectRow.name)).all()
            return [view(row) for row in rows]

    return await run_in_threadpool(run)


@router.get("/store/{bucket}/{name}/stat", tags=["store"])
async def stat_object(
    bucket: str, name: str, principal: PrincipalDep, hub: HubDep, check: bool = False
) -> ObjectView:
    """The object, where each of its shares lives, and its health; with ``check``, every
    online device holding a share re-hashes it first, and what it finds is recorded."""
    if check:
        await _check_shares(hub, principal, bucket, name)

    def run() -> ObjectView:
        with hub.db.session() as session:
            obj = complete_object(session, principal, bucket, name)
            shares = shares_of(session, obj.id)
            return view(obj, shares, online(hub, [s.device_id for s in shares]))

    return await run_in_threadpool(run)


async def _check_shares(hub: HubContext, principal: Principal, bucket: str, name: str) -> None:
    def load() -> list[Placed]:
        with hub.db.session() as session:
            obj = complete_object(session, principal, bucket, name)
            return placed_on(shares_of(session, obj.id))

    placed = await run_in_threadpool(load)
    timeout = hub.settings.command_timeout_s
    asks = [(device, "share-check", {"share": share}, timeout) for device, share in placed]
    found: dict[str, tuple[str, str]] = {}
    for (_, share), answer in zip(
        placed, await ask_all(hub, principal.tenant_id, asks), strict=True
    ):
        if answer.ok and isinstance(answer.result, dict):
            problem = str(answer.result.get("problem", ""))
            why = f"its device found it {problem} when checked" if problem else ""
            found[share] = (problem or "stored", why)
    await run_in_threadpool(mark, hub, found)


@router.delete("/store/{bucket}/{name}", tags=["store"])
async def delete_object(
    bucket: str, name: str, principal: PrincipalDep, hub: HubDep
) -> dict[str, Any]:
    def run() -> list[Placed]:
        with hub.db.session() as session:
            obj = complete_object(session, principal, bucket, name)
            placed = placed_on(shares_of(session, obj.id))
            drop(session, obj)
            return placed

    shares = await run_in_threadpool(run)
    await delete_shares(hub, principal.tenant_id, shares)
    return {"bucket": bucket, "name": name, "deleted": True}


@router.get("/store/{bucket}/{name}", tags=["store"])
async def get_object(
    bucket: str, name: str, principal: PrincipalDep, hub: HubDep
) -> StreamingResponse:
    """The object's bytes, decoded from the first k shares that arrive and verify."""
    tune_malloc()  # once the store is used: see tune_malloc
    obj, manifest, key, shares = await run_in_threadpool(to_read, hub, principal, bucket, name)
    token = secrets.token_hex(8)
    inbox = store_dir(hub) / "in" / token
    await run_in_threadpool(lambda: inbox.mkdir(parents=True))
    try:
        arrived, problems = await collect(hub, principal.tenant_id, manifest.k, shares, token)
        need_k(f"{bucket}/{name}", manifest.k, arrived, problems)
    except BaseException:
        await run_in_threadpool(shutil.rmtree, inbox, True)
        raise
    headers = {"content-length": str(obj.size), "x-roost-object": obj.id}
    return StreamingResponse(
        _plaintext(manifest, key, arrived, inbox),
        media_type="application/octet-stream",
        headers=headers,
    )


def _plaintext(
    manifest: Manifest, key: bytes, arrived: dict[int, Path], inbox: Path
) -> Iterator[bytes]:
    """Decode segment by segment from the share files (run in a worker thread)."""
    files = {index: path.open("rb") for index, path in sorted(arrived.items())}
    try:
        decoder = Decoder(manifest, key)
        for number, entry in enumerate(manifest.segments):
            shares = [Share(number, i, f.read(entry.share_size)) for i, f in files.items()]
            for done in decoder.feed(number, shares):
                yield done.plaintext
        for done in decoder.finish():
            yield done.plaintext
    finally:
        for f in files.values():
            f.close()
        shutil.rmtree(inbox, ignore_errors=True)
