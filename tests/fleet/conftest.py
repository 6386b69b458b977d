"""Fleet unit tests run on an in-memory SQLite database with the full schema."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

# Importing the model modules registers their tables.
import roost.access.models
import roost.events.models
import roost.fleet.models  # noqa: F401
from roost.access.service import Principal, create_tenant, ensure_default_tenant
from roost.db import Base, Database
from roost.pki import CertificateAuthority

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def db() -> Iterator[Database]:
    """A fresh database with the ``default`` tenant and an ``acme`` tenant."""
    database = Database("sqlite://")
    Base.metadata.create_all(database.engine)
    owner = Principal(tenant_id="default", role="owner", token_id="t-owner")
    with database.session() as session:
        ensure_default_tenant(session)
        create_tenant(session, owner, "acme")
    yield database
    database.dispose()


@pytest.fixture
def owner() -> Principal:
    return Principal(tenant_id="default", role="owner", token_id="t-owner")


@pytest.fixture
def acme() -> Principal:
    return Principal(tenant_id="acme", role="admin", token_id="t-acme")


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(NOW)
