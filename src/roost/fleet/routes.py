"""HTTP routes of the fleet: enrollment, devices, labels, twin, commands, join tokens."""

from __future__ import annotations

import datetime as dt
import secrets

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from roost.api import DeviceDep, HubDep, PrincipalDep
from roost.db import utcnow
from roost.errors import CommandError, CommandTimeoutError, NotFoundError, ValidationError
from roost.events.store import hub_event, insert_events
from roost.fleet import service
from roost.fleet.models import CommandRow
from roost.fleet.schemas import (
    CAInfo,
    CommandRequest,
    CommandView,
    DesiredPatch,
    DeviceView,
    EnrollRequest,
    EnrollResponse,
    LabelsRequest,
    RenewRequest,
    RenewResponse,
    TokenRequest,
    TokenResponse,
    TwinView,
)
from roost.fleet.selectors import Selector
from roost.pki.tokens import JoinToken
from roost.wire import Desired

router = APIRouter(prefix="/v1")


@router.get("/ca", tags=["enrollment"])
def get_ca(hub: HubDep) -> CAInfo:
    """The hub's CA certificate; a joining device checks it against its token's pin."""
    return CAInfo(ca_pem=hub.ca.cert_pem, fingerprint=hub.ca.fingerprint)


@router.post("/enroll", tags=["enrollment"])
async def enroll(body: EnrollRequest, hub: HubDep) -> EnrollResponse:
    """Exchange a join token and a CSR for a device identity."""
    ttl = dt.timedelta(seconds=hub.settings.device_cert_ttl_s)

    def run() -> tuple[EnrollResponse, str]:
        with hub.db.session() as session:
            now = utcnow()
            device, cert = service.enroll(
                session, hub.ca, body.token_id, body.secret, body.csr, ttl, now
            )
            data = {"labels": device.labels}
            insert_events(
                session,
                [hub_event(device.tenant_id, "roost.device.enrolled", device.id, now, data)],
            )
            return EnrollResponse(
                device_id=device.id,
                cert_pem=cert,
                ca_pem=hub.ca.cert_pem,
                mqtt_host=hub.host,
                mqtt_port=hub.settings.mqtt_port,
                heartbeat_interval=hub.settings.heartbeat_interval_s,
                labels=device.labels,
            ), device.tenant_id

    response, tenant_id = await run_in_threadpool(run)
    hub.ingest.known(response.device_id, tenant_id)
    return response


@router.post("/agent/renew", tags=["enrollment"])
def renew(body: RenewRequest, device: DeviceDep, hub: HubDep) -> RenewResponse:
    """A fresh certificate for the device that signed this request."""
    ttl = dt.timedelta(seconds=hub.settings.device_cert_ttl_s)
    with hub.db.session() as session:
        row = session.merge(device)
        cert = service.renew(session, hub.ca, row, body.csr, ttl, utcnow())
    return RenewResponse(cert_pem=cert)


@router.get("/agent/self", tags=["enrollment"])
def whoami(device: DeviceDep) -> DeviceView:
    """The calling device as the hub sees it."""
    return DeviceView.of(device)


@router.post("/tokens", tags=["enrollment"])
def create_token(body: TokenRequest, principal: PrincipalDep, hub: HubDep) -> TokenResponse:
    """A join token for devices; the secret inside is shown only in this answer."""
    ttl = dt.timedelta(seconds=body.ttl_s or hub.settings.join_token_ttl_s)
    with hub.db.session() as session:
        row, secret = service.create_join_token(
            session, principal, body.labels, body.uses, ttl, utcnow()
        )
    token = JoinToken(hub.url, hub.ca.fingerprint, row.id, secret).encode()
    return TokenResponse(
        id=row.id, token=token, expires_at=row.expires_at, uses=row.uses_left, labels=row.labels
    )


@router.get("/devices", tags=["devices"])
def list_devices(principal: PrincipalDep, hub: HubDep, selector: str = "") -> list[DeviceView]:
    with hub.db.session() as session:
        devices = service.list_devices(session, principal, Selector.parse(selector))
        return [DeviceView.of(d) for d in devices]


@router.get("/devices/{device_id}", tags=["devices"])
def show_device(device_id: str, principal: PrincipalDep, hub: HubDep) -> DeviceView:
    with hub.db.session() as session:
        return DeviceView.of(service.get_device(session, principal, device_id))


@router.patch("/devices/{device_id}/labels", tags=["devices"])
async def label_device(
    device_id: str, body: LabelsRequest, principal: PrincipalDep, hub: HubDep
) -> DeviceView:
    def run() -> tuple[DeviceView, Desired]:
        with hub.db.session() as session:
            device = service.set_labels(session, principal, device_id, body.labels)
            return DeviceView.of(device), service.desired_message(device)

    view, desired = await run_in_threadpool(run)
    hub.publish_desired(device_id, desired)
    return view


@router.post("/devices/{device_id}/revoke", tags=["devices"])
async def revoke_device(device_id: str, principal: PrincipalDep, hub: HubDep) -> DeviceView:
    """Revoke the device's certificates: the broker and the API refuse it from now on."""

    def run() -> DeviceView:
        with hub.db.session() as session:
            now = utcnow()
            device = service.revoke(session, principal, device_id, now)
            insert_events(
                session, [hub_event(device.tenant_id, "roost.device.revoked", device_id, now)]
            )
            return DeviceView.of(device)

    view = await run_in_threadpool(run)
    await hub.apply_revocations()
    return view


@router.get("/devices/{device_id}/twin", tags=["twin"])
def show_twin(device_id: str, principal: PrincipalDep, hub: HubDep) -> TwinView:
    with hub.db.session() as session:
        return TwinView.of(service.get_device(session, principal, device_id))


@router.patch("/devices/{device_id}/twin/desired", tags=["twin"])
async def set_desired(
    device_id: str, body: DesiredPatch, principal: PrincipalDep, hub: HubDep
) -> TwinView:
    limit = hub.settings.max_twin_bytes

    def run() -> tuple[TwinView, Desired]:
        with hub.db.session() as session:
            device = service.set_desired(session, principal, device_id, body.patch, limit)
            return TwinView.of(device), service.desired_message(device)

    view, desired = await run_in_threadpool(run)
    hub.publish_desired(device_id, desired)
    return view


def _command_view(row: CommandRow) -> CommandView:
    return CommandView(
        id=row.id,
        device_id=row.device_id,
        name=row.name,
        args=row.args,
        status=row.status,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        completed_at=row.completed_at,
    )


@router.post("/devices/{device_id}/commands", tags=["commands"])
async def run_command(
    device_id: str, body: CommandRequest, principal: PrincipalDep, hub: HubDep
) -> CommandView:
    """Send a command and wait for the device's answer (504 when it does not come in time)."""
    timeout = body.timeout or hub.settings.command_timeout_s
    if timeout > hub.settings.command_timeout_max_s:
        raise ValidationError(f"timeout is at most {hub.settings.command_timeout_max_s:g}s")

    def create() -> tuple[CommandRow, bool]:
        with hub.db.session() as session:
            device = service.get_device(session, principal, device_id)
            if device.state != "active":
                raise CommandError(f"device {device_id} is revoked", device_id)
            now = utcnow()
            row = CommandRow(
                id=secrets.token_hex(8),
                tenant_id=principal.tenant_id,
                device_id=device_id,
                name=body.name,
                args=body.args,
                created_at=now,
                deadline=now + dt.timedelta(seconds=timeout),
            )
            session.add(row)
            return row, device.online

    row, online = await run_in_threadpool(create)
    reply = await hub.send_command(row, timeout)
    view = await run_in_threadpool(_load_command, hub, principal.tenant_id, row.id)
    # "timeout": the expiry loop may have marked it between our wait and this read.
    if reply is None and view.status in ("pending", "timeout"):
        state = "" if online else " (it is offline)"
        raise CommandTimeoutError(
            f"device {device_id} did not answer {body.name!r} within {timeout:g}s{state}",
            device_id,
        )
    return view


def _load_command(hub: HubDep, tenant_id: str, command_id: str) -> CommandView:
    with hub.db.session() as session:
        row = session.get(CommandRow, command_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFoundError(f"no command {command_id!r}")
        return _command_view(row)


@router.get("/devices/{device_id}/commands/{command_id}", tags=["commands"])
def show_command(
    device_id: str, command_id: str, principal: PrincipalDep, hub: HubDep
) -> CommandView:
    view = _load_command(hub, principal.tenant_id, command_id)
    if view.device_id != device_id:
        raise NotFoundError(f"no command {command_id!r}")
    return view
