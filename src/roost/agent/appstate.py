"""What the agent says about each app, and when it takes a new version back by itself.

Pure: data and the times the caller read from its clocks in, decisions out. No files, no
processes, no clock of its own. ``roost.agent.apps`` is the shell that feeds it.

- ``Outcome``: where the agent is with the version the desired state wants, when that is
  not simply "it runs": installing (perhaps retrying after a transient error), staged,
  failed, rolled back.
- ``entry``: one app's reported entry (``kind``, ``version``, ``wanted``, ``state``,
  ``isolation``, ``restarts``, ``error``) from what the agent knows; ``stamp`` adds
  ``since``, the epoch seconds when the entry entered its state for its version, kept
  as long as both stay the same (the hub times soak periods from it).
- ``Watch`` and ``judge``: the rollback rule. After the agent switches an app to a new
  version it watches it until the version has proven itself, and rolls it back when, before
  that, the version

  * is crash-looping, or exited with an error its restart policy does not restart;
  * has been unhealthy for ``retries * interval`` seconds: its check failed ``retries``
    more times after the supervisor already called it unhealthy (which itself only
    happens after the health grace and ``retries`` failures in a row);
  * has not once run healthy ``grace + 2 * retries * (interval + timeout)`` seconds
    after the switch (without a health check: ``crash_loop_window + stable_after``).
    Once it has, a later restart or a failed probe does not bring the deadline back:
    only the two rules above judge it then, so a passing hiccup is not a rollback.

  A version has proven itself once it ran healthy for ``max(stable_after,
  retries * interval)`` seconds in one go; from then on it is reported like any app, and
  what to do about it later is the hub's decision (its rollout, its desired state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from roost.agent.supervisor.spec import AppState, AppStatus, HealthCheck
from roost.wire.apps import WantedApp

OutcomeState = Literal["installing", "staged", "failed", "rolled-back"]
# Definitive: the agent does not try this wanted version again until the desired one changes.
DEFINITIVE: frozenset[str] = frozenset({"failed", "rolled-back"})


@dataclass(frozen=True)
class Outcome:
    """The agent's progress with ``version``, the version the desired state wants.

    ``judged``: the agent ran this version and found it bad (rolled it back, or stopped
    it); such an outcome is kept across restarts, so a restart does not run it again.
    """

    version: str
    state: OutcomeState
    error: str | None = None
    judged: bool = False

    @property
    def definitive(self) -> bool:
        return self.state in DEFINITIVE

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "error": self.error}

    @classmethod
    def from_json(cls, raw: Any) -> Outcome | None:
        """A judged outcome as ``to_json`` stored it; None for anything else."""
        if not isinstance(raw, Mapping):
            return None
        version, state, error = raw.get("version"), raw.get("state"), raw.get("error")
        if not isinstance(version, str) or state not in DEFINITIVE:
            return None
        return cls(version, state, error if isinstance(error, str) else None, judged=True)


def entry(
    kind: str,
    wanted: WantedApp | None,
    current: str | None,
    status: AppStatus | None,
    outcome: Outcome | None,
    error: str | None = None,
) -> dict[str, Any]:
    """One app's reported entry, without ``since``.

    ``current`` is the version installed as current, ``status`` what the supervisor says
    about the app (kind app only), ``outcome`` the progress with the wanted version (None
    when there is nothing to say beyond the running state), ``error`` any other problem.
    """
    # An app's version is what runs; a system update's or the agent's is what is installed.
    version = (status.version if status else None) if kind == "app" else current
    if outcome is not None and (wanted is None or outcome.version == wanted.version):
        state: str = outcome.state
        error = outcome.error or error
        if outcome.state == "rolled-back":
            version = current  # gone back to it, even while the bad one is still stopping
        elif outcome.judged and outcome.version == current:
            version = None  # judged bad with nothing to go back to: it does not run
    elif wanted is not None and wanted.version != current:
        state = "installing"
    elif kind != "app":
        state = "installed" if current else "not-installed"
    elif status is not None and status.version != current:
        state, version = "starting", current  # switching: the old version is stopping
    elif status is not None:
        state = str(status.state)
    else:
        state = "stopped" if current else "not-installed"
    out: dict[str, Any] = {
        "kind": kind,
        "version": version,
        "wanted": wanted.version if wanted else None,
        "state": state,
    }
    if status is not None:
        out["isolation"] = status.isolation
        out["restarts"] = status.restarts
    if error:
        out["error"] = error
    return out


def stamp(
    entries: Mapping[str, Mapping[str, Any]], before: Mapping[str, Any], now: float
) -> dict[str, dict[str, Any]]:
    """``entries`` with ``since``: kept from ``before`` (the last report) for an app whose
    state and version are unchanged, ``now`` for the others; an entry that has a
    ``since`` of its own keeps it."""
    out = {}
    for name, item in entries.items():
        old = before.get(name)
        since = now
        if "since" in item:
            since = item["since"]
        elif (
            isinstance(old, Mapping)
            and old.get("state") == item["state"]
            and old.get("version") == item["version"]
            and isinstance(old.get("since"), int | float)
        ):
            since = old["since"]
        out[name] = {**item, "since": since}
    return out


# -- the rollback rule --------------------------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """A new version being watched since ``switched_at`` (monotonic seconds)."""

    version: str
    switched_at: float
    deadline_s: float
    proven_after_s: float
    unhealthy_for_s: float | None
    healthy_since: float | None = None
    unhealthy_since: float | None = None
    # It ran healthy at least once: the deadline no longer applies.
    seen_healthy: bool = False


def watch(
    version: str,
    check: HealthCheck | None,
    now: float,
    stable_after_s: float,
    crash_loop_window_s: float,
) -> Watch:
    """The watch that starts when an app is switched to ``version`` at ``now``."""
    if check is None:
        return Watch(version, now, crash_loop_window_s + stable_after_s, stable_after_s, None)
    rounds = check.retries * check.interval_s
    return Watch(
        version,
        now,
        deadline_s=check.grace_s + 2 * check.retries * (check.interval_s + check.timeout_s),
        proven_after_s=max(stable_after_s, rounds),
        unhealthy_for_s=rounds,
    )


@dataclass(frozen=True)
class Verdict:
    """What ``judge`` decided: keep ``watch`` (None: the version proved itself), or roll
    back for ``rollback`` (a reason in words)."""

    watch: Watch | None
    rollback: str | None = None


def judge(w: Watch, status: AppStatus | None, now: float) -> Verdict:
    """Apply the rollback rule (module docstring) to the app's status at ``now``."""
    state = status.state if status is not None and status.version == w.version else None
    if state is AppState.CRASH_LOOPING:
        return Verdict(None, f"{w.version} was crash-looping after the switch")
    if state is AppState.FAILED:
        code = status.last_exit if status else None
        return Verdict(None, f"{w.version} exited with code {code} after the switch")
    if state is AppState.STOPPED:
        return Verdict(None)  # it finished on its own: nothing to hold against it
    if state is AppState.RUNNING:
        since = w.healthy_since if w.healthy_since is not None else now
        if now - since >= w.proven_after_s:
            return Verdict(None)
        return Verdict(replace(w, healthy_since=since, unhealthy_since=None, seen_healthy=True))
    if state is AppState.UNHEALTHY:
        since = w.unhealthy_since if w.unhealthy_since is not None else now
        if w.unhealthy_for_s is not None and now - since >= w.unhealthy_for_s:
            return Verdict(None, f"{w.version} stayed unhealthy for {now - since:.0f}s")
        w = replace(w, healthy_since=None, unhealthy_since=since)
    else:
        w = replace(w, healthy_since=None, unhealthy_since=None)
    if not w.seen_healthy and now - w.switched_at >= w.deadline_s:
        return Verdict(None, f"{w.version} was not healthy {w.deadline_s:.0f}s after the switch")
    return Verdict(w)
