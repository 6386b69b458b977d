"""The apps of one virtual device: what its desired state wants, what it fetches, what it says.

A real agent turns the ``apps`` of its desired state into verified, running apps. A
virtual device does the part that loads the hub: it refreshes its tenant's signed
catalog and downloads and verifies each wanted bundle (the driver in ``roost.sim.fleet``
does that through ``roost.sim.updates``). It neither unpacks nor runs anything: a bundle
that verified counts as running (or ``staged`` while ``apply`` is false).

``SimApps`` decides and remembers; it does no I/O and reads no clock. ``want`` takes the
wanted apps, ``fetches`` says which releases to download now, ``fetched`` takes the
outcome, and ``report`` is the reported state's ``apps``, in the shape a real agent
reports (``roost.agent.appstate``): ``{"kind", "version", "wanted", "state", "since"}``
and ``error`` after a failure.

Invariants: ``since`` changes only when ``state`` or ``version`` does; an outcome for a
version that is no longer wanted is ignored; a release refused for good (``failed``) is
not fetched again until the desired state names another version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from roost.agent.appstate import stamp
from roost.wire.apps import WantedApp

INSTALLING = "installing"
STAGED = "staged"
RUNNING = "running"
FAILED = "failed"


class Fetch(NamedTuple):
    """One release the device must download and verify."""

    name: str
    version: str


class Outcome(NamedTuple):
    """How fetching one release ended: ``error`` None is verified; ``final`` errors stick."""

    name: str
    version: str
    error: str | None = None
    final: bool = False


class SimApps:
    """The apps state of one virtual device. Not thread-safe: the driver's event loop."""

    def __init__(self) -> None:
        self._wanted: dict[str, WantedApp] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        # Releases downloaded and verified, per app: switching to one needs no fetch.
        self._verified: dict[str, set[str]] = {}

    def want(self, wanted: Mapping[str, WantedApp], now: float) -> None:
        """The desired state's apps (all of them): apps no longer named are removed."""
        self._wanted = dict(wanted)
        for name in list(self._entries):
            if name not in wanted:
                del self._entries[name]
                self._verified.pop(name, None)
        for name, app in wanted.items():
            entry = self._entries.get(name)
            if entry is not None and entry["wanted"] == app.version and entry["state"] == FAILED:
                continue  # refused for good: not again until another version is wanted
            if entry is not None and entry["version"] == app.version:
                self._set(name, app.version, RUNNING, now)
            elif app.version in self._verified.get(name, ()):
                self._switch(name, app, now)
            else:
                self._set(name, self._version(name), INSTALLING, now)

    def fetches(self) -> list[Fetch]:
        """Releases to download and verify now, in name order."""
        return [
            Fetch(name, entry["wanted"])
            for name, entry in sorted(self._entries.items())
            if entry["state"] == INSTALLING
        ]

    def fetched(self, outcome: Outcome, now: float) -> bool:
        """Take the outcome of a fetch; True when the report changed."""
        app = self._wanted.get(outcome.name)
        entry = self._entries.get(outcome.name)
        if app is None or entry is None or app.version != outcome.version:
            return False  # the desired state moved on meanwhile
        if entry["state"] != INSTALLING:
            return False
        before = dict(entry)
        if outcome.error is None:
            self._verified.setdefault(outcome.name, set()).add(outcome.version)
            self._switch(outcome.name, app, now)
        else:
            state = FAILED if outcome.final else INSTALLING
            self._set(outcome.name, entry["version"], state, now, outcome.error)
        return self._entries[outcome.name] != before

    def report(self) -> dict[str, dict[str, Any]]:
        """The reported state's ``apps`` (copies)."""
        return {name: dict(entry) for name, entry in sorted(self._entries.items())}

    def __len__(self) -> int:
        return len(self._entries)

    def _switch(self, name: str, app: WantedApp, now: float) -> None:
        if app.apply:
            self._set(name, app.version, RUNNING, now)
        else:
            self._set(name, self._version(name), STAGED, now)

    def _version(self, name: str) -> str | None:
        entry = self._entries.get(name)
        return None if entry is None else entry["version"]

    def _set(
        self, name: str, version: str | None, state: str, now: float, error: str | None = None
    ) -> None:
        entry: dict[str, Any] = {
            "kind": "app",
            "version": version,
            "wanted": self._wanted[name].version,
            "state": state,
        }
        if error is not None:
            entry["error"] = error
        # ``since`` as the agent keeps it.
        self._entries[name] = stamp({name: entry}, self._entries, now)[name]
