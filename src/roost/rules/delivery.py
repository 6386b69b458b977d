"""The durable outbox of rules' actions (``ActionRow``), delivered at least once.

The rules service writes one ``pending`` row per action of a firing (``next_at`` now,
``key`` the idempotency key) in the same transaction as the engine's cursor, then calls
``Delivery.notify()``: a cheap, thread-safe nudge that wakes the loop at once. Without a
nudge (actions another hub wrote, retries after a restart) the loop still looks every
``delivery_poll_s``.

A try goes like this:

1. **claim**: due rows (``pending``, ``next_at <= now``) are taken in one statement that
   counts the try (``attempts + 1``) and moves ``next_at`` past a lease. On PostgreSQL
   the rows are picked ``FOR UPDATE SKIP LOCKED``, so several hubs never take the same
   row; on SQLite the statement runs under the database's single write lock. A hub that
   dies during a try leaves its rows to be taken again once the lease is over.
2. **send**: up to ``delivery_concurrency`` at once (``roost.rules.senders``).
3. **settle** (pure, ``settle``): delivered; or retried at ``next_at`` after a random
   delay up to ``base * 2^(tries - 1)``, at most ``cap`` (full jitter); or, after a
   permanent failure or the last try, ``dead``: a dead letter with its ``last_error``.
   Results are written in batches, and only by the hub whose claim is still current
   (the row's ``attempts`` is the one it claimed).

Dead letters stay until replayed or dropped (``roost.rules.deadletters``); delivered rows
go after the event retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
from sqlalchemy import and_, case, literal, select, update
from sqlalchemy.orm import Session

from roost.db import Database, UTCDateTime, delete_oldest, utcnow
from roost.errors import DeliveryError
from roost.rules.models import ActionRow
from roost.rules.secrets import SecretStore
from roost.rules.senders import InvokeFunction, Publish, SendCommand, Senders
from roost.settings import HubSettings

log = logging.getLogger("roost.rules.delivery")

# How long a claimed row is left to the hub that claimed it: past the longest try (a
# webhook's 60 s, SMTP's 60 s; a command's own timeout up to 10 min), plus a margin.
LEASE = dt.timedelta(seconds=180)
COMMAND_LEASE = dt.timedelta(seconds=660)
PRUNE_EVERY_S = 3600.0
STOPPED = "the hub stopped during this try"


# -- the policy (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_s: float
    cap_s: float

    @classmethod
    def of(cls, settings: HubSettings) -> RetryPolicy:
        return cls(
            settings.delivery_max_attempts,
            settings.delivery_backoff_base_s,
            settings.delivery_backoff_cap_s,
        )

    def ceiling(self, attempt: int) -> float:
        """The longest wait after try number ``attempt`` (1, 2, ...) failed."""
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 62))

    def delay(self, attempt: int, rand: float) -> float:
        """Full jitter: ``rand`` (uniform in [0, 1)) of the ceiling."""
        return rand * self.ceiling(attempt)


@dataclass(frozen=True)
class Settlement:
    """What becomes of a row after a try: its status, when, and what went wrong."""

    status: str  # delivered, pending or dead
    at: dt.datetime  # delivered_at, the next try, or when it died
    error: str = ""


def settle(
    attempt: int,
    error: DeliveryError | None,
    policy: RetryPolicy,
    now: dt.datetime,
    rand: float,
    note: str = "",
) -> Settlement:
    """The outcome of try number ``attempt``: ``error`` None when it was delivered."""
    if error is None:
        return Settlement("delivered", now, note)
    if error.permanent:
        return Settlement("dead", now, error.message)
    if attempt >= policy.max_attempts:
        tries = "1 try" if attempt == 1 else f"{attempt} tries"
        return Settlement("dead", now, f"gave up after {tries}: {error.message}")
    delay = policy.delay(attempt, rand)
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, policy.cap_s))
    return Settlement("pending", now + dt.timedelta(seconds=delay), error.message)


# -- the outbox in the database ----------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A row this hub claimed for one try (``attempts`` counts it)."""

    id: int
    tenant_id: str
    key: str
    rule_id: str
    event_id: str
    kind: str
    fields: Mapping[str, Any]
    attempts: int


def claim(session: Session, now: dt.datetime, limit: int) -> list[Claimed]:
    """Take up to ``limit`` due rows, oldest due first, for one try each."""
    due = (
        select(ActionRow.id)
        .where(ActionRow.status == "pending", ActionRow.next_at <= now)
        .order_by(ActionRow.next_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    lease = case(
        (ActionRow.kind == "command", literal(now + COMMAND_LEASE, UTCDateTime())),
        else_=literal(now + LEASE, UTCDateTime()),
    )
    statement = (
        update(ActionRow)
        .where(ActionRow.id.in_(due), ActionRow.status == "pending")
        .values(attempts=ActionRow.attempts + 1, next_at=lease)
        .returning(
            ActionRow.id,
            ActionRow.tenant_id,
            ActionRow.key,
            ActionRow.rule_id,
            ActionRow.event_id,
            ActionRow.kind,
            ActionRow.fields,
            ActionRow.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    return [Claimed(*row) for row in session.execute(statement)]


def record(session: Session, results: list[tuple[Claimed, Settlement]]) -> int:
    """Write the settlements of tries still current; how many were written."""
    written = 0
    for claimed, settlement in results:
        values: dict[str, Any] = {
            "status": settlement.status,
            "next_at": settlement.at,
            "last_error": settlement.error,
        }
        if settlement.status == "delivered":
            values["delivered_at"] = settlement.at
        result = session.execute(
            update(ActionRow)
            .where(
                ActionRow.id == claimed.id,
                ActionRow.status == "pending",
                ActionRow.attempts == claimed.attempts,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        written += result.rowcount  # type: ignore[attr-defined]
    return written


def prune(session: Session, cutoff: dt.datetime, batch: int = 10_000) -> int:
    """Delete up to ``batch`` rows delivered before ``cutoff``; how many went."""
    delivered = and_(ActionRow.status == "delivered", ActionRow.delivered_at < cutoff)
    return delete_oldest(session, ActionRow.id, delivered, batch)


# -- the loop ----------------------------------------------------------------------------


class Delivery:
    """Delivers the outbox: ``async with Delivery(...)`` (or ``start``/``stop``) runs it."""

    def __init__(
        self,
        db: Database,
        settings: HubSettings,
        secrets: SecretStore,
        send_command: SendCommand,
        publish: Publish,
        rand: Callable[[], float] = random.random,
        invoke_function: InvokeFunction | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.secrets = secrets
        self.policy = RetryPolicy.of(settings)
        self._send_command = send_command
        self._publish = publish
        self._rand = rand
        self.invoke_function = invoke_function
        self._limit = settings.delivery_concurrency
        # A full loop claims again once this many slots are free, not at every one.
        self._refill = max(1, self._limit // 4)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._results: list[tuple[Claimed, Settlement]] = []
        self._results_wanted = asyncio.Event()
        self._retries: list[dt.datetime] = []  # a heap of the next tries this hub set
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    def notify(self) -> None:
        """New actions are in the outbox: look now. Cheap; safe from any thread."""
        loop = self._loop
        if loop is None:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._senders = Senders(
            self.db,
            self.settings,
            self.secrets,
            self._http,
            self._send_command,
            self._publish,
            self.invoke_function,
        )
        self._tasks = [
            asyncio.create_task(self._claim_loop()),
            asyncio.create_task(self._record_loop()),
            asyncio.create_task(self._prune_loop()),
        ]

    async def stop(self) -> None:
        """Stop trying; tries cut short are due again at once (for this hub or another)."""
        for task in [*self._tasks, *self._running]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._running, return_exceptions=True)
        if self._results:
            try:
                await asyncio.to_thread(self._record, self._results)
            except Exception:
                log.exception("recording the last deliveries failed; their leases will run out")
        if self._http is not None:
            await self._http.aclose()
        self._loop = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- claiming and trying ---------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            free = self._limit - len(self._running)
            now = utcnow()
            claimed: list[Claimed] = []
            if free > 0:
                try:
                    claimed = await asyncio.to_thread(self._claim, now, free)
                except Exception:
                    log.exception("claiming actions to deliver failed; trying again")
                    await asyncio.sleep(1.0)
                    continue
            for action in claimed:
                task = asyncio.create_task(self._try(action))
                self._running.add(task)
                task.add_done_callback(self._finished)
            if free > 0 and len(claimed) == free:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_timeout(now))

    def _idle_timeout(self, claimed_at: dt.datetime) -> float:
        """Until the next try this hub knows of, at most the poll interval."""
        while self._retries and self._retries[0] <= claimed_at:
            heapq.heappop(self._retries)
        timeout = self.settings.delivery_poll_s
        if self._retries:
            timeout = min(timeout, (self._retries[0] - utcnow()).total_seconds())
        return max(0.0, timeout)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if len(self._running) == self._limit - self._refill:
            self._wake.set()  # enough slots are free again

    def _claim(self, now: dt.datetime, limit: int) -> list[Claimed]:
        with self.db.session() as session:
            return claim(session, now, limit)

    async def _try(self, action: Claimed) -> None:
        error: DeliveryError | None = None
        note: str | None = None
        try:
            note = await self._senders.send(action)
        except DeliveryError as err:
            error = err
        except asyncio.CancelledError:
            self._done(action, Settlement("pending", utcnow(), STOPPED))
            raise
        except Exception as err:
            log.exception("delivering action %s (rule %s) failed", action.id, action.rule_id)
            error = DeliveryError(f"{type(err).__name__}: {err}")
        settlement = settle(action.attempts, error, self.policy, utcnow(), self._rand(), note or "")
        if settlement.status == "dead":
            log.warning(
                "%s action %s of rule %s is a dead letter: %s",
                action.kind,
                action.id,
                action.rule_id,
                settlement.error,
            )
        self._done(action, settlement)

    # -- recording -------------------------------------------------------------------------

    def _done(self, action: Claimed, settlement: Settlement) -> None:
        self._results.append((action, settlement))
        self._results_wanted.set()

    async def _record_loop(self) -> None:
        while True:
            await self._results_wanted.wait()
            self._results_wanted.clear()
            batch, self._results = self._results, []
            try:
                await asyncio.to_thread(self._record, batch)
            except Exception:
                log.exception("recording %d deliveries failed; trying again", len(batch))
                self._results[:0] = batch
                self._results_wanted.set()
                await asyncio.sleep(1.0)
                continue
            retries = [s.at for _, s in batch if s.status == "pending"]
            for at in retries:
                heapq.heappush(self._retries, at)
            if retries:
                self._wake.set()  # to sleep until the earliest of them

    def _record(self, batch: list[tuple[Claimed, Settlement]]) -> None:
        with self.db.session() as session:
            written = record(session, batch)
        if written < len(batch):
            log.info("%d deliveries were taken over by another try", len(batch) - written)

    async def _prune_loop(self) -> None:
        """Delete delivered rows older than the event retention (dead letters stay)."""
        while True:
            try:
                await asyncio.to_thread(self._prune)
            except Exception:
                log.exception("deleting old delivered actions failed")
            await asyncio.sleep(PRUNE_EVERY_S)

    def _prune(self) -> None:
        cutoff = utcnow() - dt.timedelta(days=self.settings.event_retention_days)
        self.db.delete_in_batches(lambda session: prune(session, cutoff))
