"""Alembic environment: runs on the connection the hub hands over (see hub/database.py)."""

from __future__ import annotations

from alembic import context

import roost.access.models
import roost.catalog.models
import roost.events.models
import roost.fleet.models
import roost.functions.models
import roost.rollouts.models
import roost.rules.models
import roost.rules.secrets
import roost.storage.models  # noqa: F401  (registers the tables on Base.metadata)
from roost.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
