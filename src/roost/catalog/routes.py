"""HTTP routes of the catalog: publishing and listing apps, and TUF for the devices.

People publish with an API token (``POST /v1/apps``, the bundle as the request body,
streamed to disk, never held in memory). Devices fetch their tenant's signed metadata
and bundles with requests signed by their own key (``/v1/tuf/...``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel

from roost.api import DeviceDep, HubDep, PrincipalDep
from roost.apps.bundle import BundleLimits
from roost.catalog import service
from roost.catalog.models import AppRelease
from roost.db import utcnow
from roost.errors import ValidationError
from roost.events.store import hub_event, insert_events

router = APIRouter(prefix="/v1")


class ReleaseView(BaseModel):
    name: str
    version: str
    kind: str
    sha256: str
    size: int
    target_path: str
    published_by: str
    published_at: str
    manifest: dict[str, Any]

    @classmethod
    def of(cls, release: AppRelease) -> ReleaseView:
        return cls(
            name=release.name,
            version=release.version,
            kind=release.kind,
            sha256=release.sha256,
            size=release.size,
            target_path=release.target_path,
            published_by=release.published_by,
            published_at=release.published_at.isoformat(),
            manifest=release.manifest,
        )


class PublishView(ReleaseView):
    new: bool


class AppSummaryView(BaseModel):
    name: str
    kind: str
    latest: str
    versions: int
    description: str


class AppView(BaseModel):
    name: str
    releases: list[ReleaseView]
    devices: dict[str, dict[str, Any]]


@router.post("/apps", tags=["apps"], status_code=201)
async def publish(request: Request, principal: PrincipalDep, hub: HubDep) -> PublishView:
    """Publish a bundle (`roost app build` makes one): it is checked, stored and signed."""
    limits = BundleLimits()
    spool = hub.settings.data_dir / "spool"
    path = await run_in_threadpool(_spool_file, spool)
    try:
        with path.open("wb") as out:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ValidationError(f"a bundle may be at most {limits.max_bytes} bytes")
                await run_in_threadpool(out.write, chunk)
        if size == 0:
            raise ValidationError("the request body must be the bundle (roost app build)")

        def run() -> PublishView:
            with hub.db.session() as session:
                now = utcnow()
                release, new = service.publish(session, hub.catalog, principal, path, limits, now)
                if new:
                    data = {"version": release.version, "sha256": release.sha256}
                    event = hub_event(
                        principal.tenant_id, "roost.app.published", release.name, now, data
                    )
                    insert_events(session, [event])
                return PublishView(**ReleaseView.of(release).model_dump(), new=new)

        return await run_in_threadpool(run)
    finally:
        await run_in_threadpool(path.unlink, missing_ok=True)


def _spool_file(spool: Path) -> Path:
    """A fresh file for an upload in progress, on the same disk as the blob store."""
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool, suffix=".tar.gz")
    os.close(fd)
    return Path(name)


@router.get("/apps", tags=["apps"])
async def list_apps(principal: PrincipalDep, hub: HubDep) -> list[AppSummaryView]:
    def run() -> list[AppSummaryView]:
        with hub.db.session() as session:
            return [AppSummaryView(**vars(s)) for s in service.list_apps(session, principal)]

    return await run_in_threadpool(run)


@router.get("/apps/{name}", tags=["apps"])
async def show_app(name: str, principal: PrincipalDep, hub: HubDep) -> AppView:
    """Versions (newest first), and which devices run the app."""

    def run() -> AppView:
        with hub.db.session() as session:
            releases = service.app_releases(session, principal, name)
            return AppView(
                name=name,
                releases=[ReleaseView.of(r) for r in releases],
                devices=service.running(session, principal, name),
            )

    return await run_in_threadpool(run)


@router.get("/catalog/root-key", tags=["apps"])
async def export_root_key(principal: PrincipalDep, hub: HubDep) -> Response:
    """The tenant's catalog root key (PEM), to keep offline; then DELETE it from the hub."""
    repository = hub.catalog.tenant(principal.tenant_id)
    key = await run_in_threadpool(repository.root_key)
    return Response(key, media_type="application/x-pem-file")


@router.delete("/catalog/root-key", tags=["apps"])
async def remove_root_key(principal: PrincipalDep, hub: HubDep) -> dict[str, bool]:
    """Delete the root key from the hub; rotating keys or re-signing the root then needs
    the offline copy. Export it first."""
    repository = hub.catalog.tenant(principal.tenant_id)
    await run_in_threadpool(repository.remove_root_key)
    return {"root_key_online": False}


# -- TUF, for devices -------------------------------------------------------------------


@router.get("/tuf/metadata/{name}", tags=["devices"])
async def tuf_metadata(name: str, device: DeviceDep, hub: HubDep) -> Response:
    """Signed metadata of the device's tenant: N.root.json, timestamp.json, ..."""
    repository = hub.catalog.tenant(device.tenant_id)
    body = await run_in_threadpool(repository.metadata, name)
    return Response(body, media_type="application/json")


@router.get("/tuf/targets/{path:path}", tags=["devices"])
async def tuf_target(path: str, device: DeviceDep, hub: HubDep) -> FileResponse:
    """A signed bundle of the device's tenant, by its hashed path."""
    repository = hub.catalog.tenant(device.tenant_id)
    file = await run_in_threadpool(repository.target_file, path)
    return FileResponse(file, media_type="application/octet-stream")
