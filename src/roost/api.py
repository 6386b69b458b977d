"""What the parts' HTTP routes stand on: the hub as an interface, and who is calling.

The parts (fleet, access, events, ...) never import ``roost.hub``; their routes ask for a
``HubContext`` and the hub's app factory puts the real hub behind it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from roost.access.service import Principal, authenticate
from roost.errors import AuthError
from roost.fleet.models import Device
from roost.pki import load_cert, signing

if TYPE_CHECKING:
    from roost.catalog.repository import Catalog
    from roost.db import Database
    from roost.fleet.ingest import Ingest
    from roost.fleet.models import CommandRow
    from roost.functions.runtime import Functions
    from roost.pki import CertificateAuthority
    from roost.rules.delivery import Delivery
    from roost.settings import HubSettings
    from roost.wire import Desired, Reply


class HubContext(Protocol):
    """The services of the hub that routes may use."""

    settings: HubSettings
    db: Database
    ca: CertificateAuthority
    ingest: Ingest
    catalog: Catalog
    # The outbox of rules' actions: its secrets, and ``notify()`` when rows are due.
    delivery: Delivery
    # Functions: run one (``invoke``), retire a function's warm workers.
    functions: Functions
    url: str
    host: str

    def publish_desired(self, device_id: str, desired: Desired) -> None: ...

    async def send_command(self, row: CommandRow, timeout: float) -> Reply | None: ...

    async def apply_revocations(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def get_hub(request: Request) -> HubContext:
    hub: HubContext = request.app.state.hub
    return hub


HubDep = Annotated[HubContext, Depends(get_hub)]


async def get_principal(request: Request, hub: HubDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("an API token is needed (Authorization: Bearer ...)")

    def check() -> Principal:
        with hub.db.session() as session:
            return authenticate(session, token.strip())

    return await run_in_threadpool(check)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_device(request: Request, hub: HubDep) -> Device:
    """The device whose own key signed this request; revoked devices are refused."""
    return await signed_by_device(request, hub, await request.body())


async def signed_by_device(request: Request, hub: HubContext, signed: bytes) -> Device:
    """The device whose own key signed ``request`` over ``signed`` (its body, or what
    stands for a streamed body); revoked devices are refused."""
    device_id = request.headers.get(signing.DEVICE_HEADER, "")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")

    def check() -> Device:
        with hub.db.session() as session:
            device = session.get(Device, device_id)
            if device is None or device.state != "active":
                raise AuthError("unknown or revoked device")
            public_key = load_cert(device.cert_pem).public_key()
            signing.verify(
                public_key,  # type: ignore[arg-type]
                dict(request.headers),
                request.method,
                target,
                signed,
                time.time(),
                hub.settings.request_clock_skew_s,
            )
            session.expunge(device)
            return device

    return await run_in_threadpool(check)


DeviceDep = Annotated[Device, Depends(get_device)]
