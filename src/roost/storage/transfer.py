"""Moving shares between the hub and devices: the hub asks, the device calls back.

The hub never connects to a device. To place a share it spools the share under its data
dir and sends the device a ``share-fetch`` command over MQTT; the device GETs the share
with a request signed by its own key and answers the command once it is on its disk.
To read a share it sends ``share-upload`` with the path to PUT it to; the device PUTs,
then answers. ``ask`` runs one such exchange and turns every way it can go wrong (the
device is offline, does not answer in time, answers with an error) into one line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from roost.api import HubContext
from roost.db import utcnow
from roost.fleet.models import CommandRow, Device
from roost.storage.models import ShareRow
from roost.storage.placement import StorageNode

# A share moves at no less than this (bytes/s) before its command times out.
MIN_RATE = 1_000_000
# The label a drain sets on a device: it takes no new shares, and the repair loop moves
# what it holds. Removing the label (``roost devices label ID storage.drain-``) ends it.
DRAIN_LABEL = "storage.drain"


@dataclass(frozen=True)
class Answer:
    """What came of asking a device: ``error`` is empty when it did what it was asked."""

    device_id: str
    error: str = ""
    result: Any = None

    @property
    def ok(self) -> bool:
        return not self.error


def storage_nodes(hub: HubContext, tenant_id: str) -> list[StorageNode]:
    """The tenant's devices that are online, not draining, and report free space."""
    with hub.db.session() as session:
        devices = session.scalars(
            select(Device).where(
                Device.tenant_id == tenant_id, Device.state == "active", Device.online
            )
        ).all()
        nodes = []
        for device in devices:
            free = device.metrics.get("storage_free", 0)
            labels = device.labels
            if isinstance(free, int | float) and free > 0 and DRAIN_LABEL not in labels:
                site, zone = str(labels.get("site", "")), str(labels.get("zone", ""))
                nodes.append(StorageNode(device.id, int(free), site, zone))
        return nodes


def online(hub: HubContext, device_ids: Sequence[str]) -> set[str]:
    with hub.db.session() as session:
        rows = session.scalars(
            select(Device.id).where(Device.id.in_(device_ids), Device.online)
        ).all()
        return set(rows)


def timeout_for(hub: HubContext, size: int) -> float:
    return min(hub.settings.command_timeout_max_s, hub.settings.command_timeout_s + size / MIN_RATE)


async def ask(
    hub: HubContext, tenant_id: str, device_id: str, name: str, args: dict[str, Any], timeout: float
) -> Answer:
    """Send one command and wait for its answer."""

    def create() -> CommandRow:
        with hub.db.session() as session:
            now = utcnow()
            row = CommandRow(
                id=secrets.token_hex(8),
                tenant_id=tenant_id,
                device_id=device_id,
                name=name,
                args=args,
                created_at=now,
                deadline=now + dt.timedelta(seconds=timeout),
            )
            session.add(row)
            return row

    row = await run_in_threadpool(create)
    reply = await hub.send_command(row, timeout)
    if reply is None:
        return Answer(device_id, f"device {device_id} did not answer {name} in {timeout:g}s")
    if not reply.ok:
        return Answer(device_id, f"device {device_id}: {reply.error}")
    return Answer(device_id, result=reply.result)


async def ask_all(
    hub: HubContext,
    tenant_id: str,
    asks: Sequence[tuple[str, str, dict[str, Any], float]],
) -> list[Answer]:
    """``ask`` each (device, command, args, timeout) at once; offline devices are not asked."""
    up = await run_in_threadpool(online, hub, [device for device, *_ in asks])

    async def one(device: str, name: str, args: dict[str, Any], timeout: float) -> Answer:
        if device not in up:
            return Answer(device, f"device {device} is offline")
        return await ask(hub, tenant_id, device, name, args, timeout)

    return list(await asyncio.gather(*(one(*a) for a in asks)))


async def fetch_all(hub: HubContext, tenant_id: str, rows: Sequence[ShareRow]) -> list[Answer]:
    """Ask each share's device to fetch it from the hub's spool (``share-fetch``); the
    answers in the order of ``rows``."""
    asks = [
        (
            row.device_id,
            "share-fetch",
            {"share": row.id, "size": row.size, "hash": row.hash},
            timeout_for(hub, row.size),
        )
        for row in rows
    ]
    return await ask_all(hub, tenant_id, asks)
