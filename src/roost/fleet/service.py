"""The fleet's logic on the hub: join tokens, enrollment, renewal, labels, twin, revocation.

Each function takes an open ``Session`` (the caller commits) and, where a person acts,
the caller's ``Principal``: every lookup is filtered by tenant, so another tenant's
device is simply not found.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from roost.access import Principal
from roost.apps.manifest import APP_NAME_RE
from roost.db import delete_oldest
from roost.errors import (
    NotFoundError,
    TokenExpiredError,
    TokenInvalidError,
    TokenUsedUpError,
    ValidationError,
)
from roost.fleet.models import CommandRow, Device, DeviceCert, JoinTokenRow
from roost.fleet.selectors import Selector
from roost.pki import CertificateAuthority, Revoked, secret_matches
from roost.pki.ca import cert_to_pem
from roost.pki.tokens import hash_secret, new_secret
from roost.wire import Desired

LABEL_KEY_MAX = 63
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
LABEL_VALUE_MAX = 128
# Desired-state keys the agent itself acts on; the rest is config for apps.
KNOWN_DESIRED = ("config", "heartbeat_interval", "apps")


def new_device_id() -> str:
    return "d" + base64.b32encode(secrets.token_bytes(15)).decode().lower()[:20]


def check_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in labels.items():
        if len(key) > LABEL_KEY_MAX or not LABEL_KEY_RE.fullmatch(key):
            raise ValidationError(f"label key {key!r} is not valid (letters, digits, -_./)")
        if not isinstance(value, str) or len(value) > LABEL_VALUE_MAX:
            raise ValidationError(f"label {key!r}: values are strings of at most 128 characters")
        out[key] = value
    return out


# -- join tokens and enrollment ---------------------------------------------------------


def create_join_token(
    session: Session,
    principal: Principal,
    labels: Mapping[str, str],
    uses: int | None,
    ttl: dt.timedelta,
    now: dt.datetime,
) -> tuple[JoinTokenRow, str]:
    """A new join token; the secret is returned once and only its hash is kept."""
    if uses is not None and uses < 1:
        raise ValidationError("--uses must be at least 1")
    secret = new_secret()
    row = JoinTokenRow(
        id=secrets.token_hex(8),
        tenant_id=principal.tenant_id,
        secret_hash=hash_secret(secret),
        labels=check_labels(labels),
        uses_left=uses,
        expires_at=now + ttl,
    )
    session.add(row)
    return row, secret


def _take_token(session: Session, token_id: str, secret: str, now: dt.datetime) -> JoinTokenRow:
    row = session.get(JoinTokenRow, token_id)
    if row is None or not secret_matches(secret, row.secret_hash):
        raise TokenInvalidError("unknown join token")
    if row.expires_at <= now:
        raise TokenExpiredError("this join token has expired; ask for a new one")
    if row.uses_left is not None:
        # Atomic on both SQLite and PostgreSQL: two devices racing for the last use
        # cannot both win.
        taken = session.execute(
            update(JoinTokenRow)
            .where(JoinTokenRow.id == token_id, JoinTokenRow.uses_left > 0)
            .values(uses_left=JoinTokenRow.uses_left - 1)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise TokenUsedUpError("this join token has been used up; ask for a new one")
    return row


def enroll(
    session: Session,
    ca: CertificateAuthority,
    token_id: str,
    secret: str,
    csr_pem: str,
    cert_ttl: dt.timedelta,
    now: dt.datetime,
) -> tuple[Device, str]:
    """Turn a join token and a CSR into a new device and its certificate (PEM)."""
    token = _take_token(session, token_id, secret, now)
    device_id = new_device_id()
    cert = ca.sign_csr(csr_pem, device_id, cert_ttl, now)
    device = Device(
        id=device_id,
        tenant_id=token.tenant_id,
        labels=dict(token.labels),
        cert_pem=cert_to_pem(cert),
        cert_not_after=cert.not_valid_after_utc,
        enrolled_at=now,
        desired={},
        desired_version=1,
    )
    session.add(device)
    session.flush()
    session.add(
        DeviceCert(
            serial=format(cert.serial_number, "x"),
            device_id=device_id,
            tenant_id=token.tenant_id,
            not_after=cert.not_valid_after_utc,
            issued_at=now,
        )
    )
    return device, device.cert_pem


def renew(
    session: Session,
    ca: CertificateAuthority,
    device: Device,
    csr_pem: str,
    cert_ttl: dt.timedelta,
    now: dt.datetime,
) -> str:
    """A fresh certificate for an enrolled, not revoked device (authenticated by the caller)."""
    cert = ca.sign_csr(csr_pem, device.id, cert_ttl, now)
    device.cert_pem = cert_to_pem(cert)
    device.cert_not_after = cert.not_valid_after_utc
    session.add(
        DeviceCert(
            serial=format(cert.serial_number, "x"),
            device_id=device.id,
            tenant_id=device.tenant_id,
            not_after=cert.not_valid_after_utc,
            issued_at=now,
        )
    )
    return device.cert_pem


# -- reading and changing devices -------------------------------------------------------


def get_device(session: Session, principal: Principal, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None or device.tenant_id != principal.tenant_id:
        raise NotFoundError(f"no device {device_id!r}")
    return device


def list_devices(
    session: Session, principal: Principal, selector: Selector | None = None
) -> list[Device]:
    rows = session.scalars(
        select(Device).where(Device.tenant_id == principal.tenant_id).order_by(Device.enrolled_at)
    )
    return [d for d in rows if selector is None or selector.matches(d.labels)]


def desired_message(device: Device) -> Desired:
    """What the agent receives: the stored desired state plus the device's labels."""
    return Desired(
        version=device.desired_version, state={**device.desired, "labels": device.labels}
    )


def set_labels(
    session: Session, principal: Principal, device_id: str, changes: Mapping[str, str | None]
) -> Device:
    """Set labels (a value of None removes the label); the agent learns them as desired state."""
    device = get_device(session, principal, device_id)
    labels = dict(device.labels)
    for key, value in changes.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    device.labels = check_labels(labels)
    device.desired_version += 1
    return device


def set_desired(
    session: Session,
    principal: Principal,
    device_id: str,
    patch: Mapping[str, Any],
    max_bytes: int,
) -> Device:
    """Merge ``patch`` into the desired state (top-level keys; None removes a key)."""
    device = get_device(session, principal, device_id)
    if "labels" in patch:
        raise ValidationError("labels are set with `roost devices label`, not in the twin")
    if "functions" in patch:
        raise ValidationError("functions are placed with `roost fn deploy --on`, not in the twin")
    desired = dict(device.desired)
    for key, value in patch.items():
        if value is None:
            desired.pop(key, None)
        else:
            desired[key] = value
    interval = desired.get("heartbeat_interval")
    if interval is not None and (
        not isinstance(interval, int | float)
        or isinstance(interval, bool)
        or not 1 <= interval <= 86400
    ):
        raise ValidationError("heartbeat_interval must be a number of seconds from 1 to 86400")
    if "config" in desired and not isinstance(desired["config"], dict):
        raise ValidationError("config must be an object")
    _check_apps(desired.get("apps", {}))
    size = len(json.dumps(desired))
    if size > max_bytes:
        raise ValidationError(f"desired state of {size} bytes exceeds the {max_bytes}-byte limit")
    device.desired = desired
    device.heartbeat_s = None if interval is None else float(interval)
    device.desired_version += 1
    return device


def _check_apps(apps: Any) -> None:
    """Desired apps: ``{name: {"version": "1.2.3"}}``, with ``"apply": false`` to stage it."""
    if not isinstance(apps, dict):
        raise ValidationError('apps must be an object like {"web": {"version": "1.0.0"}}')
    for name, entry in apps.items():
        if not APP_NAME_RE.fullmatch(name):
            raise ValidationError(f"apps: {name[:80]!r} is not an app name")
        version = entry.get("version") if isinstance(entry, dict) else None
        if (
            not isinstance(version, str)
            or not version
            or set(entry) - {"version", "apply"}
            or not isinstance(entry.get("apply", True), bool)
        ):
            raise ValidationError(f'apps.{name} must be {{"version": "...", "apply": true|false}}')


def silent_devices(
    session: Session, now: dt.datetime, listened: float, default_interval: float, factor: float
) -> list[str]:
    """Online devices not heard from for ``factor`` heartbeat intervals.

    ``listened`` is how long the hub has been receiving: a device is never called silent
    before the hub could have heard ``factor`` of its heartbeats. Devices on the hub's
    interval are filtered by the database; the few with an interval of their own (set in
    their desired state) are checked here.
    """
    cutoff = now - dt.timedelta(seconds=factor * default_interval)
    rows = session.execute(
        select(Device.id, Device.last_seen, Device.heartbeat_s).where(
            Device.online,
            or_(
                Device.heartbeat_s.is_not(None),
                Device.last_seen.is_(None),
                Device.last_seen < cutoff,
            ),
        )
    )
    silent = []
    for device_id, last_seen, own in rows:
        limit = factor * (own or default_interval)
        if listened < limit:
            continue
        if last_seen is None or (now - last_seen).total_seconds() > limit:
            silent.append(device_id)
    return silent


def revoke(session: Session, principal: Principal, device_id: str, now: dt.datetime) -> Device:
    device = get_device(session, principal, device_id)
    device.state = "revoked"
    device.online = False
    session.execute(
        update(DeviceCert)
        .where(DeviceCert.device_id == device_id, DeviceCert.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return device


def revocations(session: Session) -> tuple[list[Revoked], list[str]]:
    """Every revoked certificate (for the CRL) and every revoked device id (for the ACL)."""
    certs = session.execute(
        select(DeviceCert.serial, DeviceCert.revoked_at).where(DeviceCert.revoked_at.is_not(None))
    )
    revoked = [Revoked(int(serial, 16), at) for serial, at in certs if at is not None]
    ids = list(session.scalars(select(Device.id).where(Device.state == "revoked")))
    return revoked, ids


def prune_commands(session: Session, cutoff: dt.datetime, batch: int = 10_000) -> int:
    """Delete up to ``batch`` commands created before ``cutoff`` that are no longer
    pending (answered, failed or timed out); how many were deleted."""
    finished = and_(CommandRow.created_at < cutoff, CommandRow.status != "pending")
    return delete_oldest(session, CommandRow.id, finished, batch)
