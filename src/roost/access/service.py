"""Tenants, API tokens and who may do what.

Roles: ``owner`` runs the whole hub (creates tenants) and administers the ``default``
tenant; ``admin`` administers its own tenant. Every query of a part takes the caller's
``Principal`` and filters by its tenant, so one tenant's token never reaches another's
objects (they answer 404, as if absent).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from roost.access.models import DEFAULT_TENANT, ApiToken, Tenant
from roost.errors import AuthError, ConflictError, ForbiddenError, ValidationError
from roost.pki.tokens import API_PREFIX, hash_secret, new_api_token

ROLES = ("owner", "admin")
TENANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    role: str
    token_id: str

    def require_owner(self) -> None:
        if self.role != "owner":
            raise ForbiddenError("only the hub's owner may do this")


def ensure_default_tenant(session: Session) -> str | None:
    """Make the ``default`` tenant and its owner token on first start.

    Returns the new token (to show once), or None when the hub was set up before.
    """
    if session.get(Tenant, DEFAULT_TENANT) is not None:
        return None
    session.add(Tenant(id=DEFAULT_TENANT, name=DEFAULT_TENANT))
    session.flush()
    return issue_token(session, DEFAULT_TENANT, "owner", "first owner token")


def issue_token(session: Session, tenant_id: str, role: str, name: str) -> str:
    if role not in ROLES:
        raise ValidationError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    token = new_api_token()
    session.add(
        ApiToken(
            id=secrets.token_hex(8),
            tenant_id=tenant_id,
            name=name,
            role=role,
            secret_hash=hash_secret(token),
        )
    )
    return token


def authenticate(session: Session, token: str) -> Principal:
    if not token.startswith(API_PREFIX):
        raise AuthError("not a Roost API token")
    row = session.scalars(
        select(ApiToken).where(ApiToken.secret_hash == hash_secret(token))
    ).one_or_none()
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked API token")
    return Principal(tenant_id=row.tenant_id, role=row.role, token_id=row.id)


def create_tenant(session: Session, principal: Principal, name: str) -> tuple[Tenant, str]:
    """A new tenant and its first admin token (shown once)."""
    principal.require_owner()
    if not TENANT_NAME_RE.match(name):
        raise ValidationError(
            "tenant names are 1-63 lowercase letters, digits and dashes, starting with a "
            "letter or digit"
        )
    if session.scalars(select(Tenant).where(Tenant.name == name)).first() is not None:
        raise ConflictError(f"a tenant named {name!r} exists already")
    tenant = Tenant(id=name, name=name)
    session.add(tenant)
    session.flush()
    return tenant, issue_token(session, tenant.id, "admin", f"first admin token of {name}")


def list_tenants(session: Session, principal: Principal) -> list[Tenant]:
    if principal.role == "owner":
        return list(session.scalars(select(Tenant).order_by(Tenant.name)))
    return [t for t in [session.get(Tenant, principal.tenant_id)] if t is not None]
