"""The hub's database: open it, migrate it to the newest schema, seed the default tenant."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from roost.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(db: Database) -> None:
    """Bring the schema to the newest revision; safe to run at every start."""
    config = alembic_config(db)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def make_revision(db: Database, message: str) -> None:
    """Developer tool: autogenerate a new migration against ``db`` (at head)."""
    config = alembic_config(db)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
