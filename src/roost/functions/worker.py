"""One warm worker of a hub function: imports the function's code once, then handles
invocations over its stdin/stdout until the pool closes the pipe.

Run by the pool as a script (``python -I worker.py MEMORY_BYTES``), standard library
only, so a cold start is an interpreter and this file. Messages either way are a 4-byte
big-endian length and a JSON object:

- first in: ``{"files": {relative path: source}, "entry": module}`` -> ``{"ok": true}``
  or ``{"ok": false, "error": ...}`` (the import failed);
- then per invocation: ``{"event": ..., "ctx": {...}}`` -> ``{"ok": true, "result": ...,
  "output": ..., "events": [...]}`` or ``{"ok": false, "error": ..., "output": ...}``.

``ctx`` is the dict the pool sent, with one method: ``ctx.emit(type, data=None,
subject=None)`` adds an event to those the invocation hands back (``events``, at most
``MAX_EMITTED``; a failed invocation emits none). Whoever ran the function stores them.

What the function prints is captured per invocation (``output``, its tail kept). The
address-space limit is set before any of the function's code runs; a ``MemoryError``
is reported and the worker exits, so the pool replaces it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import traceback
from typing import Any, BinaryIO

OUTPUT_TAIL = 4000  # characters of captured output sent back
MAX_EMITTED = 100  # events one invocation may emit
_HEADER = struct.Struct(">I")


def read_message(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    return json.loads(stream.read(size))


def write_message(stream: BinaryIO, message: Any) -> None:
    data = json.dumps(message, default=str).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


class Context(dict[str, Any]):
    """What a function knows of its invocation (``ctx["function"]``, ``ctx["key"]``...),
    and ``emit`` for the events it wants to send."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.emitted: list[dict[str, Any]] = []

    def emit(self, type: str, data: Any = None, subject: str | None = None) -> None:
        """Send an event once this invocation has succeeded."""
        if not isinstance(type, str) or not type:
            raise ValueError("emit: the event type must be a non-empty string")
        if subject is not None and not isinstance(subject, str):
            raise ValueError("emit: the subject must be a string")
        if len(self.emitted) >= MAX_EMITTED:
            raise ValueError(f"emit: an invocation emits at most {MAX_EMITTED} events")
        json.dumps(data)  # a value that is not JSON fails here, where the function called
        self.emitted.append({"type": type, "subject": subject or "", "data": data})


def _load(message: dict[str, Any], home: str) -> Any:
    for relative, text in message["files"].items():
        path = os.path.join(home, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    sys.path.insert(0, home)
    os.chdir(home)
    return importlib.import_module(message["entry"])


def _error() -> str:
    kind, value, _ = sys.exc_info()
    lines = traceback.format_exc().rstrip().splitlines()
    where = next(
        (line.strip() for line in reversed(lines) if line.strip().startswith('File "')), ""
    )
    where = where.replace(os.getcwd() + os.sep, "")  # the function's own file names
    name = kind.__name__ if kind is not None else "Error"
    return f"{name}: {value}" + (f" ({where})" if where else "")


def main() -> None:
    home = tempfile.mkdtemp(prefix="roost-fn-")
    try:
        serve(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def serve(home: str) -> None:
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    # The protocol keeps the real stdout; anything written to fd 1 goes to stderr.
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    channel_in = sys.stdin.buffer
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    first = read_message(channel_in)
    if first is None:
        return
    try:
        module = _load(first, home)
        handle = module.handle
    except BaseException:
        write_message(channel_out, {"ok": False, "error": _error()})
        return
    write_message(channel_out, {"ok": True})
    while (message := read_message(channel_in)) is not None:
        captured = io.StringIO()
        reply: dict[str, Any]
        ctx = Context(message["ctx"])
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                result = handle(message["event"], ctx)
            json.dumps(result)
            reply = {"ok": True, "result": result, "events": ctx.emitted}
        except MemoryError:
            captured = io.StringIO()  # free what is possible before answering
            reply = {"ok": False, "error": "MemoryError: the function ran out of memory"}
            reply["output"] = ""
            write_message(channel_out, reply)
            return
        except BaseException:
            reply = {"ok": False, "error": _error()}
        reply["output"] = captured.getvalue()[-OUTPUT_TAIL:]
        write_message(channel_out, reply)


if __name__ == "__main__":
    main()
