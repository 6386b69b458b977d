"""The hub's functions at run time: look a function up, run it in the pool, record it.

``Functions.invoke`` is what every trigger calls (``roost fn invoke``, ``POST
/v1/fn/{name}``, a rule's ``invoke`` action, which a function's own trigger and cron
are too); it answers the recorded invocation whether the function succeeded or not, and
``NotFoundError`` for a function that is not there.

The events a successful invocation emitted (``ctx.emit``) are stored with it, in one
transaction, from ``roost://functions/<name>``: with an idempotency key (an action's) the
``n``th has the id ``<key>/<n>``, so an action tried again stores them once; without one
(``roost fn invoke``, the HTTP trigger) each is new. They are checked like events sent to
the API; one that is not an event fails the invocation, and none is stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from roost.db import Database, utcnow
from roost.errors import ValidationError
from roost.events.cloudevents import emitted_event
from roost.events.store import insert_events
from roost.functions import service
from roost.functions.models import Invocation
from roost.functions.pool import Pool
from roost.functions.sandbox import working_bwrap
from roost.functions.triggers import EMIT_SOURCE
from roost.settings import HubSettings

log = logging.getLogger("roost.functions")


def system_hidden() -> list[Path]:
    """Hidden from sandboxed functions beside the hub's data dir: the system's Unix
    sockets (a local PostgreSQL, D-Bus, a container runtime: reachable without the
    network) and the hub user's home (SSH keys, ``.pgpass``). Python and Roost stay
    visible wherever they are installed (the pool binds them again)."""
    found = [Path("/run").resolve(), Path.home().resolve()]
    return [path for path in found if path.is_dir() and path != Path("/")]


class Functions:
    def __init__(self, db: Database, settings: HubSettings, hidden: Sequence[Path]) -> None:
        self.db = db
        self.settings = settings
        self.hidden = (*hidden, *system_hidden())
        self.pool = Pool(
            hidden=self.hidden,
            max_workers=settings.functions_max_workers,
            allow_network=settings.functions_allow_network,
        )

    async def start(self) -> None:
        self.pool.bwrap = await asyncio.to_thread(working_bwrap)
        if self.pool.bwrap is None:
            log.warning(
                "bubblewrap is missing or does not work here: functions run unsandboxed, "
                "with their time and memory limits only"
            )

    async def close(self) -> None:
        await self.pool.close()

    async def invoke(
        self, tenant_id: str, name: str, data: Any, trigger: str, key: str = ""
    ) -> Invocation:
        """Run the function's current version once and record it. ``key``: a rule's
        idempotency key, the same when an action is tried again (``ctx["key"]``)."""

        def load() -> Any:
            with self.db.session() as session:
                return service.code(session, tenant_id, name)

        row, code = await asyncio.to_thread(load)
        started_at = utcnow()
        # A rule's or a trigger's input is the event (or what the rule made of it).
        from_events = trigger in ("rule", "event", "cron")
        event = data if from_events else {"type": f"roost.function.{trigger}", "data": data}
        ctx = {"function": name, "version": row.version, "tenant": tenant_id, "trigger": trigger}
        if key:
            ctx["key"] = key
        outcome = await self.pool.invoke(code, event, ctx)
        emitted: list[dict[str, Any]] = []
        if outcome.ok and outcome.events:
            try:
                emitted = emitted_events(
                    tenant_id, name, key, outcome.events, self.settings.max_payload_bytes, utcnow()
                )
            except ValidationError as err:
                outcome = dataclasses.replace(outcome, ok=False, result=None, error=str(err))
        if not outcome.ok:
            log.info("function %s/%s v%d failed: %s", tenant_id, name, row.version, outcome.error)

        def keep() -> Invocation:
            with self.db.session() as session:
                invocation = service.record(session, row, trigger, outcome, started_at)
                if emitted:
                    insert_events(session, emitted)
                session.flush()
                session.expunge(invocation)
                return invocation

        return await asyncio.to_thread(keep)

    async def retire(self, function_id: str) -> None:
        await self.pool.retire(function_id)


def emitted_events(
    tenant_id: str,
    name: str,
    key: str,
    events: Sequence[Mapping[str, Any]],
    max_data_bytes: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Rows for the event store of what function ``name`` emitted; ``ValidationError``
    names the first that is not an event."""
    rows = []
    for index, emitted in enumerate(events):
        event_id = f"{key}/{index}" if key else str(uuid.uuid4())
        where = f"ctx.emit event {index + 1}"
        row = emitted_event(emitted, event_id, tenant_id, max_data_bytes, now, where)
        row["source"] = EMIT_SOURCE + name
        rows.append(row)
    return rows
