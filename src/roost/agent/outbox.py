"""The agent's local store: an outbox of messages the hub must get, and a few values.

SQLite in WAL mode, so other processes on the device (``roost agent emit``, apps) can add
messages while the agent runs. A message stays until the hub acknowledges its ``seq``;
unacknowledged messages are sent again with a growing delay. Standard library only.

While the device runs edge functions (the ``edge_feed`` value is true), every event put
in the outbox is also put in ``edge_inbox``, by a trigger in the same transaction
whichever process writes it: no local event escapes the functions, even one written
while the agent is down. Events the functions themselves send (source ``functions/...``)
are not fed back. ``handled`` takes an event out of the inbox and puts what the functions
made of it in the outbox, in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roost.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    sent REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edge_inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS edge_inbox_feed AFTER INSERT ON outbox
WHEN NEW.kind = 'event'
    AND EXISTS (SELECT 1 FROM kv WHERE key = 'edge_feed' AND value = 'true')
    AND coalesce(json_extract(NEW.body, '$.event.source'), '') NOT LIKE 'functions/%'
BEGIN
    INSERT INTO edge_inbox (body) VALUES (NEW.body);
END;
"""
EDGE_FEED = "edge_feed"

# Resend delays grow to this and stay there.
MAX_RESEND_S = 300.0


@dataclass(frozen=True)
class Pending:
    seq: int
    kind: str
    body: dict[str, Any]


class Outbox:
    def __init__(self, path: Path, max_messages: int = 100_000, *, durable: bool = False) -> None:
        """``durable``: each ``put`` is on disk (fsynced) when it returns, for a sender that
        is told its message is kept; otherwise it survives a crash of the agent, not
        necessarily a power cut."""
        self.path = path
        self.max_messages = max_messages
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # A small page cache: the outbox is tiny and the agent lives on small boxes.
            self._db.execute("PRAGMA cache_size=-256")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as err:
            raise ConfigError(f"cannot open the agent's store {path}: {err}") from err

    def close(self) -> None:
        self._db.close()

    def put(self, kind: str, body: dict[str, Any], now: float) -> int:
        """Add a message; when the outbox is full the oldest message makes room."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._add([(kind, body)], now)
            self._db.execute("COMMIT")
        return seq

    def _add(self, messages: list[tuple[str, dict[str, Any]]], now: float) -> int:
        """Within the caller's transaction: add messages, the oldest making room for them
        when the outbox would pass ``max_messages``. Answers the last one's seq."""
        (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        over = count + len(messages) - self.max_messages
        if over > 0:
            self._db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                (over,),
            )
        seq = 0
        for kind, body in messages:
            cursor = self._db.execute(
                "INSERT INTO outbox (kind, body, created) VALUES (?, ?, ?)",
                (kind, json.dumps(body), now),
            )
            seq = int(cursor.lastrowid or 0)
        return seq

    def due(self, now: float, resend_after: float, limit: int) -> list[Pending]:
        """Messages never sent, or sent and not acknowledged for long enough."""
        rows = self._db.execute(
            "SELECT seq, kind, body, sent, attempts FROM outbox ORDER BY seq LIMIT ?",
            (limit * 4,),
        ).fetchall()
        due = []
        for seq, kind, body, sent, attempts in rows:
            wait = min(resend_after * 2 ** max(attempts - 1, 0), MAX_RESEND_S)
            if sent is None or now - sent >= wait:
                due.append(Pending(seq, kind, json.loads(body)))
            if len(due) >= limit:
                break
        return due

    def mark_sent(self, seqs: Iterable[int], now: float) -> None:
        self._db.executemany(
            "UPDATE outbox SET sent = ?, attempts = attempts + 1 WHERE seq = ?",
            [(now, s) for s in seqs],
        )

    def reset_sent(self) -> None:
        """After a reconnect everything unacknowledged is due again."""
        self._db.execute("UPDATE outbox SET sent = NULL, attempts = 0")

    def ack(self, seqs: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def __len__(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(count)

    # -- the edge functions' inbox --------------------------------------------------------

    def inbox(self, limit: int) -> list[Pending]:
        """The oldest events waiting for the edge functions."""
        rows = self._db.execute(
            "SELECT seq, body FROM edge_inbox ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [Pending(seq, "event", json.loads(body)) for seq, body in rows]

    def to_inbox(self, body: dict[str, Any]) -> int:
        """An event for the edge functions only (a cron firing), not for the hub."""
        cursor = self._db.execute("INSERT INTO edge_inbox (body) VALUES (?)", (json.dumps(body),))
        return int(cursor.lastrowid or 0)

    def handled(self, seq: int, events: Iterable[dict[str, Any]], now: float) -> None:
        """Event ``seq`` of the inbox is done: ``events`` (``{"event": ...}`` bodies) go
        to the outbox and the inbox lets it go, together or not at all."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._add([("event", body) for body in events], now)
            self._db.execute("DELETE FROM edge_inbox WHERE seq = ?", (seq,))
            self._db.execute("COMMIT")

    def trim_inbox(self, keep: int) -> int:
        """Drop the oldest inbox events beyond ``keep``; how many went."""
        cursor = self._db.execute(
            "DELETE FROM edge_inbox WHERE seq <= (SELECT max(seq) FROM edge_inbox) - ?", (keep,)
        )
        return int(cursor.rowcount or 0)

    def get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
