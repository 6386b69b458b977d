"""Warm worker processes for the hub's functions, with their limits.

``Pool.invoke(code, event, ctx)`` runs one invocation: an idle worker that has already
imported that version of the function is reused (warm), else one is started (cold: an
interpreter, ``worker.py``, the function's import). At most ``code.concurrency``
invocations of a function run at once; the others wait their turn. A worker that takes
longer than ``code.timeout_s`` is killed (its whole process group) and the invocation
reported as timed out; one that dies or runs out of memory is reported and dropped. The
next invocation starts a fresh worker: the pool, and the hub, go on.

Workers run under bubblewrap when it works here (``roost.agent.supervisor.isolation``'s
detection and command line, as apps do on devices): the root read-only, ``/tmp``
private, the hub's data dir (``hidden``) an empty tmpfs, no network unless the function
may have it, a PID namespace of their own. The address space is bounded (``RLIMIT_AS``,
set by the worker before the function's code runs). Idle workers beyond ``max_workers``
are stopped, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.agent.supervisor.isolation import bwrap_args
from roost.agent.supervisor.spec import RunSpec
from roost.functions import worker as worker_module

WORKER = Path(worker_module.__file__).resolve()
PYTHON = os.path.realpath(sys.executable)
_HEADER = worker_module._HEADER
_MAX_REPLY = 64 * 1024 * 1024
_START_TIMEOUT_S = 10.0  # an interpreter's start and the function's import
_STOP_S = 1.0  # how long an idle worker told to stop may take before it is killed


@dataclass(frozen=True)
class Code:
    """One version of one function, as a worker loads it, with its limits."""

    function: str  # unique in the hub, e.g. "<tenant>/<name>"
    version: int
    files: Mapping[str, str]
    entry: str = "main"
    timeout_s: float = 5.0
    memory_bytes: int = 128 << 20
    concurrency: int = 4
    network: bool = False


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: Any = None
    error: str = ""
    output: str = ""
    duration_ms: float = 0.0
    cold: bool = False
    # What the function emitted with ctx.emit: {"type", "subject", "data"} each.
    events: tuple[dict[str, Any], ...] = ()


class _WorkerGone(Exception):
    """The worker closed its pipe (it died)."""


@dataclass(eq=False)
class _Worker:
    process: asyncio.subprocess.Process
    function: str
    version: int
    started: float = field(default_factory=time.monotonic)

    async def send(self, message: Any) -> None:
        assert self.process.stdin is not None
        data = json.dumps(message, default=str).encode()
        self.process.stdin.write(_HEADER.pack(len(data)) + data)
        try:
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise _WorkerGone from None

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(_HEADER.size)
            size = _HEADER.unpack(header)[0]
            if size > _MAX_REPLY:
                raise _WorkerGone
            reply: dict[str, Any] = json.loads(await self.process.stdout.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise _WorkerGone from None
        return reply

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """End the worker by closing its pipe (it removes its files), killed if it lingers."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), _STOP_S)
        except TimeoutError:
            await self.died()

    async def died(self) -> str:
        """Why the worker is gone: its exit status, once reaped."""
        self.kill()
        code = await self.process.wait()
        return f"signal {-code}" if code < 0 else f"exit code {code}"


class Pool:
    def __init__(
        self,
        *,
        hidden: Sequence[Path] = (),
        bwrap: str | None = None,
        max_workers: int = 16,
        allow_network: bool = False,
    ) -> None:
        self.hidden = tuple(Path(p) for p in hidden)
        self.bwrap = bwrap
        self.max_workers = max_workers
        self.allow_network = allow_network
        self._idle: dict[str, list[_Worker]] = {}
        self._busy: set[_Worker] = set()
        self._turns: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.stats = {"cold_starts": 0, "warm": 0, "killed": 0, "died": 0}
        # Unsandboxed workers write the function's files here (removed at close);
        # sandboxed ones in their private /tmp.
        self.tmp = Path(tempfile.mkdtemp(prefix="roost-functions-"))

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def workers(self) -> int:
        return len(self._busy) + sum(len(w) for w in self._idle.values())

    async def invoke(self, code: Code, event: Any, ctx: Mapping[str, Any]) -> Outcome:
        async with self._turn(code):
            return await self._invoke(code, event, ctx)

    def _turn(self, code: Code) -> asyncio.Semaphore:
        limit, turn = self._turns.get(code.function, (0, None))
        if turn is None or limit != code.concurrency:
            turn = asyncio.Semaphore(code.concurrency)
            self._turns[code.function] = (code.concurrency, turn)
        return turn

    async def _invoke(self, code: Code, event: Any, ctx: Mapping[str, Any]) -> Outcome:
        began = time.perf_counter()
        worker = self._take_idle(code)
        cold = worker is None
        if worker is None:
            started = await self._start(code)
            if isinstance(started, Outcome):
                return started
            worker = started
        self._busy.add(worker)
        keep = False
        try:
            await worker.send({"event": event, "ctx": dict(ctx)})
            reply = await asyncio.wait_for(worker.receive(), code.timeout_s)
            keep = not reply.get("error", "").startswith("MemoryError")
            return _outcome(reply, began, cold)
        except TimeoutError:
            self.stats["killed"] += 1
            error = f"timed out after {code.timeout_s:g}s; the worker was killed"
            return Outcome(ok=False, error=error, duration_ms=_ms(began), cold=cold)
        except _WorkerGone:
            self.stats["died"] += 1
            why = await worker.died()
            error = f"the function's worker died ({why}); memory limit or crash"
            return Outcome(ok=False, error=error, duration_ms=_ms(began), cold=cold)
        finally:
            self._busy.discard(worker)
            if keep and worker.process.returncode is None:
                self._idle.setdefault(code.function, []).append(worker)
            else:
                await worker.died()
            if cold:
                self.stats["cold_starts"] += 1
            else:
                self.stats["warm"] += 1

    def _take_idle(self, code: Code) -> _Worker | None:
        idle = self._idle.get(code.function, [])
        while idle:
            worker = idle.pop()
            if worker.version == code.version and worker.process.returncode is None:
                return worker
            self._reap(worker)  # an older version, or dead
        return None

    def _reap(self, worker: _Worker) -> None:
        """Stop a worker in the background."""
        task = asyncio.get_running_loop().create_task(worker.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _start(self, code: Code) -> _Worker | Outcome:
        began = time.perf_counter()
        self._make_room()
        argv = self.argv(code)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            env={
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "TMPDIR": "/tmp" if self.sandboxed else str(self.tmp),  # noqa: S108
            },
            cwd="/",
        )
        worker = _Worker(process, code.function, code.version)
        try:
            await worker.send({"files": dict(code.files), "entry": code.entry})
            reply = await asyncio.wait_for(worker.receive(), max(_START_TIMEOUT_S, code.timeout_s))
        except TimeoutError:
            await worker.died()
            error = "the function's import timed out; the worker was killed"
            return Outcome(ok=False, error=error, duration_ms=_ms(began), cold=True)
        except _WorkerGone:
            why = await worker.died()
            error = f"the function's worker died while importing it ({why})"
            return Outcome(ok=False, error=error, duration_ms=_ms(began), cold=True)
        if not reply.get("ok"):
            await worker.died()
            error = f"importing the function failed: {reply.get('error', '')}"
            return Outcome(ok=False, error=error, duration_ms=_ms(began), cold=True)
        return worker

    def argv(self, code: Code) -> list[str]:
        """The worker's command line: under bubblewrap when it works here."""
        # The interpreter itself, not a venv's link to it: the worker needs the standard
        # library only, and a venv under /tmp would be hidden by the sandbox's own /tmp.
        command = (PYTHON, "-I", str(WORKER), str(code.memory_bytes))
        if self.bwrap is None:
            return list(command)
        spec = RunSpec(
            name="function",
            version=str(code.version),
            command=command,
            app_dir=WORKER.parent,
            log_dir=WORKER.parent,
            network=code.network and self.allow_network,
            hidden=self.hidden,
        )
        argv = list(bwrap_args(self.bwrap, spec))
        # Python itself (the venv, the base install) shown again inside a hidden dir.
        at = argv.index("--chdir")
        for path in self._python_under_hidden():
            argv[at:at] = ["--ro-bind", path, path]
        return argv

    def _python_under_hidden(self) -> list[str]:
        hidden = [path.resolve() for path in self.hidden]
        needed = sorted({Path(p).resolve() for p in (sys.prefix, sys.base_prefix)})
        return [str(p) for p in needed if any(p.is_relative_to(h) for h in hidden)]

    def _make_room(self) -> None:
        """Stop the oldest idle workers while the pool is at its size."""
        while self.workers() >= self.max_workers:
            idle = [w for workers in self._idle.values() for w in workers]
            if not idle:
                return
            oldest = min(idle, key=lambda w: w.started)
            self._idle[oldest.function].remove(oldest)
            self._reap(oldest)

    async def retire(self, function: str) -> None:
        """Stop the idle workers of a function (removed, or a new version deployed)."""
        await asyncio.gather(*(worker.stop() for worker in self._idle.pop(function, [])))

    async def close(self) -> None:
        for function in list(self._idle):
            await self.retire(function)
        for worker in list(self._busy):
            worker.kill()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000


def _outcome(reply: dict[str, Any], began: float, cold: bool) -> Outcome:
    return Outcome(
        ok=bool(reply.get("ok")),
        result=reply.get("result"),
        error=str(reply.get("error", "")),
        output=str(reply.get("output", "")),
        duration_ms=_ms(began),
        cold=cold,
        events=tuple(e for e in reply.get("events") or () if isinstance(e, dict)),
    )
