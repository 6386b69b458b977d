"""HTTP routes of access: tenants."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel

from roost.access import service
from roost.api import HubDep, PrincipalDep

router = APIRouter(prefix="/v1", tags=["tenants"])


class TenantRequest(BaseModel):
    name: str


class TenantView(BaseModel):
    id: str
    name: str
    created_at: dt.datetime


class TenantCreated(TenantView):
    admin_token: str


@router.post("/tenants")
def create_tenant(body: TenantRequest, principal: PrincipalDep, hub: HubDep) -> TenantCreated:
    """A new tenant and its first admin token (shown only in this answer). Owner only."""
    with hub.db.session() as session:
        tenant, token = service.create_tenant(session, principal, body.name)
        return TenantCreated(
            id=tenant.id, name=tenant.name, created_at=tenant.created_at, admin_token=token
        )


@router.get("/tenants")
def list_tenants(principal: PrincipalDep, hub: HubDep) -> list[TenantView]:
    with hub.db.session() as session:
        return [
            TenantView(id=t.id, name=t.name, created_at=t.created_at)
            for t in service.list_tenants(session, principal)
        ]
