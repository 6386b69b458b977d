"""App output on disk: ``<log_dir>/<app>.log``, rotated by size, and its tail.

An app's stdout and stderr share one pipe; ``pump`` copies it into a ``RotatingLog``.
When a write would take the file past ``max_bytes`` the file becomes ``<app>.log.1``,
older ones shift up, and only ``keep`` rotated files stay. ``tail`` reads the last lines
across the current and rotated files, for ``roost app logs``.

Writes are plain blocking appends to a local file, done in the event loop on purpose:
each is a few kilobytes at most, and an executor hop per chunk would cost more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from pathlib import Path

from roost.errors import AppError

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_KEEP = 3
_READ_CHUNK = 64 << 10


def log_path(log_dir: Path, app: str, generation: int = 0) -> Path:
    """The current log (generation 0) or a rotated one (1 is the newest rotated)."""
    name = f"{app}.log" if generation == 0 else f"{app}.log.{generation}"
    return log_dir / name


class RotatingLog:
    """Appends bytes to an app's log, rotating by size."""

    def __init__(
        self, log_dir: Path, app: str, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        if max_bytes < 1 or keep < 0:
            raise AppError("log max_bytes must be >= 1 and keep >= 0")
        self.log_dir, self.app, self.max_bytes, self.keep = log_dir, app, max_bytes, keep
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._file = log_path(log_dir, app).open("ab")
        except OSError as err:
            raise AppError(f"app {app}: cannot open its log in {log_dir}: {err}") from err
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate first when it would not fit. Disk errors are dropped:
        an app must not die because its log could not be written."""
        with contextlib.suppress(OSError):
            while data:
                room = self.max_bytes - self._size
                if room <= 0 or (self._size and len(data) > room and b"\n" not in data[:room]):
                    self._rotate()
                    continue
                # Cut at the last line end that fits, so a line stays in one file.
                cut = len(data) if len(data) <= room else data.rfind(b"\n", 0, room) + 1 or room
                self._file.write(data[:cut])
                self._size += cut
                data = data[cut:]
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for generation in range(self.keep, 0, -1):
            older = log_path(self.log_dir, self.app, generation - 1)
            if older.exists():
                os.replace(older, log_path(self.log_dir, self.app, generation))
        if self.keep == 0:
            log_path(self.log_dir, self.app).unlink(missing_ok=True)
        self._file = log_path(self.log_dir, self.app).open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


async def pump(stream: asyncio.StreamReader, log: RotatingLog) -> None:
    """Copy a process's output into its log until the pipe closes."""
    while chunk := await stream.read(_READ_CHUNK):
        log.write(chunk)


def tail(log_dir: Path, app: str, lines: int = 100) -> list[str]:
    """The last ``lines`` lines of an app's output, oldest first, across rotated files."""
    if lines <= 0:
        return []
    found: deque[str] = deque(maxlen=lines)
    generations = []
    generation = 0
    while (path := log_path(log_dir, app, generation)).exists() or generation == 0:
        if path.exists():
            generations.append(path)
        generation += 1
    collected: list[str] = []
    # Newest file first; stop reading older files once enough lines are in hand.
    for path in generations:
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        collected = text.splitlines() + collected
        if len(collected) >= lines:
            break
    found.extend(collected)
    return list(found)
