"""Tenants, API tokens and roles on an in-memory database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

# Importing the model modules registers their tables.
import roost.access.models
import roost.events.models
import roost.fleet.models  # noqa: F401
from roost.access.models import ApiToken, Tenant
from roost.access.service import (
    Principal,
    authenticate,
    create_tenant,
    ensure_default_tenant,
    issue_token,
    list_tenants,
)
from roost.db import Base, Database, utcnow
from roost.errors import AuthError, ConflictError, ForbiddenError, ValidationError


@pytest.fixture
def db() -> Iterator[Database]:
    database = Database("sqlite://")
    Base.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def owner_token(db: Database) -> str:
    with db.session() as session:
        token = ensure_default_tenant(session)
    assert token is not None
    return token


def login(db: Database, token: str) -> Principal:
    with db.session() as session:
        return authenticate(session, token)


def test_the_default_tenant_and_owner_token_are_made_only_once(db: Database) -> None:
    with db.session() as session:
        first = ensure_default_tenant(session)
    with db.session() as session:
        assert ensure_default_tenant(session) is None
    assert first is not None
    with db.session() as session:
        assert [t.id for t in session.scalars(select(Tenant))] == ["default"]
        tokens = list(session.scalars(select(ApiToken)))
    assert [(t.tenant_id, t.role) for t in tokens] == [("default", "owner")]
    # Only a hash is kept.
    assert first not in tokens[0].secret_hash


def test_the_owner_token_authenticates_as_owner_of_the_default_tenant(
    db: Database, owner_token: str
) -> None:
    principal = login(db, owner_token)
    assert (principal.tenant_id, principal.role) == ("default", "owner")
    principal.require_owner()


@pytest.mark.parametrize(
    "token",
    ["", "Bearer x", "rat_", "rat_not-a-real-token", "rjt1_something"],
)
def test_unknown_tokens_are_refused(db: Database, owner_token: str, token: str) -> None:
    with pytest.raises(AuthError):
        login(db, token)


def test_a_token_that_differs_by_a_character_is_refused(db: Database, owner_token: str) -> None:
    last = "A" if owner_token[-1] != "A" else "B"
    with pytest.raises(AuthError):
        login(db, owner_token[:-1] + last)


def test_a_revoked_token_is_refused(db: Database, owner_token: str) -> None:
    with db.session() as session:
        for row in session.scalars(select(ApiToken)):
            row.revoked_at = utcnow()
    with pytest.raises(AuthError, match="revoked"):
        login(db, owner_token)


def test_the_owner_creates_tenants_with_an_admin_token(db: Database, owner_token: str) -> None:
    owner = login(db, owner_token)
    with db.session() as session:
        tenant, admin_token = create_tenant(session, owner, "acme")
    assert tenant.id == "acme"
    admin = login(db, admin_token)
    assert (admin.tenant_id, admin.role) == ("acme", "admin")
    with db.session() as session:
        assert [t.id for t in list_tenants(session, owner)] == ["acme", "default"]
        assert [t.id for t in list_tenants(session, admin)] == ["acme"]


def test_an_admin_may_not_create_tenants(db: Database, owner_token: str) -> None:
    with db.session() as session:
        _, admin_token = create_tenant(session, login(db, owner_token), "acme")
    admin = login(db, admin_token)
    with pytest.raises(ForbiddenError):
        admin.require_owner()
    with pytest.raises(ForbiddenError), db.session() as session:
        create_tenant(session, admin, "evil")
    with db.session() as session:
        assert session.get(Tenant, "evil") is None


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "acme_corp", "a b", "a" * 64, "ácme"])
def test_tenant_names_are_checked(db: Database, owner_token: str, name: str) -> None:
    with pytest.raises(ValidationError), db.session() as session:
        create_tenant(session, login(db, owner_token), name)


def test_tenant_names_are_unique(db: Database, owner_token: str) -> None:
    owner = login(db, owner_token)
    with db.session() as session:
        create_tenant(session, owner, "acme")
    with pytest.raises(ConflictError), db.session() as session:
        create_tenant(session, owner, "acme")
    with pytest.raises(ConflictError), db.session() as session:
        create_tenant(session, owner, "default")


def test_tokens_have_known_roles_only(db: Database, owner_token: str) -> None:
    with pytest.raises(ValidationError), db.session() as session:
        issue_token(session, "default", "root", "nope")
    with db.session() as session:
        token = issue_token(session, "default", "admin", "ci")
    assert login(db, token).role == "admin"
    assert login(db, token).token_id != login(db, owner_token).token_id
