"""Publishing to a tenant's catalog and reading it back.

A release goes into the tenant's TUF repository (the signed truth devices verify) and
into ``app_releases`` (the index people read). The bundle is checked again here, as it
is on the device: the hub never signs what it would refuse to install.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.apps.bundle import BundleLimits, inspect_bundle
from roost.apps.manifest import SemVer
from roost.catalog.models import AppRelease
from roost.catalog.repository import Catalog
from roost.errors import ConflictError, NotFoundError
from roost.fleet.models import Device
from roost.wire.apps import target_path


def publish(
    session: Session,
    catalog: Catalog,
    principal: Principal,
    bundle: Path,
    limits: BundleLimits,
    now: dt.datetime,
) -> tuple[AppRelease, bool]:
    """Sign ``bundle`` into the caller's catalog; (the release, whether it is new).

    Publishing the same bundle twice is a no-op; other content under a version that is
    already published is refused — a version, once signed, means one thing.
    """
    manifest = inspect_bundle(bundle, limits)
    name, version = manifest.name, str(manifest.version)
    existing = session.scalar(
        select(AppRelease).where(
            AppRelease.tenant_id == principal.tenant_id,
            AppRelease.name == name,
            AppRelease.version == version,
        )
    )
    blob = catalog.blobs.put(bundle)
    if existing is not None:
        if existing.sha256 == blob.sha256:
            return existing, False
        raise ConflictError(
            f"{name}@{version} is already published with other content; "
            "publish it under a new version"
        )
    path = target_path(name, version)
    described = manifest.to_dict()
    # TUF's canonical JSON has no floats: the signed custom data names the release; the
    # whole manifest travels inside the (signed) bundle.
    custom = {"roost": {"name": name, "version": version, "kind": manifest.kind}}
    catalog.tenant(principal.tenant_id).add_target(path, blob, custom)
    release = AppRelease(
        tenant_id=principal.tenant_id,
        name=name,
        version=version,
        kind=manifest.kind,
        target_path=path,
        sha256=blob.sha256,
        size=blob.size,
        manifest=described,
        published_by=principal.token_id,
        published_at=now,
    )
    session.add(release)
    session.flush()
    return release, True


@dataclass(frozen=True)
class AppSummary:
    name: str
    kind: str
    latest: str
    versions: int
    description: str


def list_apps(session: Session, principal: Principal) -> list[AppSummary]:
    """Every app of the caller's tenant with its newest version."""
    by_name: dict[str, list[AppRelease]] = {}
    for release in _releases(session, principal.tenant_id):
        by_name.setdefault(release.name, []).append(release)
    summaries = []
    for name, releases in sorted(by_name.items()):
        newest = releases[0]
        summaries.append(
            AppSummary(
                name=name,
                kind=newest.kind,
                latest=newest.version,
                versions=len(releases),
                description=str(newest.manifest.get("description", "")),
            )
        )
    return summaries


def app_releases(session: Session, principal: Principal, name: str) -> list[AppRelease]:
    """The releases of one app, newest first."""
    releases = [r for r in _releases(session, principal.tenant_id) if r.name == name]
    if not releases:
        raise NotFoundError(f"no app {name!r}")
    return releases


def running(session: Session, principal: Principal, name: str) -> dict[str, dict[str, Any]]:
    """Device id -> what the device reports of app ``name`` (version, state, isolation)."""
    rows = session.execute(
        select(Device.id, Device.reported).where(
            Device.tenant_id == principal.tenant_id, Device.state == "active"
        )
    )
    found = {}
    for device_id, reported in rows:
        app = (reported.get("apps") or {}).get(name)
        if isinstance(app, dict):
            found[device_id] = app
    return found


def _releases(session: Session, tenant_id: str) -> list[AppRelease]:
    releases = list(session.scalars(select(AppRelease).where(AppRelease.tenant_id == tenant_id)))
    # Newest version first within each app, apps by name.
    releases.sort(key=lambda r: SemVer.parse(r.version), reverse=True)
    releases.sort(key=lambda r: r.name)
    return releases
