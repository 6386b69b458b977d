"""Health checks of running apps: the probes (I/O) and the verdict (pure).

``HealthTracker`` is pure: it takes probe results with the time they were taken and says
whether the app is healthy, ignoring failures during ``grace_s`` after a start and calling
it unhealthy only after ``retries`` failures in a row. The probes are the thin shell:

- http: ``GET http://127.0.0.1:<port><path>`` over asyncio streams; 2xx/3xx is healthy.
- tcp: a connection to ``127.0.0.1:<port>`` is accepted.
- command: the command exits 0 within ``timeout_s`` (its whole session is killed if not).

Every probe answers ``True`` or ``False`` and never raises for an unhealthy app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from roost.agent.supervisor.spec import HealthCheck

# Enough for any status line; a longer one is not HTTP we understand.
_MAX_STATUS_LINE = 4096


@dataclass(frozen=True)
class HealthTracker:
    """The health verdict of one run of an app; ``observe`` returns a new tracker."""

    check: HealthCheck
    started_at: float
    failures: int = 0
    healthy: bool | None = None

    def observe(self, ok: bool, now: float) -> HealthTracker:
        """Account one probe result taken at ``now``."""
        if ok:
            return replace(self, failures=0, healthy=True)
        if now - self.started_at < self.check.grace_s:
            return self
        failures = self.failures + 1
        if failures >= self.check.retries:
            return replace(self, failures=failures, healthy=False)
        return replace(self, failures=failures)


async def probe_http(port: int, path: str, timeout_s: float) -> bool:
    """GET the path on 127.0.0.1:port; healthy on a 2xx or 3xx status."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
                writer.write((request + "Connection: close\r\n\r\n").encode("ascii"))
                await writer.drain()
                line = await reader.readuntil(b"\n")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False
    return _status_ok(line[:_MAX_STATUS_LINE])


def _status_ok(status_line: bytes) -> bool:
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False
    return 200 <= int(parts[1]) < 400


async def probe_tcp(port: int, timeout_s: float) -> bool:
    """Whether 127.0.0.1:port accepts a connection."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return True


async def probe_command(
    argv: tuple[str, ...], cwd: Path, env: Mapping[str, str], timeout_s: float
) -> bool:
    """Whether ``argv`` exits 0 within the timeout; on timeout its session is killed."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            return await proc.wait() == 0
    except TimeoutError:
        return False
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def probe(
    check: HealthCheck, command: tuple[str, ...], cwd: Path, env: Mapping[str, str]
) -> bool:
    """Run one probe of ``check``; ``command`` is the check's command as launched."""
    if check.kind == "http":
        assert check.port is not None  # HealthCheck validates this
        return await probe_http(check.port, check.path, check.timeout_s)
    if check.kind == "tcp":
        assert check.port is not None
        return await probe_tcp(check.port, check.timeout_s)
    return await probe_command(command, cwd, env, check.timeout_s)
