"""The hub's shell around the rollout state machine: deploy, step, pause, abort, undeploy.

Each function takes an open ``Session`` (the caller commits) and returns the desired
states to publish once the transaction is committed. Every lookup is filtered by the
caller's tenant. ``step_rollouts`` is what the hub's loop calls: it loads each live
rollout's targets and their reports, lets ``roost.rollouts.core.step`` decide, writes
the decided versions into the devices' desired ``apps`` and records what happened as
events (``roost.rollout.*``).

Which devices a deployment reaches: the tenant's active devices its selector matches,
except those a newer deployment of the same app also matches (the newest one wins), so
two deployments never fight over one device.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.catalog.models import AppRelease
from roost.errors import NotFoundError, ValidationError
from roost.events.store import HUB_SOURCE, insert_events
from roost.fleet.models import Device
from roost.fleet.selectors import Selector
from roost.fleet.service import desired_message
from roost.rollouts import core
from roost.rollouts.core import DeviceReport, DeviceState, RolloutState
from roost.rollouts.models import DeploymentRow, RolloutRow
from roost.rollouts.serial import dump_spec, dump_state, load_spec, load_state
from roost.wire import Desired

# Rollouts the hub keeps stepping: running ones, finished ones (devices that join the
# selector later get the version), and those still waiting for a first device.
LIVE = ("waiting", "running", "done")
ENDED = ("halted", "aborted", "done", "superseded")

# What an agent reports about an app (its ``state``) as the rollout judges it.
_JUDGED: Mapping[str, DeviceState] = {
    "running": "healthy",
    "installed": "healthy",
    "unhealthy": "unhealthy",
    "failed": "failed",
    "crash-looping": "failed",
    "rolled-back": "rolled-back",
}


@dataclass(frozen=True)
class Target:
    """One device as a rollout sees it."""

    device_id: str
    labels: Mapping[str, str]
    report: DeviceReport


def device_report(
    device_id: str, online: bool, entry: Any, version: str, now: float
) -> DeviceReport:
    """What a device reported about the app, judged for a rollout of ``version``.

    Until the device names ``version`` as the one it wants, whatever it runs counts as
    "installing": it has not seen the rollout yet. A ``since`` from a device clock ahead
    of the hub's is taken as now, so a soak never ends early.
    """
    if not isinstance(entry, Mapping):
        return DeviceReport(device_id, online, None, "installing", now)
    running = entry.get("version")
    running = running if isinstance(running, str) else None
    state: DeviceState = "installing"
    if entry.get("wanted") == version:
        state = _JUDGED.get(str(entry.get("state")), "installing")
    since = entry.get("since")
    if isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since):
        since = now
    return DeviceReport(device_id, online, running, state, min(float(since), now))


# -- deploying ---------------------------------------------------------------------------


def deploy(
    session: Session,
    principal: Principal,
    app: str,
    version: str,
    selector: str,
    settings: Mapping[str, Any],
    now: dt.datetime,
) -> tuple[RolloutRow, list[tuple[str, Desired]]]:
    """Roll ``app@version`` out to the devices ``selector`` picks, now and later."""
    release = session.scalar(
        select(AppRelease).where(
            AppRelease.tenant_id == principal.tenant_id,
            AppRelease.name == app,
            AppRelease.version == version,
        )
    )
    if release is None:
        raise NotFoundError(f"the catalog has no {app}@{version}; publish it first")
    canonical = str(Selector.parse(selector))
    spec = load_spec(dict(settings))
    deployment = session.scalar(
        select(DeploymentRow).where(
            DeploymentRow.tenant_id == principal.tenant_id,
            DeploymentRow.app == app,
            DeploymentRow.selector == canonical,
        )
    )
    if deployment is None:
        deployment = DeploymentRow(
            id=_new_id("dp"),
            tenant_id=principal.tenant_id,
            app=app,
            selector=canonical,
            version=version,
            created_by=principal.token_id,
            created_at=now,
        )
        session.add(deployment)
    for older in session.scalars(
        select(RolloutRow).where(
            RolloutRow.deployment_id == deployment.id, RolloutRow.status != "superseded"
        )
    ):
        older.status = "superseded"
        older.reason = f"superseded by {app}@{version}"
        older.updated_at = now
    deployment.version = version
    deployment.updated_at = now
    row = RolloutRow(
        id=_new_id("ro"),
        tenant_id=principal.tenant_id,
        deployment_id=deployment.id,
        app=app,
        version=version,
        status="waiting",
        spec=dump_spec(spec),
        created_by=principal.token_id,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    _record(session, row, now, [core.Event("created", row.version)])
    return row, _step(session, row, deployment, now)


def undeploy(
    session: Session, principal: Principal, deployment_id: str, now: dt.datetime
) -> list[tuple[str, Desired]]:
    """Remove the deployment's app from the devices it reaches, and the deployment."""
    deployment = _get_deployment(session, principal, deployment_id)
    targets = _targets(session, deployment, now.timestamp())
    changes = _write_desired(
        session, deployment.app, {t.device_id: core.Desired(None, True) for t in targets}
    )
    rows = list(
        session.scalars(select(RolloutRow).where(RolloutRow.deployment_id == deployment.id))
    )
    for row in rows:
        _record(session, row, now, [core.Event("undeployed", deployment.selector)])
    session.execute(delete(RolloutRow).where(RolloutRow.deployment_id == deployment.id))
    session.delete(deployment)
    return changes


# -- stepping ----------------------------------------------------------------------------


def step_rollouts(
    session: Session, now: dt.datetime, statuses: Iterable[str] = LIVE
) -> list[tuple[str, Desired]]:
    """Step every rollout in ``statuses``; the desired states to publish."""
    changes: list[tuple[str, Desired]] = []
    rows = session.scalars(select(RolloutRow).where(RolloutRow.status.in_(tuple(statuses))))
    devices = Devices(session)
    for row in rows:
        deployment = session.get(DeploymentRow, row.deployment_id)
        if deployment is not None:
            changes += _step(session, row, deployment, now, devices)
    return changes


def act(
    session: Session, principal: Principal, rollout_id: str, action: str, now: dt.datetime
) -> tuple[RolloutRow, list[tuple[str, Desired]]]:
    """An operator's ``pause``, ``resume`` or ``abort``; takes effect at once."""
    row = get_rollout(session, principal, rollout_id)
    if row.state is None or row.status == "superseded":
        raise ValidationError(f"rollout {row.id} is {row.status}; there is nothing to {action}")
    spec = load_spec(row.spec)
    state = load_state(row.state)
    t = now.timestamp()
    if action == "pause":
        state = core.pause(spec, state, t)
    elif action == "resume":
        state = core.resume(state, t)
    elif action == "abort":
        state = core.abort(state)
    else:
        raise ValidationError(f"unknown rollout action {action!r}: pause, resume or abort")
    _save(row, state, now)
    _record(session, row, now, [core.Event(action + "d", principal.token_id)])
    deployment = session.get(DeploymentRow, row.deployment_id)
    assert deployment is not None
    return row, _step(session, row, deployment, now)


def _step(
    session: Session,
    row: RolloutRow,
    deployment: DeploymentRow,
    now: dt.datetime,
    devices: Devices | None = None,
) -> list[tuple[str, Desired]]:
    t = now.timestamp()
    spec = load_spec(row.spec)
    targets = _targets(session, deployment, t, row.version, devices)
    reports = {target.device_id: target.report for target in targets}
    if row.state is None:
        if not targets:
            return []
        decision = core.start(spec, row.id, row.version, reports, reports, t)
    else:
        decision = core.step(spec, load_state(row.state), reports, reports, t)
    if row.state is None or dump_state(decision.state) != row.state:
        _save(row, decision.state, now)
    _record(session, row, now, decision.events)
    return _write_desired(session, row.app, decision.desired)


def _save(row: RolloutRow, state: RolloutState, now: dt.datetime) -> None:
    row.state = dump_state(state)
    row.status = state.status
    row.reason = state.reason
    row.updated_at = now


class Devices:
    """Each tenant's active devices, read once for however many rollouts look at them (one
    pass of the hub's loop, one listing)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._rows: dict[str, list[tuple[str, Any, bool, Any]]] = {}

    def of(self, tenant_id: str) -> list[tuple[str, Any, bool, Any]]:
        if tenant_id not in self._rows:
            rows = self._session.execute(
                select(Device.id, Device.labels, Device.online, Device.reported).where(
                    Device.tenant_id == tenant_id, Device.state == "active"
                )
            )
            self._rows[tenant_id] = [tuple(row) for row in rows]
        return self._rows[tenant_id]


def _targets(
    session: Session,
    deployment: DeploymentRow,
    now: float,
    version: str | None = None,
    devices: Devices | None = None,
) -> list[Target]:
    """The devices the deployment reaches now (the newest deployment of the app wins)."""
    newer = [
        Selector.parse(selector)
        for selector in session.scalars(
            select(DeploymentRow.selector).where(
                DeploymentRow.tenant_id == deployment.tenant_id,
                DeploymentRow.app == deployment.app,
                DeploymentRow.created_at > deployment.created_at,
            )
        )
    ]
    mine = Selector.parse(deployment.selector)
    targets = []
    for device_id, labels, online, reported in (devices or Devices(session)).of(
        deployment.tenant_id
    ):
        if not mine.matches(labels) or any(s.matches(labels) for s in newer):
            continue
        entry = (reported.get("apps") or {}).get(deployment.app) if reported else None
        report = device_report(device_id, online, entry, version or deployment.version, now)
        targets.append(Target(device_id, labels, report))
    return targets


def _write_desired(
    session: Session, app: str, desired: Mapping[str, core.Desired]
) -> list[tuple[str, Desired]]:
    """Put the decided versions into the devices' desired ``apps``; only real changes."""
    if not desired:
        return []
    changes = []
    devices = session.scalars(select(Device).where(Device.id.in_(list(desired))))
    for device in devices:
        want = desired[device.id]
        apps = dict(device.desired.get("apps") or {})
        entry: dict[str, Any] | None
        if want.version is None:
            entry = None
        elif want.apply:
            entry = {"version": want.version}
        else:
            entry = {"version": want.version, "apply": False}
        if apps.get(app) == entry:
            continue
        if entry is None:
            apps.pop(app, None)
        else:
            apps[app] = entry
        device.desired = {**device.desired, "apps": apps}
        device.desired_version += 1
        changes.append((device.id, desired_message(device)))
    return changes


def _record(
    session: Session, row: RolloutRow, now: dt.datetime, events: Iterable[core.Event]
) -> None:
    rows = []
    for event in events:
        device = (
            event.subject
            if isinstance(event.subject, str)
            and event.kind
            in (
                "device-failed",
                "device-timed-out",
                "device-waiting",
                "caught-up",
                "joined",
            )
            else None
        )
        data: dict[str, Any] = {"rollout": row.id, "app": row.app, "version": row.version}
        if device is None:
            data["detail"] = event.subject
        rows.append(
            {
                "tenant_id": row.tenant_id,
                "event_id": secrets.token_hex(16),
                "source": HUB_SOURCE,
                "type": f"roost.rollout.{event.kind}",
                "subject": device or row.id,
                "device_id": device,
                "time": now,
                "data": data,
                "received_at": now,
            }
        )
    if rows:
        insert_events(session, rows)


# -- reading -----------------------------------------------------------------------------


def get_rollout(session: Session, principal: Principal, rollout_id: str) -> RolloutRow:
    row = session.get(RolloutRow, rollout_id)
    if row is None or row.tenant_id != principal.tenant_id:
        raise NotFoundError(f"no rollout {rollout_id!r}")
    return row


def _get_deployment(session: Session, principal: Principal, deployment_id: str) -> DeploymentRow:
    row = session.get(DeploymentRow, deployment_id)
    if row is None or row.tenant_id != principal.tenant_id:
        raise NotFoundError(f"no deployment {deployment_id!r}")
    return row


def find_deployment(
    session: Session, principal: Principal, app: str, selector: str | None
) -> DeploymentRow:
    """The deployment of ``app`` to ``selector``; without a selector, the app's only one."""
    query = select(DeploymentRow).where(
        DeploymentRow.tenant_id == principal.tenant_id, DeploymentRow.app == app
    )
    if selector is not None:
        query = query.where(DeploymentRow.selector == str(Selector.parse(selector)))
    found = list(session.scalars(query))
    if not found:
        where = f" to {selector!r}" if selector is not None else ""
        raise NotFoundError(f"{app} is not deployed{where}")
    if len(found) > 1:
        selectors = ", ".join(repr(d.selector) for d in found)
        raise ValidationError(f"{app} is deployed to {selectors}; say which with --to")
    return found[0]


def deployments(session: Session, principal: Principal) -> list[DeploymentRow]:
    return list(
        session.scalars(
            select(DeploymentRow)
            .where(DeploymentRow.tenant_id == principal.tenant_id)
            .order_by(DeploymentRow.app, DeploymentRow.created_at)
        )
    )


def rollouts(session: Session, principal: Principal, limit: int = 100) -> list[RolloutRow]:
    return list(
        session.scalars(
            select(RolloutRow)
            .where(RolloutRow.tenant_id == principal.tenant_id)
            .order_by(RolloutRow.created_at.desc())
            .limit(limit)
        )
    )


def progress(
    session: Session,
    row: RolloutRow,
    now: dt.datetime,
    with_devices: bool = False,
    devices: Devices | None = None,
) -> dict[str, Any]:
    """Where a rollout stands, wave by wave (and device by device when asked)."""
    deployment = session.get(DeploymentRow, row.deployment_id)
    view: dict[str, Any] = {
        "id": row.id,
        "deployment": row.deployment_id,
        "app": row.app,
        "version": row.version,
        "selector": deployment.selector if deployment is not None else "",
        "status": row.status,
        "reason": row.reason,
        "spec": row.spec,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "waves": [],
    }
    if row.state is None or deployment is None:
        return view
    state = load_state(row.state)
    targets = _targets(session, deployment, now.timestamp(), row.version, devices)
    reports = {t.device_id: t.report for t in targets}
    verdicts: dict[str, str] = {}
    for index, wave in enumerate(state.waves):
        counts: dict[str, int] = defaultdict(int)
        for device in wave:
            verdict = _device_progress(state, index, device, reports.get(device))
            counts[verdict] += 1
            verdicts[device] = verdict
        done = counts["healthy"] + counts["failed"] + counts["waiting"]
        view["waves"].append(
            {
                "index": index,
                "size": len(wave),
                "healthy": counts["healthy"],
                "failed": counts["failed"],
                "waiting": counts["waiting"],
                "pending": len(wave) - done,
                "status": _wave_status(state, index),
            }
        )
    for device in state.released:
        verdicts.setdefault(device, _device_progress(state, -1, device, reports.get(device)))
    view["devices"] = len(verdicts)
    if with_devices:
        view["device_states"] = dict(sorted(verdicts.items()))
    return view


def _device_progress(
    state: RolloutState, wave: int, device: str, report: DeviceReport | None
) -> str:
    if device in state.failed:
        return "failed"
    if device in state.settled:
        return "healthy"
    if wave > state.wave:
        return "not-started"
    if report is not None and report.version == state.version and report.state == "healthy":
        return "healthy"
    if device in state.released:
        return "waiting"
    return "updating" if device in state.assigned else "pending"


def _wave_status(state: RolloutState, index: int) -> str:
    if index < state.passed:
        return "passed"
    if index == state.wave:
        return state.status  # running, paused, halted or aborted
    return "not-started"


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)
