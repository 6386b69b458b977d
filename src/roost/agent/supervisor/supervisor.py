"""The app supervisor: runs the apps of a device, keeps them up, reports their states.

``Supervisor`` is an async context manager. ``apply(specs)`` makes the running set match
``specs``: new apps start, removed apps stop, apps whose spec changed (a new version is a
new spec) stop and start again. Each app has one driver task that owns its process: it
launches it as ``isolation.plan_launch`` decided, pumps its output into its log, probes
its health, and on exit asks the pure ``policy`` whether and when to start it again.
Leaving the context (or ``stop_all``) stops every app and leaves no process behind.

Every change of an app's ``AppStatus`` is passed to ``on_change(name, status)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from roost.agent.supervisor import health, logs, policy, process
from roost.agent.supervisor.isolation import Capabilities, Launch, detect_isolation, plan_launch
from roost.agent.supervisor.spec import AppStatus, RunSpec
from roost.errors import AppError

OnChange = Callable[[str, AppStatus], None]
# Exit code reported when the app could not even be launched (as a shell would).
LAUNCH_FAILED = 127


@dataclass(frozen=True)
class SupervisorSettings:
    """Safety budgets of the supervisor, read once."""

    stop_timeout_s: float = 10.0
    limits: policy.PolicyLimits = field(default_factory=policy.PolicyLimits)
    log_max_bytes: int = logs.DEFAULT_MAX_BYTES
    log_keep: int = logs.DEFAULT_KEEP
    nofile: int = 1024
    # After the main process exits, how long its output may still drain.
    drain_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.stop_timeout_s <= 0 or self.drain_timeout_s <= 0 or self.nofile < 16:
            raise AppError("stop and drain timeouts must be > 0, nofile >= 16")


class Supervisor:
    """Runs apps as confined processes and keeps them in the state asked for."""

    def __init__(
        self,
        *,
        capabilities: Capabilities | None = None,
        settings: SupervisorSettings | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        self._caps = capabilities
        self.settings = settings or SupervisorSettings()
        self._on_change = on_change
        self._apps: dict[str, _App] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Supervisor:
        if self._caps is None:
            # Blocking: it runs bubblewrap once and makes cgroup directories.
            self._caps = await asyncio.to_thread(detect_isolation)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop_all()

    @property
    def capabilities(self) -> Capabilities:
        """What the device allows (known once the context is entered)."""
        if self._caps is None:
            raise AppError("the supervisor is not started: use it as `async with`")
        return self._caps

    async def apply(self, specs: Mapping[str, RunSpec]) -> None:
        """Start new apps, stop removed ones, restart the ones whose spec changed."""
        for name, spec in specs.items():
            if name != spec.name:
                raise AppError(f"app {spec.name} is listed under another name, {name}")
        caps = self.capabilities
        async with self._lock:
            going = [a for n, a in self._apps.items() if specs.get(n) != a.spec]
            await asyncio.gather(*(app.stop() for app in going))
            for app in going:
                del self._apps[app.spec.name]
            for name, spec in specs.items():
                if name not in self._apps:
                    self._apps[name] = _App(spec, caps, self.settings, self._changed)
                    self._apps[name].start()

    def states(self) -> dict[str, AppStatus]:
        """The status of every app the supervisor runs."""
        return {name: app.status for name, app in self._apps.items()}

    def tail(self, app: str, lines: int = 100) -> list[str]:
        """The last lines of an app's output (``roost app logs``)."""
        if app not in self._apps:
            raise AppError(f"no app named {app} on this device")
        return logs.tail(self._apps[app].spec.log_dir, app, lines)

    async def stop_all(self) -> None:
        """Stop every app; no process of theirs is left when this returns."""
        async with self._lock:
            apps = list(self._apps.values())
            await asyncio.gather(*(app.stop() for app in apps))
            self._apps.clear()

    def _changed(self, name: str, status: AppStatus) -> None:
        if self._on_change is not None:
            self._on_change(name, status)


class _App:
    """The driver of one app: pumps the pure policy with events from its process."""

    def __init__(
        self, spec: RunSpec, caps: Capabilities, settings: SupervisorSettings, changed: OnChange
    ) -> None:
        self.spec, self._caps, self._settings, self._changed = spec, caps, settings, changed
        self.launch = plan_launch(
            spec, caps, nofile=settings.nofile, path=os.environ.get("PATH", "/usr/bin:/bin")
        )
        self._lc = policy.Lifecycle(has_check=spec.health is not None)
        self._pid: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.status = self._status()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"app {self.spec.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        self._set(policy.stopped(self._lc), pid=None)

    def _status(self) -> AppStatus:
        return AppStatus(
            state=self._lc.state,
            version=self.spec.version,
            pid=self._pid,
            isolation=self.launch.isolation,
            restarts=self._lc.restarts,
            last_exit=self._lc.last_exit,
            healthy=self._lc.healthy,
        )

    def _set(self, lc: policy.Lifecycle, pid: int | None) -> None:
        self._lc, self._pid = lc, pid
        status = self._status()
        if status != self.status:
            self.status = status
            self._changed(self.spec.name, status)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        log = logs.RotatingLog(
            self.spec.log_dir, self.spec.name, self._settings.log_max_bytes, self._settings.log_keep
        )
        try:
            while not self._stop.is_set():
                returncode = await self._run_once(log)
                if returncode is None:
                    return  # stopped on purpose
                lc, delay = policy.exited(
                    self._lc, loop.time(), returncode, self.spec.restart, self._settings.limits
                )
                self._set(lc, pid=None)
                if delay is None:
                    return
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                # that lands just as the event is set, and shutdown would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
        finally:
            log.close()

    async def _run_once(self, log: logs.RotatingLog) -> int | None:
        """One run of the app: its exit code, or None when it was stopped."""
        loop = asyncio.get_running_loop()
        try:
            proc = await process.spawn(self.launch, self.spec.name)
        except AppError as err:
            log.write(f"roost: {err}\n".encode())
            self._set(policy.started(self._lc, loop.time()), pid=None)
            return LAUNCH_FAILED
        self._set(policy.started(self._lc, loop.time()), pid=proc.pid)
        assert proc.stdout is not None  # spawn asks for a pipe
        helpers = [asyncio.create_task(self._settle())]
        if self.spec.health is not None:
            helpers.append(asyncio.create_task(self._watch_health(loop.time())))
        pumping = asyncio.create_task(logs.pump(proc.stdout, log))
        exiting = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({exiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for helper in helpers:
                helper.cancel()
            if self._stop.is_set():
                await process.terminate(proc, self.launch, self._settings.stop_timeout_s)
                return None
            returncode = await exiting
            process.kill_now(proc, self.launch)
            await process.reap_leftovers(self.launch)
            return returncode
        finally:
            for task in (*helpers, exiting, stopping):
                task.cancel()
            if proc.returncode is None:  # cancelled from outside: leave nothing behind
                process.kill_now(proc, self.launch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pumping, self._settings.drain_timeout_s)
            process.remove_cgroup(self.launch.cgroup)

    async def _settle(self) -> None:
        """A run that lasts forgives past crashes (and ends crash-looping)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._settings.limits.stable_after_s)
        self._set(policy.settled(self._lc, loop.time(), self._settings.limits), self._pid)

    async def _watch_health(self, started_at: float) -> None:
        check = self.spec.health
        assert check is not None
        loop = asyncio.get_running_loop()
        command = self._check_launch(check.command) if check.kind == "command" else None
        tracker = health.HealthTracker(check, started_at)
        while True:
            await asyncio.sleep(check.interval_s)
            argv = process.shim_argv(command) if command else ()
            ok = await health.probe(check, argv, self.spec.app_dir, self.launch.env)
            tracker = tracker.observe(ok, loop.time())
            if tracker.healthy != self._lc.healthy:
                self._set(policy.health_changed(self._lc, tracker.healthy), self._pid)

    def _check_launch(self, command: tuple[str, ...]) -> Launch:
        """A command check runs confined like the app, in a sandbox of its own."""
        spec = dataclasses.replace(self.spec, command=command, health=None)
        return plan_launch(
            spec,
            self._caps,
            nofile=self._settings.nofile,
            path=self.launch.env["PATH"],
            use_cgroup=False,
        )
