"""HTTP routes of deployments and rollouts (API token, tenant-scoped).

``POST /v1/deployments`` rolls a published release out to the devices a label selector
picks; ``/v1/rollouts`` shows, pauses, resumes and aborts rollouts. Desired states a
change decides are published once its transaction is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from roost.api import HubContext, HubDep, PrincipalDep
from roost.db import utcnow
from roost.rollouts import service
from roost.rollouts.models import DeploymentRow
from roost.wire import Desired

router = APIRouter(prefix="/v1", tags=["rollouts"])


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str
    version: str
    selector: str
    waves: list[str] | None = None
    soak_s: float | None = None
    deadline_s: float | None = None
    failure_threshold: float | None = None
    canary_failure_threshold: float | None = None
    windows: list[str] | None = None


class DeploymentView(BaseModel):
    id: str
    app: str
    selector: str
    version: str
    created_by: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, row: DeploymentRow) -> DeploymentView:
        return cls(
            id=row.id,
            app=row.app,
            selector=row.selector,
            version=row.version,
            created_by=row.created_by,
            created_at=row.created_at.isoformat(),
            updated_at=row.updated_at.isoformat(),
        )


async def _change(
    hub: HubContext, work: Callable[[Session], tuple[Any, list[tuple[str, Desired]]]]
) -> Any:
    """Run ``work`` in one transaction, then publish the desired states it decided."""

    def run() -> tuple[Any, list[tuple[str, Desired]]]:
        with hub.db.session() as session:
            return work(session)

    result, changes = await run_in_threadpool(run)
    for device_id, desired in changes:
        hub.publish_desired(device_id, desired)
    return result


@router.post("/deployments", status_code=201)
async def deploy(body: DeployRequest, principal: PrincipalDep, hub: HubDep) -> dict[str, Any]:
    """Roll a published release out to the devices a selector picks, in waves."""
    settings = body.model_dump(exclude={"app", "version", "selector"}, exclude_none=True)

    def work(session: Session) -> tuple[dict[str, Any], list[tuple[str, Desired]]]:
        now = utcnow()
        row, changes = service.deploy(
            session, principal, body.app, body.version, body.selector, settings, now
        )
        return service.progress(session, row, now), changes

    result: dict[str, Any] = await _change(hub, work)
    return result


@router.get("/deployments")
async def deployments(principal: PrincipalDep, hub: HubDep) -> list[DeploymentView]:
    def run() -> list[DeploymentView]:
        with hub.db.session() as session:
            return [DeploymentView.of(d) for d in service.deployments(session, principal)]

    return await run_in_threadpool(run)


@router.delete("/deployments/{deployment_id}")
async def undeploy(deployment_id: str, principal: PrincipalDep, hub: HubDep) -> dict[str, Any]:
    """Remove the app from the devices the deployment reaches, and the deployment."""

    def work(session: Session) -> tuple[dict[str, Any], list[tuple[str, Desired]]]:
        changes = service.undeploy(session, principal, deployment_id, utcnow())
        return {"id": deployment_id, "devices": len(changes)}, changes

    result: dict[str, Any] = await _change(hub, work)
    return result


@router.get("/rollouts")
async def rollouts(principal: PrincipalDep, hub: HubDep) -> list[dict[str, Any]]:
    """The tenant's rollouts, newest first, with their progress."""

    def run() -> list[dict[str, Any]]:
        now = utcnow()
        with hub.db.session() as session:
            devices = service.Devices(session)
            return [
                service.progress(session, row, now, devices=devices)
                for row in service.rollouts(session, principal)
            ]

    return await run_in_threadpool(run)


@router.get("/rollouts/{rollout_id}")
async def rollout(
    rollout_id: str, principal: PrincipalDep, hub: HubDep, devices: bool = False
) -> dict[str, Any]:
    """One rollout wave by wave; ``?devices=true`` adds each device's progress."""

    def run() -> dict[str, Any]:
        now = utcnow()
        with hub.db.session() as session:
            row = service.get_rollout(session, principal, rollout_id)
            return service.progress(session, row, now, with_devices=devices)

    return await run_in_threadpool(run)


@router.post("/rollouts/{rollout_id}/{action}")
async def rollout_action(
    rollout_id: str,
    action: Literal["pause", "resume", "abort"],
    principal: PrincipalDep,
    hub: HubDep,
) -> dict[str, Any]:
    """Pause (no wave starts or passes), resume, or abort (every device rolls back)."""

    def work(session: Session) -> tuple[dict[str, Any], list[tuple[str, Desired]]]:
        now = utcnow()
        row, changes = service.act(session, principal, rollout_id, action, now)
        return service.progress(session, row, now), changes

    result: dict[str, Any] = await _change(hub, work)
    return result
