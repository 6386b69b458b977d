"""The agent's HTTPS calls to the hub: standard library only, signed with the device key.

``http.client`` instead of httpx keeps the agent small. The hub is trusted through its
CA (``ca.pem``, pinned at enrollment); requests are signed per ``roost.pki.signing``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from roost.errors import HubError, HubUnreachableError, WireError

# A signer turns (method, target, body) into authentication headers.
Signer = Callable[[str, str, bytes], dict[str, str]]


def verified_context(ca_pem: str) -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)


def unverified_context() -> ssl.SSLContext:
    """Only for fetching the hub's CA, which the caller then checks against its pin."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def request(
    url: str,
    method: str,
    path: str,
    context: ssl.SSLContext,
    body: Any = None,
    signer: Signer | None = None,
    timeout: float = 30.0,
) -> Any:
    """One JSON request; HTTP errors become ``HubError`` with the hub's own message.

    A ``bytes`` body is sent as it is (``application/octet-stream``), anything else as JSON.
    """
    parts = urllib.parse.urlsplit(url)
    if isinstance(body, bytes):
        raw, kind = body, "application/octet-stream"
    else:
        raw, kind = b"" if body is None else json.dumps(body).encode(), "application/json"
    headers = {"content-type": kind, "accept": "application/json"}
    if signer is not None:
        headers.update(signer(method, path, raw))
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, context=context, timeout=timeout
    )
    try:
        connection.request(method, path, body=raw or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as err:
        raise HubUnreachableError(url, str(err) or type(err).__name__) from err
    finally:
        connection.close()
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        decoded = None
    if response.status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else None
        raise HubError(message or f"the hub answered {response.status}", response.status)
    return decoded


def device_signer(device_id: str, key_pem: bytes) -> Signer:
    """A signer for this device's key (loads ``cryptography`` on first use)."""
    from roost.pki import signing
    from roost.pki.keys import load_key_pem

    key = load_key_pem(key_pem)

    def sign(method: str, target: str, body: bytes) -> dict[str, str]:
        return signing.sign(key, device_id, method, target, body, time.time())

    return sign


def fetch(
    url: str,
    path: str,
    context: ssl.SSLContext,
    signer: Signer | None = None,
    timeout: float = 30.0,
    max_bytes: int = 1 << 20,
    sink: Callable[[bytes], None] | None = None,
) -> bytes:
    """One signed GET of raw bytes, refusing an answer longer than ``max_bytes``.

    Signing, TLS and ``timeout`` are as in ``request()``. An HTTP error becomes ``HubError``
    whose ``status`` is the hub's (404: the file is not there); no answer at all is
    ``HubUnreachableError``; a body over ``max_bytes`` is ``WireError``, found while
    reading in chunks so an endless answer never fills memory. With ``sink``, a good
    answer's chunks go to it as they come (and ``b""`` is returned).
    """
    parts = urllib.parse.urlsplit(url)
    headers = {"accept": "*/*"}
    if signer is not None:
        headers.update(signer("GET", path, b""))
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, context=context, timeout=timeout
    )
    chunks: list[bytes] = []
    received = 0
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        # An error's body is only read for its message, and never at length.
        limit = max_bytes if response.status < 400 else 64 * 1024
        while received <= limit:
            chunk = response.read(min(64 * 1024, limit + 1 - received))
            if not chunk:
                break
            received += len(chunk)
            if sink is not None and response.status < 400 and received <= max_bytes:
                sink(chunk)
            else:
                chunks.append(chunk)
    except (OSError, http.client.HTTPException) as err:
        raise HubUnreachableError(url, str(err) or type(err).__name__) from err
    finally:
        connection.close()
    data = b"".join(chunks)
    if response.status >= 400:
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        message = decoded.get("error") if isinstance(decoded, dict) else None
        raise HubError(message or f"the hub answered {response.status}", response.status)
    if received > max_bytes:
        raise WireError(f"the hub sent more than {max_bytes} bytes for {path}; refused")
    return data
