"""The rules on the hub: stored events through each tenant's engine into the outbox.

Per tenant with rules, the runner reads the events after its ``RuleCursor.seq`` from the
event store, in ``seq`` order and in batches, evaluates them with the tenant's ``Engine``
(each at the time the hub stored it) and, in ONE transaction, puts the actions of the
firings in the outbox (``ActionRow``, ``pending``, unique by idempotency key), moves the
cursor and stores the window state (``Engine.dump()``, when a window counted). A hub
stopped anywhere restarts from the cursor: no firing is lost and none is made twice.
Delivering the outbox is not this module's job.

- **Replicas.** The cursor row is the lock: ``SELECT ... FOR UPDATE SKIP LOCKED`` on
  PostgreSQL (another replica skips the tenant for now), a first write on SQLite (one
  writer at a time); and the cursor moves only from the ``seq`` the pass read. A runner
  whose windows are not those of the stored cursor (another replica moved it, or its
  own pass failed) loads them from the row before going on.
- **Rule changes.** A tenant's engine is rebuilt when the count, ids or versions of its
  rules change, or the ids or versions of its triggered hub functions; the windows carry
  over (``dump``/``load`` keeps the unchanged ones).
- **Functions' triggers.** A hub function with an event trigger or a cron is one or two
  rules more (``roost.functions.triggers``: ``fn:<name>``, ``fn:<name>@cron``), made from
  the function when the engine is built: a tenant with such functions and no rules is run
  too.
- **Wake-up.** ``run`` waits on an ``asyncio.Event`` the hub sets as soon as a
  transaction that stored events commits (``roost.events.store.when_stored``), and
  polls every ``POLL_S`` for what other replicas stored.
- **No endless loops.** The runner records no event of its own (no ``roost.rule.fired``):
  one that rules could match would make a rule fire on its own firings; the outbox is the
  record of what fired (``GET /v1/actions``). An ``emit`` action stores a new event whose
  id is the action's key, and rules see it like any other; a hub function invoked by an
  action stores the events it emits as ``<key>/<n>``. So that rules and functions reacting
  to each other's events (or one to its own) cannot go round forever, an event at the end
  of a chain of ``MAX_CHAIN`` such events is not evaluated.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from roost.db import Database, utcnow
from roost.errors import RuleError
from roost.events.models import EventRow
from roost.functions import triggers
from roost.rules.cursor import start_cursor
from roost.rules.engine import RULE_SOURCE, Engine
from roost.rules.models import ActionRow, RuleCursor, RuleRow
from roost.rules.spec import Rule, parse_rules
from roost.rules.window import Limits

log = logging.getLogger("roost.rules")

# Events evaluated in one transaction; a full batch is followed at once by the next.
BATCH = 500
# How often the runner looks for events without being woken (other replicas' events).
POLL_S = 1.0
# How often each tenant's idle window groups are dropped.
EXPIRE_S = 60.0
# An event emitted by a rule (or a function a rule invoked) reacting to an event emitted
# by a rule ... this many times over is not evaluated.
MAX_CHAIN = 8
# Events a rule or a function a rule invoked made, named after the action's key.
_CHAINED = (RULE_SOURCE, triggers.EMIT_SOURCE)
_EMITTED_ID = re.compile(r"([0-9a-f]{32})/\d+")
# Per tenant: its rules (count, sum of row ids, sum of versions) and its triggered hub
# functions ((id, version) each).
Signature = tuple[tuple[int, int, int], tuple[tuple[str, int], ...]]


@dataclass
class Progress:
    """What one pass did: events evaluated, actions put in the outbox, more to do."""

    events: int = 0
    actions: int = 0
    more: bool = False


@dataclass
class _Tenant:
    id: str
    engine: Engine
    signature: Signature
    # rule id -> (its YAML, the parsed rule): unchanged rules are not parsed again.
    parsed: dict[str, tuple[str, Rule]]
    # The cursor seq the engine's windows belong to; None: load them from the row.
    seq: int | None = None
    pending: bool = True
    expire_at: dt.datetime = field(default_factory=utcnow)  # when idle groups go next


def cloud_event(row: EventRow) -> dict[str, Any]:
    """A stored event as the CloudEvents 1.0 dict the engine reads."""
    return {
        "specversion": "1.0",
        "id": row.event_id,
        "source": row.source,
        "type": row.type,
        "subject": row.subject,
        "time": row.time.isoformat(),
        "data": row.data,
    }


class RuleRunner:
    """Runs every tenant's rules over the event store, one pass at a time."""

    def __init__(
        self,
        db: Database,
        batch: int = BATCH,
        limits: Limits | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        expire_every: float = EXPIRE_S,
    ) -> None:
        self.db = db
        self.batch = batch
        self.limits = limits
        self.clock = clock
        self.expire_every = dt.timedelta(seconds=expire_every)
        self._tenants: dict[str, _Tenant] = {}
        self._seen: int | None = None  # the newest seq whose tenant was noted

    async def run(
        self,
        wake: asyncio.Event,
        on_actions: Callable[[], None] | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        """Pass after pass: at once when ``wake`` is set, else every ``poll_s``."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll_s)
            wake.clear()
            try:
                done = await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("running the rules failed; trying again")
                await asyncio.sleep(poll_s)
                continue
            if done.actions and on_actions is not None:
                on_actions()
            if done.more:
                wake.set()

    def run_once(self) -> Progress:
        """One pass over the tenants with rules: rebuild, evaluate what is new, expire."""
        with self.db.session() as session:
            signatures = self._signatures(session)
            noted = self._new_events(session)
        for gone in set(self._tenants) - set(signatures):
            del self._tenants[gone]
        for tenant_id, signature in signatures.items():
            tenant = self._tenants.get(tenant_id)
            if tenant is None or tenant.signature != signature:
                self._tenants[tenant_id] = self._build(tenant_id, signature, tenant)
        for tenant_id in noted:
            if tenant_id in self._tenants:
                self._tenants[tenant_id].pending = True
        progress = Progress()
        for tenant in list(self._tenants.values()):
            expire = self.clock() >= tenant.expire_at
            if not (tenant.pending or tenant.seq is None or expire):
                continue
            try:
                self._advance(tenant, expire, progress)
            except Exception:
                tenant.seq = None
                log.exception("running the rules of tenant %s failed", tenant.id)
        return progress

    # -- what changed --------------------------------------------------------------------

    @staticmethod
    def _signatures(session: Session) -> dict[str, Signature]:
        """Per tenant with rules or triggered hub functions: the rules' count, sum of row
        ids and sum of versions (every change of a rule bumps its version; an added rule's
        id is larger than any removed one's), and the functions' ids and versions."""
        rows = session.execute(
            select(
                RuleRow.tenant_id, func.count(), func.sum(RuleRow.id), func.sum(RuleRow.version)
            ).group_by(RuleRow.tenant_id)
        )
        rules = {t: (int(n), int(ids), int(versions)) for t, n, ids, versions in rows}
        functions = triggers.signatures(session)
        return {t: (rules.get(t, (0, 0, 0)), functions.get(t, ())) for t in rules | functions}

    def _new_events(self, session: Session) -> set[str]:
        """The tenants with events stored since the last pass (all of them at first: a
        tenant new to this runner is looked at anyway)."""
        newest = session.scalar(select(func.coalesce(func.max(EventRow.seq), 0))) or 0
        seen, self._seen = self._seen, newest
        if seen is None or newest < seen:
            return set(self._tenants)
        if newest == seen:
            return set()
        return set(
            session.scalars(
                select(EventRow.tenant_id)
                .where(EventRow.seq > seen, EventRow.seq <= newest)
                .distinct()
            )
        )

    def _build(self, tenant_id: str, signature: Signature, old: _Tenant | None) -> _Tenant:
        """The tenant's engine for its current rules and triggered hub functions, keeping
        the windows it had."""
        with self.db.session() as session:
            rows = session.execute(
                select(RuleRow.rule_id, RuleRow.source, RuleRow.enabled)
                .where(RuleRow.tenant_id == tenant_id)
                .order_by(RuleRow.id)
            ).all()
            functions = triggers.tenant_rules(session, tenant_id)
            if old is None:
                # Rules from before cursors existed: start at the newest event.
                start_cursor(session, tenant_id, utcnow())
        cache = old.parsed if old is not None else {}
        parsed: dict[str, tuple[str, Rule]] = {}
        rules = []
        for rule_id, source, enabled in rows:
            known = cache.get(rule_id)
            if known is not None and known[0] == source:
                rule = known[1]
            else:
                try:
                    rule = parse_rules(source, f"rule {rule_id}")[0]
                except RuleError as err:  # stored by an older hub that took more
                    log.error("rule %s of tenant %s is skipped: %s", rule_id, tenant_id, err)
                    continue
            parsed[rule_id] = (source, rule)
            rules.append(dataclasses.replace(rule, enabled=enabled))
        engine = Engine([*rules, *functions], self.limits)
        tenant = _Tenant(tenant_id, engine, signature, parsed, expire_at=self.clock())
        if old is not None:
            if old.seq is not None:
                engine.load(old.engine.dump())
            tenant.seq, tenant.pending, tenant.expire_at = old.seq, old.pending, old.expire_at
        log.info(
            "rules of tenant %s: %d enabled of %d, and %d of functions' triggers",
            tenant_id,
            len(engine.rules) - len(functions),
            len(rows),
            len(functions),
        )
        return tenant

    # -- one tenant's pass ---------------------------------------------------------------

    def _advance(self, tenant: _Tenant, expire: bool, progress: Progress) -> None:
        """Evaluate the tenant's next batch, and store the actions, cursor and windows."""
        now = self.clock()
        with self.db.session() as session:
            held = _lock(session, tenant.id, now)
            if held is None:
                return  # another replica is at it; its pass moves the cursor
            newest = session.scalar(select(func.coalesce(func.max(EventRow.seq), 0))) or 0
            start = held
            if newest < held:
                # Every event was deleted and SQLite numbers them from 1 again.
                log.warning("the event store starts again at 1; rules follow it there")
                start = 0
            if tenant.seq != held:
                windows = session.scalar(
                    select(RuleCursor.windows).where(RuleCursor.tenant_id == tenant.id)
                )
                tenant.engine.load(windows or {})
            tenant.seq = None  # until this pass is committed
            rows = list(
                session.scalars(
                    select(EventRow)
                    .where(
                        EventRow.tenant_id == tenant.id,
                        EventRow.seq > start,
                        EventRow.seq <= newest,
                    )
                    .order_by(EventRow.seq)
                    .limit(self.batch)
                )
            )
            actions, counted = self._evaluate(session, tenant, rows, now)
            if expire and tenant.engine.expire(now):
                counted = True
            full = len(rows) == self.batch
            end = rows[-1].seq if full else newest
            if actions:
                _insert_actions(session, actions)
            if end != held or counted:
                values: dict[str, Any] = {"seq": end, "updated_at": now}
                if counted:
                    values["windows"] = tenant.engine.dump()
                moved = session.execute(
                    update(RuleCursor)
                    .where(RuleCursor.tenant_id == tenant.id, RuleCursor.seq == held)
                    .values(**values)
                )
                if moved.rowcount != 1:  # type: ignore[attr-defined]
                    raise _CursorMoved(tenant.id)
        tenant.seq, tenant.pending = end, full
        if expire:
            tenant.expire_at = now + self.expire_every
        progress.events += len(rows)
        progress.actions += len(actions)
        progress.more = progress.more or full

    def _evaluate(
        self, session: Session, tenant: _Tenant, rows: list[EventRow], now: dt.datetime
    ) -> tuple[list[dict[str, Any]], bool]:
        """The outbox rows of the firings, and whether any window counted."""
        actions: list[dict[str, Any]] = []
        counted = False
        engine = tenant.engine
        for row in rows:
            if row.source.startswith(_CHAINED) and _chain(session, row) >= MAX_CHAIN:
                log.warning(
                    "event %s is the %dth in a chain of rules' and functions' events; "
                    "not evaluated",
                    row.event_id,
                    MAX_CHAIN,
                )
                continue
            event = cloud_event(row)
            try:
                counted = counted or any(r.window is not None for r in engine.route(event))
                firings = engine.evaluate(event, row.received_at)
            except Exception:  # one event the engine cannot take never stops the rules
                log.exception("event %s (seq %d) skipped by the rules", row.event_id, row.seq)
                continue
            for firing in firings:
                for action in firing.actions:
                    actions.append(
                        {
                            "tenant_id": tenant.id,
                            "key": action.key,
                            "rule_id": firing.rule_id,
                            "event_id": firing.event_id[:128],
                            "kind": action.kind,
                            "fields": dict(action.fields),
                            "status": "pending",
                            "attempts": 0,
                            "next_at": now,
                            "last_error": "",
                            "created_at": now,
                        }
                    )
        return actions, counted


class _CursorMoved(Exception):
    """Another runner moved the cursor during this pass; it is rolled back and redone."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"the rules cursor of tenant {tenant_id} moved under this pass")


def _chain(session: Session, row: EventRow) -> int:
    """How many actions led to this event, up to ``MAX_CHAIN``: the id of an event a rule's
    ``emit`` made is the action's key, of one a function made ``<key>/<n>`` (the key of
    the ``invoke`` action); that action's event may be one too."""
    depth, event_id = 0, row.event_id
    while depth < MAX_CHAIN:
        emitted = _EMITTED_ID.fullmatch(event_id)
        key = emitted.group(1) if emitted else event_id
        found = session.scalar(
            select(ActionRow.event_id).where(
                ActionRow.tenant_id == row.tenant_id, ActionRow.key == key
            )
        )
        if found is None:
            return depth
        depth, event_id = depth + 1, found
    return depth


def _lock(session: Session, tenant_id: str, now: dt.datetime) -> int | None:
    """Hold the tenant's cursor for this transaction; its seq, or None when another has it."""
    where = RuleCursor.tenant_id == tenant_id
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(RuleCursor.seq).where(where).with_for_update(skip_locked=True))
    # SQLite: writing first takes the database's one write lock, so what this
    # transaction reads stays true until it commits.
    session.execute(update(RuleCursor).where(where).values(updated_at=now))
    return session.scalar(select(RuleCursor.seq).where(where))


def _insert_actions(session: Session, rows: list[dict[str, Any]]) -> None:
    """Into the outbox; an action already there (the same idempotency key) stays as it is."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(ActionRow).on_conflict_do_nothing(index_elements=["tenant_id", "key"]), rows
    )
