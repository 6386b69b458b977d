"""Enrolling many virtual devices at once through the hub's real ``/v1/enroll``.

Each device makes its own EC P-256 key and CSR, exactly like ``roost agent join``; the
requests run concurrently over a bounded pool of HTTPS connections to the hub (whose
CA is pinned by the join token). Transient failures (no answer, 5xx) are retried with
backoff; a refused token is a ``HubError`` at once.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable

import httpx

from roost.errors import FingerprintMismatchError, HubError, HubUnreachableError
from roost.pki import JoinToken, fingerprint, generate_key, make_csr
from roost.pki.keys import key_to_pem
from roost.sim.store import IdentityCache

ATTEMPTS = 6
# Enrollments in flight at once; the hub signs and writes one device at a time anyway.
CONCURRENCY = 32
REQUEST_TIMEOUT_S = 60.0


def check_pin(token: JoinToken, ca_pem: str) -> None:
    """The hub's CA we hold must be the one the token pins."""
    actual = fingerprint(ca_pem)
    if actual != token.ca_fingerprint:
        raise FingerprintMismatchError(token.ca_fingerprint, actual)


async def enroll_devices(
    token: JoinToken,
    ca_pem: str,
    cache: IdentityCache,
    count: int,
    concurrency: int = CONCURRENCY,
    on_enrolled: Callable[[str], None] = lambda _id: None,
) -> list[str]:
    """Enroll ``count`` new devices, saving each identity as soon as it is issued."""
    check_pin(token, ca_pem)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    todo = iter(range(count))
    enrolled: list[str] = []
    async with httpx.AsyncClient(
        base_url=token.hub_url, verify=context, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as http:

        async def worker() -> None:
            for _ in todo:
                device_id = await _enroll_one(http, token, cache)
                enrolled.append(device_id)
                on_enrolled(device_id)

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    return enrolled


async def _enroll_one(http: httpx.AsyncClient, token: JoinToken, cache: IdentityCache) -> str:
    key = generate_key()
    body = {"token_id": token.token_id, "secret": token.secret, "csr": make_csr(key)}
    for attempt in range(ATTEMPTS):
        try:
            response = await http.post("/v1/enroll", json=body)
        except httpx.TransportError as err:
            if attempt == ATTEMPTS - 1:
                raise HubUnreachableError(token.hub_url, str(err) or type(err).__name__) from err
        else:
            if response.status_code < 400:
                answer = response.json()
                device_id = str(answer["device_id"])
                cache.set_broker(str(answer["mqtt_host"]), int(answer["mqtt_port"]))
                cache.save(device_id, key_to_pem(key), answer["cert_pem"])
                return device_id
            if response.status_code < 500 or attempt == ATTEMPTS - 1:
                raise HubError(_error_text(response), response.status_code)
        await asyncio.sleep(random.uniform(0.2, 0.5) * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _error_text(response: httpx.Response) -> str:
    try:
        message = response.json().get("error")
    except ValueError:
        message = None
    return f"enrollment refused: {message or response.text or response.status_code}"
