"""Edge functions on the device: verified from the signed catalog, run against local events.

The hub puts ``functions: {name: {"version": N}}`` in the desired state of the devices a
function is placed on. ``EdgeFunctions`` makes the device match it:

- each wanted version is downloaded from the tenant's signed catalog and verified (TUF,
  ``roost.agent.updates``) exactly as an app release is, checked (``parse_bundle``), and
  kept in ``DATA/functions/<name>.json``, so a device that restarts offline still has it;
- while it has functions, the outbox feeds every local event (from apps, ``roost agent
  emit``, the SDK) into an inbox in the same SQLite transaction (``roost.agent.outbox``);
  each inbox event goes to the functions whose trigger matches, a cron firing to its own
  function. The functions run in warm worker processes with their time and memory
  limits (``roost.functions.pool``, under bubblewrap when it works here, the agent's data
  dir hidden), whether the device is online or not;
- what came of an event — per function, a ``roost.function.invoked`` event (id: the
  idempotency key, ``<source>/<id>`` of the event handled) and the events it emitted with
  ``ctx.emit`` (ids ``<key>/<n>``) — goes to the outbox and the event leaves the inbox in
  one transaction. The outbox delivers them when the hub is reachable. A crash between
  running and that transaction runs the functions on the event again: the same ids, so
  the hub keeps each once.

``parse_bundle``, ``invocation_key`` and ``outputs`` are pure; ``EdgeFunctions`` is the
shell. Nothing here is loaded until the device is given a function.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.agent.outbox import EDGE_FEED, Outbox, Pending
from roost.agent.runtime import backoff
from roost.agent.updates import HubFetch, SignedUpdates
from roost.atomic import write_atomic
from roost.errors import RoostError, UpdateError, UpdateRefusedError, ValidationError
from roost.events.cloudevents import emitted_event
from roost.events.patterns import Trigger
from roost.functions.pool import Code, Outcome, Pool
from roost.settings import AgentSettings
from roost.wire.functions import INVOKED, SOURCE_PREFIX, target_path

log = logging.getLogger("roost.agent.functions")

CRON = "roost.function.cron"
# Inbox events handled per look; the inbox keeps at most this many times the outbox's size.
BATCH = 50
# Look at the inbox this often even unwoken (another process may have written to it).
POLL_S = 1.0
# A version the hub could not hand over is fetched again after 1 s, 2 s ... up to this.
RETRY_MAX_S = 300.0
# Ids longer than the hub keeps are replaced by their hash.
MAX_ID = 128
_FIELDS = ("name", "version", "entry", "files", "timeout_s", "memory_bytes", "concurrency")


@dataclass(frozen=True)
class EdgeFunction:
    """One verified version of a function, as the device runs it."""

    name: str
    version: int
    code: Code
    trigger: Trigger | None
    cron: str


def parse_bundle(raw: bytes, name: str, version: int) -> EdgeFunction:
    """The function a verified catalog file holds; ``UpdateRefusedError`` when it is not
    the named version of a function."""
    try:
        document = json.loads(raw)
        missing = [key for key in _FIELDS if key not in document]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
        files = document["files"]
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise ValueError("its files are not {path: source}")
        code = Code(
            function=f"edge/{name}",
            version=int(document["version"]),
            files=files,
            entry=str(document["entry"]),
            timeout_s=float(document["timeout_s"]),
            memory_bytes=int(document["memory_bytes"]),
            concurrency=int(document["concurrency"]),
        )
        trigger = Trigger.from_dict(document["trigger"]) if document.get("trigger") else None
        cron = str(document.get("cron") or "")
    except (ValueError, TypeError, AttributeError) as err:
        raise UpdateRefusedError(f"function {name} v{version} is not a function: {err}") from None
    if document["name"] != name or code.version != version:
        raise UpdateRefusedError(
            f"the catalog's function {name} v{version} holds {document['name']} v{code.version}"
        )
    return EdgeFunction(name, version, code, trigger, cron)


def invocation_key(event: Mapping[str, Any]) -> str:
    """The idempotency key of running functions on ``event``: its source and id."""
    return _short(f"{event.get('source', '')}/{event.get('id', '')}")


def _short(text: str) -> str:
    return text if len(text) <= MAX_ID else hashlib.sha256(text.encode()).hexdigest()


def routes(function: EdgeFunction, event: Mapping[str, Any]) -> bool:
    """Whether ``event`` starts ``function``: a cron firing its own, else its trigger."""
    if event.get("type") == CRON and str(event.get("source", "")) == "cron":
        return event.get("subject") == function.name
    return function.trigger is not None and function.trigger.matches(event)


def outputs(
    function: EdgeFunction,
    event: Mapping[str, Any],
    outcome: Outcome,
    started: dt.datetime,
    max_bytes: int,
) -> list[dict[str, Any]]:
    """The outbox bodies of one invocation: what it emitted, then its record. An emitted
    event that is not one fails the invocation (and none is sent)."""
    key = invocation_key(event)
    source = f"{SOURCE_PREFIX}{function.name}"
    emitted: list[dict[str, Any]] = []
    error = outcome.error
    for n, raw in enumerate(outcome.events if outcome.ok else ()):
        try:
            row = emitted_event(raw, _short(f"{key}/{n}"), "", max_bytes, started)
        except ValidationError as err:
            error, emitted = f"emitted event {n} is refused: {err}", []
            break
        emitted.append(
            _cloud_event(row["event_id"], source, row["type"], row["subject"], row["data"], started)
        )
    ok = outcome.ok and not error
    record = {
        "function": function.name,
        "version": function.version,
        "ok": ok,
        "result": outcome.result if ok else None,
        "error": error,
        "output": outcome.output,
        "duration_ms": round(outcome.duration_ms, 3),
        "cold": outcome.cold,
        "started_at": started.isoformat(),
        "event": {k: event.get(k) for k in ("id", "source", "type", "subject")},
    }
    invoked = _cloud_event(key, source, INVOKED, str(event.get("type", "")), record, started)
    return [{"event": e} for e in (*emitted, invoked)]


def _cloud_event(
    event_id: str, source: str, event_type: str, subject: str, data: Any, when: dt.datetime
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": when.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


Download = Callable[[str, int], bytes]
"""The I/O seam: the verified catalog file of one version of a function (name, version).
Blocking. It raises ``UpdateRefusedError`` for a file that does not verify and
``UpdateError`` when it cannot be fetched now; ``catalog_download`` is the real one."""


def catalog_download(data_dir: Path, fetch: Callable[[], HubFetch]) -> Download:
    """The seam over the tenant's signed catalog (TUF), as app releases are fetched."""

    def download(name: str, version: int) -> bytes:
        updates = SignedUpdates(data_dir, fetch())
        return updates.download(target_path(name, version)).read_bytes()

    return download


class EdgeFunctions:
    """The device's edge functions: installed from the catalog, run over the inbox."""

    def __init__(
        self,
        settings: AgentSettings,
        outbox: Outbox,
        download: Download,
        device_id: str,
        on_sent: Callable[[], None],
        on_change: Callable[[], None],
        pool: Pool | None = None,
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._download = download
        self._device_id = device_id
        self._on_sent = on_sent  # wakes the outbox loop
        self._on_change = on_change  # the report changed
        self.dir = settings.data_dir / "functions"
        self.pool = pool or Pool(hidden=[settings.data_dir], max_workers=8)
        self.functions: dict[str, EdgeFunction] = {}
        self._wanted: dict[str, int] = {}
        self._failed: dict[str, tuple[int, str]] = {}
        self._wake = asyncio.Event()
        self._crons: dict[str, asyncio.Task[None]] = {}
        self._retry_at = 0.0
        self._attempts = 0
        self._feed: bool | None = None

    # -- what the hub wants ---------------------------------------------------------------

    def want(self, functions: Mapping[str, int]) -> None:
        self._wanted = dict(functions)
        self._attempts = 0
        self._retry_at = 0.0
        self._wake.set()

    def wake(self) -> None:
        """An event may be waiting (the app events socket stored one)."""
        self._wake.set()

    def report(self) -> dict[str, Any]:
        """``{name: {"version", "state", "error"?}}`` for the reported twin."""
        report: dict[str, Any] = {}
        for name, version in sorted(self._wanted.items()):
            if name in self.functions and self.functions[name].version == version:
                report[name] = {"version": version, "state": "running"}
            elif name in self._failed and self._failed[name][0] == version:
                report[name] = {
                    "version": version,
                    "state": "failed",
                    "error": self._failed[name][1],
                }
            else:
                report[name] = {"version": version, "state": "installing"}
        return report

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Install, run and handle events until cancelled; the workers stop with it."""
        from roost.functions.sandbox import working_bwrap

        self.pool.bwrap = await asyncio.to_thread(working_bwrap)
        if self.pool.bwrap is None:
            log.warning("bubblewrap does not work here: edge functions run unsandboxed")
        self._load_installed()
        try:
            while True:
                try:
                    await self._install()
                    more = await self._handle_batch()
                except Exception:  # a bug or a full disk must not end the device's functions
                    log.exception("edge functions: a pass failed; trying again")
                    more = False
                if not more:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_S):
                            await self._wake.wait()
                    self._wake.clear()
        finally:
            for task in self._crons.values():
                task.cancel()
            await self.pool.close()

    def _load_installed(self) -> None:
        """The versions verified before, so that a device restarted offline runs them."""
        for name, version in self._wanted.items():
            path = self.dir / f"{name}.json"
            with contextlib.suppress(OSError, RoostError):
                self._use(parse_bundle(path.read_bytes(), name, version))
        if self.functions:
            self._on_change()

    async def _install(self) -> None:
        """Fetch and verify the versions wanted and not here; let go of the unwanted."""
        gone = (set(self.functions) | set(self._failed)) - set(self._wanted)
        for name in gone:
            await self._drop(name)
        if gone:
            self._on_change()
        missing = {
            n: v
            for n, v in self._wanted.items()
            if (n not in self.functions or self.functions[n].version != v)
            and self._failed.get(n, (None,))[0] != v
        }
        if self._feed is not bool(self._wanted):
            self._feed = bool(self._wanted)
            self._outbox.set(EDGE_FEED, self._feed)
        if not missing or time.monotonic() < self._retry_at:
            return
        for name, version in missing.items():
            try:
                raw = await asyncio.to_thread(self._download, name, version)  # blocking I/O
                function = parse_bundle(raw, name, version)
            except UpdateRefusedError as err:
                self._failed[name] = (version, str(err))
                log.warning("refused edge function %s v%d: %s", name, version, err)
            except UpdateError as err:
                self._attempts += 1
                self._retry_at = time.monotonic() + backoff(self._attempts, 1.0, RETRY_MAX_S)
                log.warning("cannot fetch edge function %s v%d (%s); retrying", name, version, err)
                break
            else:
                self.dir.mkdir(parents=True, exist_ok=True)
                write_atomic(self.dir / f"{name}.json", raw)
                self._use(function)
                log.info("edge function %s v%d verified and running", name, version)
        self._on_change()

    def _use(self, function: EdgeFunction) -> None:
        old = self.functions.get(function.name)
        self.functions[function.name] = function
        self._failed.pop(function.name, None)
        if old is None or old.cron != function.cron:
            self._start_cron(function)

    async def _drop(self, name: str) -> None:
        self.functions.pop(name, None)
        self._failed.pop(name, None)
        task = self._crons.pop(name, None)
        if task is not None:
            task.cancel()
        with contextlib.suppress(OSError):
            (self.dir / f"{name}.json").unlink()
        await self.pool.retire(f"edge/{name}")

    # -- cron -----------------------------------------------------------------------------

    def _start_cron(self, function: EdgeFunction) -> None:
        task = self._crons.pop(function.name, None)
        if task is not None:
            task.cancel()
        if function.cron:
            self._crons[function.name] = asyncio.create_task(
                self._cron(function.name, function.cron)
            )

    async def _cron(self, name: str, cron: str) -> None:
        """Put a firing in the inbox each time ``cron`` comes round (UTC)."""
        from croniter import croniter

        schedule = croniter(cron, dt.datetime.now(dt.UTC))
        while True:
            due: dt.datetime = schedule.get_next(dt.datetime)
            await asyncio.sleep(max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
            stamp = due.isoformat().replace("+00:00", "Z")
            event = _cloud_event(f"{name}@{stamp}", "cron", CRON, name, None, due)
            self._outbox.to_inbox({"event": event})
            self._wake.set()

    # -- events ---------------------------------------------------------------------------

    async def _handle_batch(self) -> bool:
        """Handle the oldest inbox events; whether there may be more."""
        pending = self._outbox.inbox(BATCH)
        if len(pending) == BATCH:  # a backlog: keep it within the store's bound
            dropped = self._outbox.trim_inbox(self._settings.outbox_max_messages)
            if dropped:
                log.warning("the edge functions' inbox was full: dropped its %d oldest", dropped)
                pending = self._outbox.inbox(BATCH)
        for item in pending:
            await self._handle(item)
        return len(pending) == BATCH

    async def _handle(self, item: Pending) -> None:
        event = item.body.get("event")
        if not isinstance(event, dict):
            self._outbox.handled(item.seq, (), time.time())
            return
        chosen = [f for f in self.functions.values() if routes(f, event)]
        results = await asyncio.gather(*(self._invoke(f, event) for f in chosen))
        self._outbox.handled(item.seq, [body for bodies in results for body in bodies], time.time())
        if chosen:
            self._on_sent()

    async def _invoke(self, function: EdgeFunction, event: dict[str, Any]) -> list[dict[str, Any]]:
        started = dt.datetime.now(dt.UTC)
        ctx = {
            "function": function.name,
            "version": function.version,
            "device": self._device_id,
            "trigger": "cron" if event.get("type") == CRON else "event",
            "key": invocation_key(event),
        }
        outcome = await self.pool.invoke(function.code, event, ctx)
        if not outcome.ok:
            log.info(
                "edge function %s v%d failed: %s", function.name, function.version, outcome.error
            )
        return outputs(function, event, outcome, started, self._settings.events_max_bytes)
