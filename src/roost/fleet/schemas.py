"""The fleet API's request and response bodies (these make the OpenAPI document)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from roost.fleet.models import Device


class CAInfo(BaseModel):
    ca_pem: str
    fingerprint: str


class EnrollRequest(BaseModel):
    token_id: str = Field(max_length=64)
    secret: str = Field(max_length=128)
    csr: str = Field(max_length=8192)


class EnrollResponse(BaseModel):
    device_id: str
    cert_pem: str
    ca_pem: str
    mqtt_host: str
    mqtt_port: int
    heartbeat_interval: float
    labels: dict[str, str]


class RenewRequest(BaseModel):
    csr: str = Field(max_length=8192)


class RenewResponse(BaseModel):
    cert_pem: str


class TokenRequest(BaseModel):
    labels: dict[str, str] = Field(default_factory=dict)
    uses: int | None = Field(default=1, ge=1, description="devices that may join; null: any")
    ttl_s: int | None = Field(default=None, ge=1, le=365 * 24 * 3600)


class TokenResponse(BaseModel):
    id: str
    token: str
    expires_at: dt.datetime
    uses: int | None
    labels: dict[str, str]


class DeviceView(BaseModel):
    id: str
    tenant: str
    status: str = Field(description="online or offline")
    state: str = Field(description="active or revoked")
    labels: dict[str, str]
    last_seen: dt.datetime | None
    enrolled_at: dt.datetime
    agent_version: str
    inventory: dict[str, Any]
    metrics: dict[str, Any]
    cert_not_after: dt.datetime
    desired_version: int
    reported_version: int

    @classmethod
    def of(cls, device: Device) -> DeviceView:
        return cls(
            id=device.id,
            tenant=device.tenant_id,
            status="online" if device.online else "offline",
            state=device.state,
            labels=device.labels,
            last_seen=device.last_seen,
            enrolled_at=device.enrolled_at,
            agent_version=device.agent_version,
            inventory=device.inventory,
            metrics=device.metrics,
            cert_not_after=device.cert_not_after,
            desired_version=device.desired_version,
            reported_version=device.reported_version,
        )


class LabelsRequest(BaseModel):
    labels: dict[str, str | None] = Field(description="a null value removes the label")


class TwinView(BaseModel):
    device_id: str
    desired: dict[str, Any]
    desired_version: int
    reported: dict[str, Any]
    reported_version: int
    reported_at: dt.datetime | None
    in_sync: bool

    @classmethod
    def of(cls, device: Device) -> TwinView:
        return cls(
            device_id=device.id,
            desired={**device.desired, "labels": device.labels},
            desired_version=device.desired_version,
            reported=device.reported,
            reported_version=device.reported_version,
            reported_at=device.reported_at,
            in_sync=device.reported_version == device.desired_version,
        )


class DesiredPatch(BaseModel):
    patch: dict[str, Any] = Field(description="top-level keys to set; null removes a key")


class CommandRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)


class CommandView(BaseModel):
    id: str
    device_id: str
    name: str
    args: dict[str, Any]
    status: str = Field(description="pending, ok, error or timeout")
    result: Any = None
    error: str = ""
    created_at: dt.datetime
    completed_at: dt.datetime | None
