"""The migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import roost.hub.core  # noqa: F401  (imports every model onto Base.metadata)
from roost.db import Base, Database
from roost.hub.database import migrate


def test_the_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        migrate(db)
        migrate(db)  # a second start finds nothing to do
        with db.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        db.dispose()
    assert diff == []
