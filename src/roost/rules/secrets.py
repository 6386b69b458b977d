"""Secrets on the hub: named values a tenant's rules use without writing them down.

A webhook action names a secret (``secret: doctor-sms``); the outbox signs the body with
its value. Values are sealed at rest with AES-256-GCM under a key kept in the hub's data
dir (``secrets.key``, mode 0600, made on first use), the tenant and the name bound in as
associated data so a sealed value cannot be moved to another tenant or name. A database
dump alone gives nothing away; hubs sharing one database share that key file, as they
share ``pki/``.

Values never leave the hub through the API: ``roost secrets ls`` shows names and times.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, LargeBinary, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from roost.access import Principal
from roost.api import HubDep, PrincipalDep
from roost.atomic import write_private
from roost.db import Base, utcnow
from roost.errors import ConfigError, NotFoundError, ValidationError

KEY_FILE = "secrets.key"
# A secret's name, as a rule names it (the rules' NAME fields).
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_VALUE_BYTES = 4096
_NONCE = 12


class SecretRow(Base):
    __tablename__ = "secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # nonce (12 bytes) + AES-256-GCM ciphertext and tag
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def load_key(path: Path) -> bytes:
    """The sealing key at ``path``, made (32 random bytes, owner-only) when there is none."""
    if not path.exists():
        write_private(path, os.urandom(32))
    key = path.read_bytes()
    if len(key) != 32:
        raise ConfigError(f"{path} is not a secrets key (32 bytes); restore it from a backup")
    return key


class SecretStore:
    """A tenant's secrets in the database, sealed with the hub's key."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    @classmethod
    def open(cls, data_dir: Path) -> SecretStore:
        return cls(load_key(data_dir / KEY_FILE))

    def set(self, session: Session, tenant_id: str, name: str, value: bytes) -> None:
        if not NAME_RE.match(name):
            raise ValidationError(f"secret name {name!r}: use a-z, 0-9, '.', '_', '-'")
        if not value or len(value) > MAX_VALUE_BYTES:
            raise ValidationError(f"a secret's value is 1 to {MAX_VALUE_BYTES} bytes")
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, value, _bound(tenant_id, name))
        row = session.get(SecretRow, (tenant_id, name))
        if row is None:
            session.add(SecretRow(tenant_id=tenant_id, name=name, sealed=sealed))
        else:
            row.sealed, row.updated_at = sealed, utcnow()

    def get(self, session: Session, tenant_id: str, name: str) -> bytes | None:
        """The value, or None when the tenant has no such secret."""
        row = session.get(SecretRow, (tenant_id, name))
        if row is None:
            return None
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(
                row.sealed[:_NONCE], row.sealed[_NONCE:], _bound(tenant_id, name)
            )
        except InvalidTag:
            raise ConfigError(
                f"secret {name!r} does not open with this hub's {KEY_FILE}; set it again"
            ) from None

    @staticmethod
    def names(session: Session, tenant_id: str) -> list[SecretRow]:
        query = select(SecretRow).where(SecretRow.tenant_id == tenant_id).order_by(SecretRow.name)
        return list(session.scalars(query))

    @staticmethod
    def remove(session: Session, tenant_id: str, name: str) -> None:
        gone = session.execute(
            delete(SecretRow).where(SecretRow.tenant_id == tenant_id, SecretRow.name == name)
        )
        if not gone.rowcount:  # type: ignore[attr-defined]
            raise NotFoundError(f"no secret {name!r}")


def _bound(tenant_id: str, name: str) -> bytes:
    return f"roost-secret\0{tenant_id}\0{name}".encode()


# -- HTTP routes ------------------------------------------------------------------------

router = APIRouter(prefix="/v1", tags=["secrets"])


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str


class SecretView(BaseModel):
    name: str
    created_at: dt.datetime
    updated_at: dt.datetime


@router.put("/secrets/{name}")
def set_secret(name: str, body: SecretValue, principal: PrincipalDep, hub: HubDep) -> SecretView:
    """Set a secret's value (it is never shown again)."""
    with hub.db.session() as session:
        hub.delivery.secrets.set(session, principal.tenant_id, name, body.value.encode())
        session.flush()
        return _view(session, principal, name)


@router.get("/secrets")
def list_secrets(principal: PrincipalDep, hub: HubDep) -> list[SecretView]:
    """The tenant's secrets: names and times, never values."""
    with hub.db.session() as session:
        return [
            SecretView(name=r.name, created_at=r.created_at, updated_at=r.updated_at)
            for r in SecretStore.names(session, principal.tenant_id)
        ]


@router.delete("/secrets/{name}")
def remove_secret(name: str, principal: PrincipalDep, hub: HubDep) -> dict[str, str]:
    with hub.db.session() as session:
        SecretStore.remove(session, principal.tenant_id, name)
    return {"removed": name}


def _view(session: Session, principal: Principal, name: str) -> SecretView:
    row = session.get(SecretRow, (principal.tenant_id, name))
    assert row is not None
    return SecretView(name=row.name, created_at=row.created_at, updated_at=row.updated_at)
