"""The device's apps: the versions in its desired state become verified, running apps.

The hub puts ``apps`` in a device's desired state, ``{name: {"version": "1.2.0"}}``.
``AppReconciler`` makes the device match it: it refreshes the tenant's signed catalog
(TUF), downloads and verifies each wanted bundle, unpacks it beside the versions already
there, switches to it atomically, and gives the supervisor one ``RunSpec`` per app. An
update that verification refuses (tampered, rolled back, expired, unknown key) leaves
the running version alone and is reported with the reason. What every app is doing —
version, state, isolation, restarts, last error — goes into the reported state.

``run_spec`` is pure; the reconciler is the shell around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from roost.agent.supervisor import HealthCheck, RestartPolicy, RunSpec, Supervisor
from roost.agent.supervisor.spec import HealthKind, RestartMode
from roost.agent.updates import HubFetch, SignedUpdates
from roost.apps.bundle import BundleLimits
from roost.apps.installs import AppInstalls
from roost.apps.manifest import Manifest
from roost.errors import RoostError, UpdateRefusedError
from roost.wire.apps import target_path

log = logging.getLogger("roost.agent.apps")

# Look at the catalog again this often even when nothing changed (a timestamp that was
# refused because it expired is fine again once the hub re-signed it).
RECHECK_S = 300.0


def run_spec(manifest: Manifest, app_dir: Path, data_dir: Path, log_dir: Path) -> RunSpec:
    """How the supervisor runs the app a manifest describes, from the version in app_dir."""
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
    )


class AppReconciler:
    """Keeps the device's apps at the versions its desired state names."""

    def __init__(
        self,
        data_dir: Path,
        fetch: Callable[[], HubFetch],
        supervisor: Supervisor,
        on_change: Callable[[], None],
    ) -> None:
        self.installs = AppInstalls(data_dir / "apps")
        self.log_dir = data_dir / "app-logs"
        self.supervisor = supervisor
        self._data_dir = data_dir
        self._fetch = fetch
        self._on_change = on_change
        self._wanted: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._wake = asyncio.Event()

    def want(self, apps: Mapping[str, str]) -> None:
        """The desired versions changed (or were read at start): reconcile soon."""
        self._wanted = dict(apps)
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECHECK_S)
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconciling apps failed; trying again later")

    async def reconcile(self) -> None:
        wanted = dict(self._wanted)
        missing = {n: v for n, v in wanted.items() if self._current(n) != v}
        errors = dict(self._errors)
        if missing:
            # TUF and unpacking are blocking file and network work: off the event loop.
            errors = await asyncio.to_thread(self._install_all, missing, errors)
        for name in list(errors):
            if name not in wanted or self._current(name) == wanted[name]:
                del errors[name]
        self._errors = errors
        await self.supervisor.apply(self._specs(wanted))
        for name in self.installs.apps():
            if name not in wanted:
                self.installs.remove(name)
                log.info("removed app %s (no longer wanted)", name)
        self._on_change()

    def _install_all(self, missing: Mapping[str, str], errors: dict[str, str]) -> dict[str, str]:
        updates = SignedUpdates(self._data_dir, self._fetch())
        for name, version in missing.items():
            try:
                bundle = updates.download(target_path(name, version))
                installed = self.installs.install(bundle, BundleLimits())
                if installed.app != name or str(installed.version) != version:
                    raise UpdateRefusedError(
                        f"the catalog's {name}@{version} holds {installed.app}@{installed.version}"
                    )
                self.installs.activate(name, version)
                self.installs.prune(name)
                errors.pop(name, None)
                log.info("installed %s@%s", name, version)
            except RoostError as err:
                errors[name] = str(err)
                log.warning("cannot update %s to %s: %s", name, version, err)
        return errors

    def _specs(self, wanted: Mapping[str, str]) -> dict[str, RunSpec]:
        specs = {}
        for name in wanted:
            current = self.installs.current(name)
            if current is None:
                continue
            try:
                installed = self.installs.installed(name, current)
                specs[name] = run_spec(
                    installed.manifest, installed.path, self.installs.data_dir(name), self.log_dir
                )
            except RoostError as err:
                self._errors[name] = str(err)
        return specs

    def _current(self, name: str) -> str | None:
        current = self.installs.current(name)
        return None if current is None else str(current)

    def report(self) -> dict[str, dict[str, Any]]:
        """What goes into the reported state's ``apps``: per app, what it is doing."""
        states = self.supervisor.states()
        report: dict[str, dict[str, Any]] = {}
        for name in sorted(set(self._wanted) | set(states)):
            status = states.get(name)
            entry: dict[str, Any] = {
                "version": status.version if status else self._current(name),
                "wanted": self._wanted.get(name),
                "state": str(status.state) if status else "not-installed",
            }
            if status is not None:
                entry["isolation"] = status.isolation
                entry["restarts"] = status.restarts
            if name in self._errors:
                entry["error"] = self._errors[name]
            report[name] = entry
        return report
