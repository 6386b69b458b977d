"""Edge functions, the hub's side: shipped to devices the way app releases are.

A function deployed ``--on SELECTOR`` runs on the devices the selector picks, not on the
hub. Each version becomes one file in the tenant's signed catalog (TUF),
``functions/<name>/<name>-<version>.json``: its code, entry module, limits and triggers
(``bundle``). The devices it is placed on get ``functions: {name: {"version": N}}`` in
their desired state (``reconcile``, after every deploy and removal and from the hub's loop,
so devices that gain or lose a label follow); the agent downloads the file, verifies it
against the signed metadata, and runs the function against its own local events
(``roost.agent.edgefns``), online or not.

What an edge function did comes back through the device's outbox as events (at least
once): each invocation as ``roost.function.invoked`` from ``functions/<name>``, whose id
is the invocation's idempotency key (the source and id of the event it handled), and each
event it emitted with ``ctx.emit``. The event store keeps one event per id, and
``record_invocations`` keeps one invocation row per (function, device, key): sent again
after a reconnect or handled again after a crash, an invocation counts once.

``bundle`` and ``wanted`` are pure; the rest takes an open ``Session`` (the caller commits).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from roost.catalog.repository import Catalog
from roost.events.cloudevents import device_time
from roost.fleet.models import Device
from roost.fleet.selectors import Selector
from roost.fleet.service import desired_message
from roost.functions.models import FunctionRow, FunctionVersion, Invocation
from roost.functions.service import RESULT_CHARS, prune_now_and_then
from roost.wire import Desired
from roost.wire.functions import DESIRED_KEY, HUB, SOURCE_PREFIX, target_path


def bundle(row: FunctionRow, stored: FunctionVersion) -> bytes:
    """The file a device verifies and runs: code, entry, limits, triggers (canonical JSON)."""
    document = {
        "name": row.name,
        "version": stored.version,
        "entry": stored.entry,
        "files": json.loads(stored.files),
        "timeout_s": row.timeout_s,
        "memory_bytes": row.memory_bytes,
        "concurrency": row.concurrency,
        "trigger": row.trigger,
        "cron": row.cron,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def publish(session: Session, catalog: Catalog, row: FunctionRow) -> str:
    """Sign the function's current version into its tenant's catalog; its target path."""
    stored = session.scalars(
        select(FunctionVersion).where(
            FunctionVersion.function_id == row.id, FunctionVersion.version == row.version
        )
    ).one()
    path = target_path(row.name, row.version)
    blob = catalog.blobs.put(io.BytesIO(bundle(row, stored)))
    custom = {"roost": {"name": row.name, "version": str(row.version), "kind": "function"}}
    catalog.tenant(row.tenant_id).add_target(path, blob, custom)
    return path


def wanted(
    functions: Iterable[tuple[str, int, str]], labels: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """``{name: {"version": N}}`` of the edge functions ``(name, version, selector)`` a
    device with ``labels`` runs."""
    return {
        name: {"version": version}
        for name, version, selector in sorted(functions)
        if _selector(selector).matches(labels)
    }


@functools.lru_cache(maxsize=1024)
def _selector(text: str) -> Selector:
    # Parsed once per placement, not once per device and pass of the hub's loop.
    return Selector.parse(text)


def reconcile(session: Session, tenant_id: str) -> list[tuple[str, Desired]]:
    """Put each active device's edge functions in its desired state; the devices whose
    desired state changed, with what to send them."""
    functions = [
        (name, version, placement)
        for name, version, placement in session.execute(
            select(FunctionRow.name, FunctionRow.version, FunctionRow.placement).where(
                FunctionRow.tenant_id == tenant_id, FunctionRow.placement != HUB
            )
        )
    ]
    changes = []
    # Only the columns the decision reads: the hub's loop runs this every few seconds.
    rows = session.execute(
        select(Device.id, Device.labels, Device.desired).where(
            Device.tenant_id == tenant_id, Device.state == "active"
        )
    ).all()
    for device_id, labels, current in rows:
        want = wanted(functions, labels)
        if (current.get(DESIRED_KEY) or {}) == want:
            continue
        device = session.get_one(Device, device_id)
        desired = {k: v for k, v in device.desired.items() if k != DESIRED_KEY}
        device.desired = {**desired, DESIRED_KEY: want} if want else desired
        device.desired_version += 1
        changes.append((device.id, desired_message(device)))
    return changes


def tenants_with_edge_functions(session: Session) -> list[str]:
    """The tenants the hub's loop reconciles (a removal reconciles its tenant at once)."""
    return sorted(
        set(session.scalars(select(FunctionRow.tenant_id).where(FunctionRow.placement != HUB)))
    )


def record_invocations(
    session: Session, tenant_id: str, device_id: str, events: Iterable[Mapping[str, Any]]
) -> None:
    """Keep the invocations a device reported (``roost.function.invoked`` events), one row
    per (function, device, key)."""
    rows = []
    for event in events:
        data = event.get("data")
        source = str(event.get("source", ""))
        if isinstance(data, dict) and source.startswith(SOURCE_PREFIX):
            rows.append((source.removeprefix(SOURCE_PREFIX), str(event.get("id", "")), data))
    if not rows:
        return
    # A device speaks for edge functions of its tenant only, never for the hub's.
    ids = dict(
        session.execute(
            select(FunctionRow.name, FunctionRow.id).where(
                FunctionRow.tenant_id == tenant_id,
                FunctionRow.name.in_({name for name, _, _ in rows}),
                FunctionRow.placement != HUB,
            )
        ).all()
    )
    values = [
        _invocation(ids[name], device_id, key, data) for name, key, data in rows if name in ids
    ]
    if not values:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Invocation).on_conflict_do_nothing(
        index_elements=["function_id", "device_id", "key"]
    )
    added = session.execute(statement.returning(Invocation.id, Invocation.function_id), values)
    prune_now_and_then(session, added)


def _invocation(
    function_id: str, device_id: str, key: str, data: Mapping[str, Any]
) -> dict[str, Any]:
    ok = data.get("ok") is True
    result = json.dumps(data.get("result"))[:RESULT_CHARS] if ok else ""
    return {
        "function_id": function_id,
        "version": _int(data.get("version")),
        "trigger": "edge",
        "started_at": device_time(data.get("started_at"), dt.datetime.now(dt.UTC)),
        "duration_ms": _number(data.get("duration_ms")),
        "ok": ok,
        "cold": data.get("cold") is True,
        "result": result,
        "error": str(data.get("error") or "")[:RESULT_CHARS],
        "output": str(data.get("output") or "")[:RESULT_CHARS],
        "device_id": device_id,
        "key": key[:255],
    }


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
