"""The device's apps: the releases its desired state names become verified, running apps.

The hub puts ``apps`` in a device's desired state, ``{name: {"version": "1.2.0",
"apply": true}}``. ``AppReconciler`` makes the device match it, each app on its own:

- it refreshes the tenant's signed catalog (TUF), downloads and verifies each wanted
  release and unpacks it beside the versions already there (``AppInstalls``);
- with ``apply`` false it stops there (``staged``); once ``apply`` is true it switches:
  an app (kind ``app``) by pointing ``current`` at the new version and handing the
  supervisor its ``RunSpec``, a system update (kind ``system``) by running the device's
  installer (``roost.agent.installer``), the agent itself (kind ``agent``) through
  ``roost.agent.selfupdate``;
- it watches an app it just switched and goes back to the previous version by itself
  when the new one does not run (the rule is in ``roost.agent.appstate``); such a version
  is remembered across restarts and not tried again until the desired version changes;
- a release refused for good (by TUF, a bad bundle, a name or version that does not
  match, an installer that fails) is ``failed`` and the running version stays; it is
  tried again only when the desired version changes or the agent restarts. A transient
  error (the hub unreachable, a 5xx) is retried with backoff, the app ``installing``.

One app's update, failure or rollback never restarts another: the supervisor restarts
only apps whose ``RunSpec`` changed. ``run_spec`` and ``roost.agent.appstate`` are pure;
the reconciler is the shell around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from roost.agent import installer, selfupdate
from roost.agent.appstate import Outcome, Watch, entry, judge, stamp, watch
from roost.agent.runtime import backoff
from roost.agent.supervisor import HealthCheck, RestartPolicy, RunSpec, Supervisor
from roost.agent.supervisor.logs import tail
from roost.agent.supervisor.spec import HealthKind, RestartMode
from roost.agent.updates import HubFetch, SignedUpdates
from roost.apps.bundle import BundleLimits
from roost.apps.installs import AppInstalls, InstalledVersion
from roost.apps.manifest import Manifest
from roost.errors import AppError, NotFoundError, RoostError, UpdateError, UpdateRefusedError
from roost.settings import AgentSettings
from roost.wire.apps import WantedApp, target_path

if TYPE_CHECKING:
    from roost.agent.appevents import AppEvents

log = logging.getLogger("roost.agent.apps")

# Look at the catalog again this often even when nothing changed.
RECHECK_S = 300.0
# While a new version is watched, judge it this often (besides on every change of state).
WATCH_TICK_S = 0.5
# Transient errors are retried after 1 s, 2 s, 4 s ... up to this, with jitter.
RETRY_MAX_S = 300.0
# Keys in the agent's local store: versions judged bad, and versions being watched.
BAD_KEY = "apps_bad"
WATCHING_KEY = "apps_watching"


class Store(Protocol):
    """The agent's small local key-value store (``Outbox.get``/``set``)."""

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


def run_spec(
    manifest: Manifest,
    app_dir: Path,
    data_dir: Path,
    log_dir: Path,
    *,
    events_socket: Path | None = None,
    hidden: tuple[Path, ...] = (),
) -> RunSpec:
    """How the supervisor runs the app a manifest describes, from the version in app_dir;
    ``events_socket`` is where it emits events, ``hidden`` what its sandbox shows empty."""
    health = None
    if manifest.health is not None:
        h = manifest.health
        health = HealthCheck(
            kind=cast(HealthKind, h.kind),  # the manifest checked it
            port=h.port,
            path=h.path,
            command=h.command,
            interval_s=h.interval,
            timeout_s=h.timeout,
            grace_s=h.grace,
            retries=h.retries,
        )
    return RunSpec(
        name=manifest.name,
        version=str(manifest.version),
        command=manifest.command,
        app_dir=app_dir,
        log_dir=log_dir,
        data_dir=data_dir if manifest.data.persistent else None,
        env=manifest.env,
        memory_bytes=manifest.resources.memory,
        cpu=manifest.resources.cpu,
        network=manifest.network,
        health=health,
        restart=RestartPolicy(
            policy=cast(RestartMode, manifest.restart.policy),  # the manifest checked it
            max_backoff_s=manifest.restart.max_backoff,
        ),
        events_socket=events_socket,
        hidden=hidden,
    )


class AppReconciler:
    """Keeps the device's apps at the releases its desired state names."""

    def __init__(
        self,
        settings: AgentSettings,
        fetch: Callable[[], HubFetch],
        supervisor: Supervisor,
        store: Store,
        on_change: Callable[[], None],
        reported: Mapping[str, Any] | None = None,
        stop_agent: Callable[[], None] | None = None,
        events: AppEvents | None = None,
    ) -> None:
        self.installs = AppInstalls(settings.data_dir / "apps")
        self.log_dir = settings.data_dir / "app-logs"
        self.supervisor = supervisor
        self._settings = settings
        self._fetch = fetch
        self._store = store
        self._on_change = on_change
        self._stop_agent = stop_agent
        self._events = events  # the apps' events sockets; none: apps get no socket
        self._wanted: dict[str, WantedApp] = {}
        self._outcomes: dict[str, Outcome] = {}
        for name, raw in dict(store.get(BAD_KEY) or {}).items():
            if (outcome := Outcome.from_json(raw)) is not None:
                self._outcomes[name] = outcome
        self._errors: dict[str, str] = {}
        self._retries: dict[str, tuple[str, int, float]] = {}  # version, attempts, when
        self._watches: dict[str, Watch] = {}
        self._rewatch = {str(n): str(v) for n, v in dict(store.get(WATCHING_KEY) or {}).items()}
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._manifests: dict[tuple[str, str], Manifest] = {}
        self._reported: dict[str, Any] = dict(reported or {})
        self._wake = asyncio.Event()

    # -- the loop -------------------------------------------------------------------------

    def want(self, apps: Mapping[str, WantedApp]) -> None:
        """The desired releases changed (or were read at start): reconcile soon."""
        self._wanted = dict(apps)
        self._wake.set()

    def supervisor_changed(self, name: str) -> None:
        """The supervisor says an app changed state: judge a watched one now, report."""
        if name in self._watches:
            self._wake.set()
        self._on_change()

    async def run(self) -> None:
        try:
            while True:
                # Not asyncio.wait_for: on 3.11 it swallows a cancel that comes with a wake.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._sleep_s(time.monotonic())):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.reconcile()
                except Exception:
                    log.exception("reconciling apps failed; trying again later")
        finally:
            for task in self._busy.values():
                task.cancel()
            await asyncio.gather(*self._busy.values(), return_exceptions=True)

    def _sleep_s(self, now: float) -> float:
        if self._watches:
            return WATCH_TICK_S
        due = [when - now for _, _, when in self._retries.values()]
        return max(0.0, min([RECHECK_S, *due]))

    async def reconcile(self) -> None:
        """One pass: fetch what is missing, switch what may be switched, judge new versions,
        give the supervisor the apps to run, remove apps no longer wanted."""
        now = time.monotonic()
        wanted = dict(self._wanted)
        self._forget(wanted)
        fetch = {n: w.version for n, w in wanted.items() if self._must_fetch(n, w, now)}
        if fetch:
            # TUF and unpacking are blocking file and network work: off the event loop.
            failures = await asyncio.to_thread(self._fetch_all, fetch)
            for name, err in failures.items():
                self._fetch_failed(name, fetch[name], err, now)
        for name, want in wanted.items():
            self._advance(name, want, now)
        self._judge(now)
        specs = self._specs(wanted)
        if self._events is not None:
            await self._events.serve(specs)  # before the apps start: they bind its directory
        await self.supervisor.apply(specs)
        for name in self.installs.apps():
            if name not in wanted and name not in self._busy:
                self.installs.remove(name)
                self._manifests = {k: m for k, m in self._manifests.items() if k[0] != name}
                log.info("removed app %s (no longer wanted)", name)
        self._on_change()

    # -- fetching -------------------------------------------------------------------------

    def _forget(self, wanted: Mapping[str, WantedApp]) -> None:
        """Drop what the agent knew about versions the desired state no longer names."""

        def stale(name: str, version: str) -> bool:
            return name not in wanted or wanted[name].version != version

        kept = (self._judged(), set(self._watches))
        self._outcomes = {n: o for n, o in self._outcomes.items() if not stale(n, o.version)}
        self._retries = {n: r for n, r in self._retries.items() if not stale(n, r[0])}
        self._watches = {n: w for n, w in self._watches.items() if not stale(n, w.version)}
        if kept != (self._judged(), set(self._watches)):
            self._save()

    def _there(self, name: str, want: WantedApp) -> bool:
        """Whether the wanted release is what the device runs (or, for the agent itself,
        whether there is nothing to fetch: it runs, is on trial, or was refused)."""
        if name == selfupdate.NAME:
            return not selfupdate.needs(self._settings.data_dir, want.version)
        return self._current(name) == want.version

    def _must_fetch(self, name: str, want: WantedApp, now: float) -> bool:
        if name in self._busy or self._there(name, want):
            return False
        outcome = self._outcomes.get(name)
        if outcome is not None and outcome.definitive:
            return False
        retry = self._retries.get(name)
        if retry is not None and retry[2] > now:
            return False
        try:
            self.installs.installed(name, want.version)
        except RoostError:
            return True
        return False

    def _fetch_all(self, fetch: Mapping[str, str]) -> dict[str, RoostError]:
        """Download, verify and unpack each release; the errors by app. Blocking."""
        failures: dict[str, RoostError] = {}
        updates = SignedUpdates(self._settings.data_dir, self._fetch())
        for name, version in fetch.items():
            try:
                bundle = updates.download(target_path(name, version))
                release = self.installs.install(bundle, BundleLimits())
                if release.app != name or str(release.version) != version:
                    raise UpdateRefusedError(
                        f"the catalog's {name}@{version} holds {release.app}@{release.version}"
                    )
                log.info("downloaded, verified and unpacked %s@%s", name, version)
            except RoostError as err:
                failures[name] = err
        return failures

    def _fetch_failed(self, name: str, version: str, err: RoostError, now: float) -> None:
        transient = isinstance(err, UpdateError) and not isinstance(err, UpdateRefusedError)
        if transient:
            attempts = self._retries.get(name, (version, 0, 0.0))[1]
            delay = backoff(attempts, 1.0, RETRY_MAX_S)
            self._retries[name] = (version, attempts + 1, now + delay)
            self._outcomes[name] = Outcome(version, "installing", str(err))
            log.warning("cannot fetch %s@%s (%s); retrying in %.0fs", name, version, err, delay)
        else:
            self._outcomes[name] = Outcome(version, "failed", str(err))
            log.warning("refused %s@%s: %s", name, version, err)

    # -- switching ------------------------------------------------------------------------

    def _advance(self, name: str, want: WantedApp, now: float) -> None:
        """Take ``name`` one step towards ``want``, as far as it can go right now."""
        outcome = self._outcomes.get(name)
        if name in self._busy or (outcome is not None and outcome.definitive):
            return
        if self._there(name, want):
            self._outcomes.pop(name, None)
            self._retries.pop(name, None)
            if name in self._rewatch and self._rewatch.pop(name) == want.version:
                self._watch(name, want.version, now)  # the agent restarted while watching
            return
        try:
            release = self.installs.installed(name, want.version)
        except NotFoundError:
            return  # not fetched (yet): the outcome says why
        except RoostError as err:
            self._outcomes[name] = Outcome(want.version, "failed", str(err))
            return
        if not want.apply:
            self._outcomes[name] = Outcome(want.version, "staged")
            return
        self._retries.pop(name, None)
        kind = release.manifest.kind
        if kind == "app":
            self._switch(release, now)
        elif kind == "system":
            self._start(release, self._install_system(release))
        elif kind == "agent":
            self._start(release, self._update_agent(release))
        else:
            self._outcomes[name] = Outcome(want.version, "failed", f"unknown kind {kind!r}")

    def _switch(self, release: InstalledVersion, now: float) -> None:
        old = self._current(release.app)
        self.installs.activate(release.app, release.version)
        self.installs.prune(release.app)
        self._outcomes.pop(release.app, None)
        self._watch(release.app, str(release.version), now)
        log.info("switched %s from %s to %s", release.app, old, release.version)

    def _watch(self, name: str, version: str, now: float) -> None:
        limits = self.supervisor.settings.limits
        try:
            check = self._spec(name, version).health
        except RoostError:
            check = None  # it cannot even start: the deadline without a check applies
        self._watches[name] = watch(
            version, check, now, limits.stable_after_s, limits.crash_loop_window_s
        )
        self._save()

    def _start(self, release: InstalledVersion, work: Coroutine[Any, Any, None]) -> None:
        """Run a system or agent update as a task of its own: the other apps go on."""
        name, version = release.app, str(release.version)
        self._outcomes[name] = Outcome(version, "installing")

        async def finish() -> None:
            try:
                await work
                self._outcomes.pop(name, None)
            except RoostError as err:
                self._outcomes[name] = Outcome(version, "failed", str(err))
                log.warning("cannot install %s@%s: %s", name, version, err)
            finally:
                del self._busy[name]
                self._wake.set()
                self._on_change()

        self._busy[name] = asyncio.create_task(finish(), name=f"install {name}")

    async def _install_system(self, release: InstalledVersion) -> None:
        settings = self._settings
        await installer.install(
            settings.system_installer, release, self.log_dir, settings.system_install_timeout_s
        )
        self.installs.activate(release.app, release.version)
        self.installs.prune(release.app)
        log.info("installed %s@%s", release.app, release.version)

    async def _update_agent(self, release: InstalledVersion) -> None:
        """The one place the agent's own update is handed on (``roost.agent.selfupdate``):
        stage the release as the next version to try, then restart into it."""
        data_dir, version = self._settings.data_dir, str(release.version)
        try:
            # Blocking: it copies, fsyncs, and compiles and imports the new version.
            await asyncio.to_thread(selfupdate.stage, data_dir, release.path, version)
        finally:
            self.installs.remove(release.app)  # staged into DATA/agent, or refused
        if self._stop_agent is None:
            raise AppError("this agent cannot restart itself into a new version")
        selfupdate.restart_into_trial(self._stop_agent)

    # -- watching -------------------------------------------------------------------------

    def _judge(self, now: float) -> None:
        states = self.supervisor.states()
        for name, watched in list(self._watches.items()):
            verdict = judge(watched, states.get(name), now)
            if verdict.watch is not None:
                self._watches[name] = verdict.watch
                continue
            del self._watches[name]
            if verdict.rollback is not None:
                self._roll_back(name, watched.version, verdict.rollback)
            else:
                log.info("%s %s proved itself", name, watched.version)
            self._save()

    def _roll_back(self, name: str, version: str, reason: str) -> None:
        previous = self.installs.previous(name)
        if previous is not None and str(previous) != version:
            self.installs.rollback(name)
            why = f"rolled back to {previous}: {reason}"
            outcome = Outcome(version, "rolled-back", why, judged=True)
        else:
            why = f"stopped: {reason}, and there is no version before it"
            outcome = Outcome(version, "failed", why, judged=True)
        self._outcomes[name] = outcome
        log.warning("%s: %s", name, outcome.error)

    def _judged(self) -> dict[str, Outcome]:
        return {n: o for n, o in self._outcomes.items() if o.judged}

    def _save(self) -> None:
        """Keep what must survive a restart: versions judged bad, versions being watched."""
        self._store.set(BAD_KEY, {n: o.to_json() for n, o in self._judged().items()})
        self._store.set(WATCHING_KEY, {n: w.version for n, w in self._watches.items()})

    # -- what runs, what is reported --------------------------------------------------------

    def _specs(self, wanted: Mapping[str, WantedApp]) -> dict[str, RunSpec]:
        specs, self._errors = {}, {}
        for name in wanted:
            current = self._current(name)
            outcome = self._outcomes.get(name)
            if current is None or (outcome and outcome.judged and outcome.version == current):
                continue  # nothing installed, or the one installed was judged bad
            try:
                if self._manifest(name, current).kind == "app":
                    specs[name] = self._spec(name, current)
            except RoostError as err:
                self._errors[name] = str(err)
        return specs

    def _spec(self, name: str, version: str) -> RunSpec:
        installed = self.installs.installed(name, version)
        return run_spec(
            installed.manifest,
            installed.path,
            self.installs.data_dir(name),
            self.log_dir,
            events_socket=None if self._events is None else self._events.path(name),
            hidden=(self._settings.data_dir,),
        )

    def _manifest(self, name: str, version: str) -> Manifest:
        key = (name, version)
        if key not in self._manifests:
            self._manifests[key] = self.installs.installed(name, version).manifest
        return self._manifests[key]

    def _kind(self, name: str, *versions: str | None) -> str:
        for version in versions:
            if version is not None:
                with contextlib.suppress(RoostError):
                    return self._manifest(name, version).kind
        return "app"

    def _current(self, name: str) -> str | None:
        current = self.installs.current(name)
        return None if current is None else str(current)

    def report(self) -> dict[str, dict[str, Any]]:
        """What goes into the reported state's ``apps``: per app, what it is doing."""
        states = self.supervisor.states()
        entries = {}
        for name in sorted(set(self._wanted) | set(states) | set(self._busy)):
            want = self._wanted.get(name)
            outcome = self._outcomes.get(name)
            if name == selfupdate.NAME:
                entries[name] = self._agent_entry(want, outcome)
                continue
            current = self._current(name)
            kind = self._kind(name, want.version if want else None, current)
            status = states.get(name) if kind == "app" else None
            entries[name] = entry(kind, want, current, status, outcome, self._errors.get(name))
        self._reported = stamp(entries, self._reported, time.time())
        return self._reported

    def _agent_entry(self, want: WantedApp | None, outcome: Outcome | None) -> dict[str, Any]:
        """The agent's own entry: ``selfupdate`` knows it, but while this reconciler fetches
        or stages its release, or failed to, it is this one's to say."""
        wanted = want.version if want else None
        agent = selfupdate.report(self._settings.data_dir, wanted)
        if outcome is None or outcome.version != wanted:
            return agent
        mine = {k: v for k, v in agent.items() if k not in ("since", "error")}
        return mine | entry("agent", want, agent["version"], None, outcome)

    def tail(self, name: str, lines: int = 100) -> list[str]:
        """The last lines of an app's (or a system update's installer's) output."""
        if name in self.supervisor.states():
            return self.supervisor.tail(name, lines)
        if name in self._wanted and (self.log_dir / f"{name}.log").exists():
            return tail(self.log_dir, name, lines)
        raise AppError(f"no app named {name} on this device")
