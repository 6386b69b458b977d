"""HTTP routes of functions (API token, tenant-scoped).

``/v1/functions`` deploys, lists, shows and removes functions, invokes one
(``.../invoke``) and shows its recent invocations (``.../logs``). ``POST /v1/fn/{name}``
is a function's HTTP trigger: the request body (JSON, else text) is the event's data, the
answer the function's result, or 502 with its error.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from roost.api import HubDep, PrincipalDep
from roost.db import utcnow
from roost.errors import FunctionError, ValidationError
from roost.functions import edge, service
from roost.functions.models import FunctionRow, Invocation
from roost.wire import Desired
from roost.wire.functions import HUB

router = APIRouter(prefix="/v1", tags=["functions"])


class DeployFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    files: dict[str, str]
    entry: str = "main"
    timeout_s: float = service.DEFAULTS["timeout_s"]
    memory_bytes: int = service.DEFAULTS["memory_bytes"]
    concurrency: int = service.DEFAULTS["concurrency"]
    network: bool = False
    on: str = HUB
    trigger: dict[str, Any] | None = None
    cron: str = ""


class InvokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Any = Field(default=None)


def function_view(row: FunctionRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "on": row.placement or service.ALL_DEVICES,
        "trigger": row.trigger,
        "cron": row.cron,
        "timeout_s": row.timeout_s,
        "memory_bytes": row.memory_bytes,
        "concurrency": row.concurrency,
        "network": row.network,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def invocation_view(row: Invocation) -> dict[str, Any]:
    return {
        "id": row.id,
        "version": row.version,
        "trigger": row.trigger,
        "started_at": row.started_at.isoformat(),
        "duration_ms": row.duration_ms,
        "ok": row.ok,
        "cold": row.cold,
        "result": json.loads(row.result) if row.ok and row.result else None,
        "error": row.error,
        "output": row.output,
        "device": row.device_id,
    }


@router.post("/functions", status_code=201)
async def deploy(body: DeployFunction, principal: PrincipalDep, hub: HubDep) -> dict[str, Any]:
    """Deploy a function, or a new version of it (checked first: syntax, handle, size).
    A function ``on`` devices is signed into the tenant's catalog and placed on them."""
    limits = service.Limits(body.timeout_s, body.memory_bytes, body.concurrency, body.network)
    start = service.Start.parse(body.on, body.trigger, body.cron)

    def run() -> tuple[dict[str, Any], list[tuple[str, Desired]]]:
        with hub.db.session() as session:
            row = service.deploy(
                session,
                principal,
                body.name,
                body.files,
                body.entry,
                limits,
                hub.settings,
                utcnow(),
                start,
            )
            if not start.on_hub:
                edge.publish(session, hub.catalog, row)
            changes = edge.reconcile(session, principal.tenant_id)
            return {**function_view(row), "id": row.id}, changes

    view, changes = await run_in_threadpool(run)
    for device_id, desired in changes:
        hub.publish_desired(device_id, desired)
    await hub.functions.retire(view.pop("id"))
    return view


@router.get("/functions")
async def functions(principal: PrincipalDep, hub: HubDep) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        with hub.db.session() as session:
            return [function_view(row) for row in service.functions(session, principal)]

    return await run_in_threadpool(run)


@router.get("/functions/{name}")
async def function(name: str, principal: PrincipalDep, hub: HubDep) -> dict[str, Any]:
    """One function with its versions (newest first) and its entry module's source."""

    def run() -> dict[str, Any]:
        with hub.db.session() as session:
            row = service.get(session, principal.tenant_id, name)
            versions = service.versions(session, row)
            return {
                **function_view(row),
                "versions": [
                    {
                        "version": v.version,
                        "size": v.size,
                        "sha256": v.sha256,
                        "entry": v.entry,
                        "files": sorted(json.loads(v.files)),
                        "created_at": v.created_at.isoformat(),
                    }
                    for v in versions
                ],
            }

    return await run_in_threadpool(run)


@router.delete("/functions/{name}")
async def remove(name: str, principal: PrincipalDep, hub: HubDep) -> dict[str, Any]:
    def run() -> tuple[str, list[tuple[str, Desired]]]:
        with hub.db.session() as session:
            function_id = service.remove(session, principal, name)
            session.flush()
            return function_id, edge.reconcile(session, principal.tenant_id)

    function_id, changes = await run_in_threadpool(run)
    for device_id, desired in changes:
        hub.publish_desired(device_id, desired)
    await hub.functions.retire(function_id)
    return {"name": name, "removed": True}


@router.post("/functions/{name}/invoke")
async def invoke(
    name: str, body: InvokeRequest, principal: PrincipalDep, hub: HubDep
) -> dict[str, Any]:
    """Run the function once; the recorded invocation (ok or not) is the answer."""
    invocation = await hub.functions.invoke(principal.tenant_id, name, body.data, "cli")
    return invocation_view(invocation)


@router.get("/functions/{name}/logs")
async def logs(
    name: str, principal: PrincipalDep, hub: HubDep, limit: int = 20
) -> list[dict[str, Any]]:
    """The function's recent invocations, newest first."""

    def run() -> list[dict[str, Any]]:
        with hub.db.session() as session:
            rows = service.invocations(session, principal, name, limit)
            return [invocation_view(row) for row in rows]

    return await run_in_threadpool(run)


@router.post("/fn/{name}")
async def http_trigger(name: str, request: Request, principal: PrincipalDep, hub: HubDep) -> Any:
    """The function's HTTP trigger: the body is the event's data; the result is the answer."""
    raw = await request.body()
    if len(raw) > hub.settings.max_payload_bytes:
        raise ValidationError(f"the request body is over {hub.settings.max_payload_bytes} bytes")
    text = raw.decode(errors="replace")
    try:
        data: Any = json.loads(text) if text else None
    except ValueError:
        data = text
    invocation = await hub.functions.invoke(principal.tenant_id, name, data, "http")
    if not invocation.ok:
        raise FunctionError(f"function {name} failed: {invocation.error}")
    return json.loads(invocation.result) if invocation.result else None
