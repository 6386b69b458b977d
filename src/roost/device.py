"""For apps on a Roost device: send events to the hub through the device's agent.

::

    from roost import device

    device.emit("home.bp.reading", {"systolic": 150, "diastolic": 95}, subject="alice")

The agent gives each app it runs a Unix socket of its own and names it in the app's
``ROOST_EVENTS_SOCKET``. ``emit`` writes one CloudEvent on it as one line of JSON and
reads one line back: ``{"ok": true, "id": ...}`` once the event is in the agent's outbox
on disk (from there it reaches the hub at least once, and the hub keeps it once per
id), or ``{"ok": false, "error": ..., "retry_after": ...}``. The agent sets the event's
``source`` to the app (``roost://devices/<device>/apps/<app>`` at the hub): an app
speaks only for itself. Any language can speak this; see docs/apps.md.

Standard library only (and ``roost.errors``): an app that carries the ``roost`` package,
or just this file and ``errors.py`` in a ``roost`` folder, can import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from time import monotonic, sleep
from typing import Any

from roost.errors import ConfigError, EventRefusedError

SOCKET_ENV = "ROOST_EVENTS_SOCKET"
# The longest path a Unix socket address takes (sun_path, with its NUL).
_MAX_UNIX_PATH = 107
# An answer is one short line.
_MAX_ANSWER = 64 * 1024


def emit(
    type: str,
    data: Any = None,
    subject: str | None = None,
    *,
    id: str | None = None,
    time: str | None = None,
    timeout: float = 10.0,
) -> str:
    """Send one event to the hub through this device's agent; its id, once the agent has
    it on disk.

    ``data`` is any JSON value; ``time`` an RFC 3339 timestamp (default: now). Give ``id``
    to send an event again safely (the hub keeps one event per id). A rate limit is
    waited out, the same event sent again, for up to ``timeout`` seconds. Raises
    ``EventRefusedError`` (why, in one line) when the agent does not take the event, and
    ``ConfigError`` when there is no agent to send it to.
    """
    event: dict[str, Any] = {"type": type, "id": id or str(uuid.uuid4())}
    for key, value in (("subject", subject), ("time", time), ("data", data)):
        if value is not None:
            event[key] = value
    try:
        line = json.dumps(event, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as err:
        raise EventRefusedError(f"the event is not JSON: {err}") from err
    deadline = monotonic() + timeout
    while True:
        answer = _send(line, deadline)
        if answer.get("ok") is True:
            return str(answer.get("id"))
        error = str(answer.get("error") or "the agent refused the event")
        retry = answer.get("retry_after")
        wait = float(retry) if isinstance(retry, int | float) and retry >= 0 else None
        if wait is None or monotonic() + wait > deadline:
            raise EventRefusedError(error, wait)
        sleep(wait)


def _send(line: bytes, deadline: float) -> dict[str, Any]:
    """One line to the agent's events socket, one answer back."""
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        raise ConfigError(f"{SOCKET_ENV} is not set: only an app a Roost agent runs can emit")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(0.1, deadline - monotonic()))
            with unix_address(path) as address:
                sock.connect(address)
            sock.sendall(line)
            with sock.makefile("rb") as reader:
                answer = reader.readline(_MAX_ANSWER)
    except OSError as err:
        raise ConfigError(f"the agent's events socket {path}: {err}") from err
    try:
        value = json.loads(answer)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"the agent's events socket {path} answered {answer[:100]!r}")
    return value


@contextlib.contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """An address for the Unix socket at ``path`` that fits the kernel's 107 bytes: the
    path itself, or, when it is longer, the same file through an open descriptor of its
    directory (``/proc/self/fd/N/name``), valid inside the ``with``."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _MAX_UNIX_PATH:
        yield text
        return
    directory = os.open(os.path.dirname(text) or ".", os.O_PATH)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(text)}"
    finally:
        os.close(directory)
