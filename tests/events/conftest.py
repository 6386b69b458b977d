"""Event tests that need a database use the fleet tests' one (two tenants, SQLite)."""

from fleet.conftest import acme, db, owner  # noqa: F401  (fixtures)
