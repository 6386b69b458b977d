"""Events from apps: each app the agent runs emits events on a Unix socket of its own.

The socket is ``DATA/run/apps/<app>/events.sock`` (mode 0600, in a 0700 directory: the
agent's user only, which is the user apps run as), named to the app in
``ROOST_EVENTS_SOCKET``. Under bubblewrap an app's sandbox hides the agent's data dir and
binds back only the directory of its own socket, so the socket a connection arrives on
says which app sent it: the kernel identifies the app, nothing the app says is taken for
it. (``SO_PEERCRED`` gives only a pid, to be mapped to an app through the process tree:
racy with pid reuse, and lost for a process that left the tree.) Without bubblewrap apps
run as the agent's user with the whole data dir open to them; they could speak for one
another there.

The protocol: each line an app writes is one CloudEvent 1.0 in structured JSON (UTF-8,
at most ``events_max_bytes``); each gets one line back, in order, once the event is in
the outbox on disk: ``{"ok": true, "id": ...}``, or ``{"ok": false, "error": ...}``, with
``retry_after`` (seconds) when sending the same event again later can work (the rate
limit). Blank lines are skipped; a line too long is answered and skipped, and the
connection goes on. The agent sets ``source`` to ``apps/<app>`` (the hub stores
``roost://devices/<device>/apps/<app>``), makes ``id`` and ``time`` when absent, and
checks the rest as the hub's API does (``roost.events.cloudevents``).

``app_event``, ``Bucket``, ``ok`` and ``refused`` are pure. ``AppEvents`` is the shell: it
listens, reads lines, and stores events through a connection to the outbox of its own, in
one worker thread (a commit that waits for the disk must not stall the agent's loop).
Nothing here is loaded until the device runs an app.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from roost.agent.outbox import Outbox
from roost.device import unix_address
from roost.errors import RoostError, ValidationError
from roost.events.cloudevents import parse_event
from roost.settings import AgentSettings
from roost.wire.topics import Up

log = logging.getLogger("roost.agent.events")

SOCKET_NAME = "events.sock"
# When the outbox could not take an event, the app may try again after this.
STORE_RETRY_S = 1.0


def socket_path(data_dir: Path, app: str) -> Path:
    """Where the agent whose data dir is ``data_dir`` listens for ``app``'s events."""
    return data_dir / "run" / "apps" / app / SOCKET_NAME


# -- the pure part -------------------------------------------------------------------------


def app_event(line: bytes, app: str, max_bytes: int, now: dt.datetime) -> dict[str, Any]:
    """The CloudEvent the outbox keeps for one line ``app`` sent; ``ValidationError`` (one
    line, naming the attribute at fault) when the line is not one."""
    if len(line) > max_bytes:
        raise ValidationError(too_big(len(line), max_bytes))
    try:
        raw = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # ValueError covers bad UTF-8 and JSON
        raise ValidationError(f"the event is not JSON: {str(err)[:200]}") from None
    if isinstance(raw, dict):
        raw.pop("source", None)  # the agent says who sent it, whatever the app claims
    row = parse_event(raw, "", max_bytes, now)
    return {
        "specversion": "1.0",
        "id": row["event_id"],
        "source": f"apps/{app}",
        "type": row["type"],
        "subject": row["subject"],
        "time": row["time"].isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": row["data"],
    }


def too_big(size: int, max_bytes: int) -> str:
    return f"the event is {size} bytes, more than the {max_bytes}-byte limit"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True)
class Bucket:
    """A token bucket: ``burst`` events at once, then ``rate`` a second."""

    tokens: float
    at: float

    def take(self, rate: float, burst: int, now: float) -> tuple[Bucket, float]:
        """The bucket after one event, and 0; or, when it is empty, the bucket and the
        seconds until it holds an event again."""
        tokens = min(float(burst), self.tokens + max(0.0, now - self.at) * rate)
        if tokens >= 1:
            return Bucket(tokens - 1, now), 0.0
        return Bucket(tokens, now), (1 - tokens) / rate


def ok(event_id: str) -> bytes:
    return json.dumps({"ok": True, "id": event_id}).encode() + b"\n"


def refused(error: str, retry_after: float | None = None) -> bytes:
    answer: dict[str, Any] = {"ok": False, "error": error}
    if retry_after is not None:
        answer["retry_after"] = round(retry_after, 3)
    return json.dumps(answer).encode() + b"\n"


# -- the shell -----------------------------------------------------------------------------


class AppEvents:
    """The events sockets of the apps the agent runs; an async context manager."""

    def __init__(self, settings: AgentSettings, on_stored: Callable[[], None]) -> None:
        self._settings = settings
        self._on_stored = on_stored  # wakes the agent's outbox loop
        self._servers: dict[str, asyncio.Server] = {}
        self._writers: dict[str, set[asyncio.StreamWriter]] = {}
        self._buckets: dict[str, Bucket] = {}
        # One thread, started at the first event; the outbox connection lives in it.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="app-events")
        self._outbox: Outbox | None = None

    async def __aenter__(self) -> AppEvents:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.serve(())
        await asyncio.get_running_loop().run_in_executor(self._worker, self._close_outbox)
        self._worker.shutdown()

    def path(self, app: str) -> Path:
        """The socket of ``app``."""
        return socket_path(self._settings.data_dir, app)

    async def serve(self, apps: Iterable[str]) -> None:
        """Listen for each of ``apps``; close the sockets of apps no longer among them."""
        wanted = set(apps)
        for app in sorted(self._servers.keys() - wanted):
            await self._close(app)
        for app in sorted(wanted - self._servers.keys()):
            try:
                sock = listen(self.path(app))
            except OSError as err:
                log.warning("app %s gets no events socket: %s", app, err)
                continue
            self._servers[app] = await asyncio.start_unix_server(
                functools.partial(self._connection, app),
                sock=sock,
                limit=self._settings.events_max_bytes + 1,
            )

    async def _close(self, app: str) -> None:
        server = self._servers.pop(app)
        server.close()
        for writer in self._writers.pop(app, set()):
            writer.close()
        self._buckets.pop(app, None)
        path = self.path(app)
        with contextlib.suppress(OSError):
            path.unlink()
            path.parent.rmdir()
        await server.wait_closed()

    async def _connection(
        self, app: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writers = self._writers.setdefault(app, set())
        try:
            with contextlib.suppress(ConnectionError):  # the app went away
                await self._serve(app, reader, writer, writers)
        finally:
            writers.discard(writer)
            writer.close()

    async def _serve(
        self,
        app: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        writers: set[asyncio.StreamWriter],
    ) -> None:
        """Answer an app's lines until it closes; what it was told stays true."""
        if len(writers) >= self._settings.events_max_connections:
            most = self._settings.events_max_connections
            writer.write(refused(f"app {app} has {most} connections open, the most it may"))
            await writer.drain()
            return
        writers.add(writer)
        while (line := await read_line(reader)) is not None:
            if isinstance(line, bytes) and not line.strip():
                continue
            writer.write(await self._take(app, line))
            await writer.drain()

    async def _take(self, app: str, line: bytes | int) -> bytes:
        """Check one line, store the event it holds, and say how that went."""
        limit = self._settings.events_max_bytes
        if isinstance(line, int):
            return refused(too_big(line, limit))
        try:
            event = app_event(line, app, limit, dt.datetime.now(dt.UTC))
        except ValidationError as err:
            return refused(str(err))
        rate, burst = self._settings.events_rate_per_s, self._settings.events_burst
        bucket = self._buckets.get(app) or Bucket(float(burst), time.monotonic())
        self._buckets[app], wait = bucket.take(rate, burst, time.monotonic())
        if wait:
            error = f"app {app} may emit {rate:g} events a second ({burst} at once): slow down"
            return refused(error, wait)
        try:
            await asyncio.get_running_loop().run_in_executor(self._worker, self._store, event)
        except (RoostError, sqlite3.Error, OSError, RuntimeError) as err:  # Runtime: stopping
            log.warning("could not keep an event of app %s: %s", app, err)
            return refused(f"the agent could not keep the event: {err}", STORE_RETRY_S)
        self._on_stored()
        return ok(event["id"])

    def _store(self, event: dict[str, Any]) -> None:
        """In the worker thread: the event into the outbox, on disk when this returns."""
        if self._outbox is None:
            path = self._settings.data_dir / "agent.db"
            self._outbox = Outbox(path, self._settings.outbox_max_messages, durable=True)
        self._outbox.put(Up.EVENT, {"event": event}, time.time())

    def _close_outbox(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None


async def read_line(reader: asyncio.StreamReader) -> bytes | int | None:
    """The next line (without its newline); the size of a line longer than the reader's
    limit, skipped; ``None`` at the end. A last line without a newline counts."""
    skipped = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as err:
            line = err.partial
            if not line and not skipped:
                return None
        except asyncio.LimitOverrunError as err:
            skipped += len(await reader.readexactly(err.consumed))
            continue
        if skipped:
            return skipped + len(line.rstrip(b"\n"))
        return line.rstrip(b"\n")


def listen(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` that only this user can connect to, in place of
    one an agent before left there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.bind(address)
        path.chmod(0o600)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock
