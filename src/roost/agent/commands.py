"""The commands an agent answers. Each handler returns a JSON value or raises.

An unknown command is answered with an error, never with silence.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from roost import __version__

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

LOG_LINES_MAX = 1000


class UnknownCommandError(Exception):
    """A command this agent does not know; answered with an error reply."""


def tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with path.open(errors="replace") as f:
        return [line.rstrip("\n") for line in deque(f, maxlen=lines)]


class CommandTable:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        self._handlers[name] = handler

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    async def run(self, name: str, args: dict[str, Any]) -> Any:
        handler = self._handlers.get(name)
        if handler is None:
            raise UnknownCommandError(
                f"unknown command {name!r}; this agent knows {', '.join(self.names)}"
            )
        return await handler(args)


async def ping(_args: dict[str, Any]) -> Any:
    return {"pong": True, "time": time.time(), "agent_version": __version__}


def logs_handler(log_path: Path) -> Handler:
    async def logs(args: dict[str, Any]) -> Any:
        lines = int(args.get("lines", 100))
        lines = max(1, min(lines, LOG_LINES_MAX))
        return {"lines": tail(log_path, lines)}

    return logs
