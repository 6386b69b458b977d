"""The agent's HTTPS calls to the hub: standard library only, signed with the device key.

``http.client`` instead of httpx keeps the agent small. The hub is trusted through its
CA (``ca.pem``, pinned at enrollment); requests are signed per ``roost.pki.signing``.

Big bodies (storage shares) stream both ways through one reused buffer, never whole in
memory: ``fetch`` with a ``sink``, and ``upload``. A streamed upload cannot be signed
over its body's SHA-256 before it is read, so its signature covers the body's declared
BLAKE3 hash instead (``DIGEST_HEADER``, ``signed_digest``); the hub checks the body
against that hash, and against the one it recorded, as it arrives.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from roost.errors import HubError, HubUnreachableError, WireError
from roost.pki.signing import DIGEST_HEADER, signed_digest

# A signer turns (method, target, body) into authentication headers.
Signer = Callable[[str, str, bytes], dict[str, str]]

# Bytes read or sent at a time for big bodies: big enough that TLS records and system
# calls are few, small enough for a Pi (one buffer per transfer).
CHUNK = 1 << 20


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
    if isinstance(body, bytes):
        raw, kind = body, "application/octet-stream"
    else:
        raw, kind = b"" if body is None else json.dumps(body).encode(), "application/json"
    headers = {"content-type": kind, "accept": "application/json"}
    if signer is not None:
        headers.update(signer(method, path, raw))
    with _connection(url, context, timeout) as connection:
        connection.request(method, path, body=raw or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
    if response.status >= 400:
        _raise_error(response.status, data)
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


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
    sink: Callable[[memoryview], None] | None = None,
) -> bytes:
    """One signed GET of raw bytes, refusing an answer longer than ``max_bytes``.

    Signing, TLS and ``timeout`` are as in ``request()``. An HTTP error becomes ``HubError``
    whose ``status`` is the hub's (404: the file is not there); no answer at all is
    ``HubUnreachableError``; a body over ``max_bytes`` is ``WireError``, found while
    reading in chunks so an endless answer never fills memory. With ``sink``, a good
    answer streams through one reused buffer of ``CHUNK`` bytes: each chunk goes to the
    sink as a view it must not keep (write or hash it at once), and ``b""`` is returned.
    """
    headers = {"accept": "*/*"}
    if signer is not None:
        headers.update(signer("GET", path, b""))
    chunks: list[bytes] = []
    received = 0
    with _connection(url, context, timeout) as connection:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if sink is not None and response.status < 400:
            received = _drain(response, max_bytes, sink)
        else:
            # An error's body is only read for its message, and never at length.
            limit = max_bytes if response.status < 400 else 64 * 1024
            while received <= limit:
                chunk = response.read(min(64 * 1024, limit + 1 - received))
                if not chunk:
                    break
                received += len(chunk)
                chunks.append(chunk)
    data = b"".join(chunks)
    if response.status >= 400:
        _raise_error(response.status, data)
    if received > max_bytes:
        raise WireError(f"the hub sent more than {max_bytes} bytes for {path}; refused")
    return data


def _drain(
    response: http.client.HTTPResponse, max_bytes: int, sink: Callable[[memoryview], None]
) -> int:
    """Read a good answer into one reused buffer, handing each chunk to ``sink``; stops
    once past ``max_bytes`` (answers the count, which then says so)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    received = 0
    while received <= max_bytes:
        count = response.readinto(view[: min(CHUNK, max_bytes + 1 - received)])
        if not count:
            break
        received += count
        if received <= max_bytes:
            # A view of the buffer, not a copy: the sink must not keep it.
            sink(view[:count])
    return received


def upload(
    url: str,
    path: str,
    context: ssl.SSLContext,
    signer: Signer,
    size: int,
    blake3_hex: str,
    chunks: Iterable[bytes | memoryview],
    timeout: float = 30.0,
) -> Any:
    """One signed PUT of ``size`` bytes streamed from ``chunks``, which hash (BLAKE3) to
    ``blake3_hex``; answers the JSON reply. The signature covers that declared hash
    (``DIGEST_HEADER``), and the hub refuses a body that does not match it.

    If ``chunks`` raises, the connection is closed before the body is whole, so the hub
    keeps nothing, and the error goes to the caller. Errors are as in ``request()``.
    """
    headers = {
        "content-type": "application/octet-stream",
        "content-length": str(size),
        "accept": "application/json",
        DIGEST_HEADER: blake3_hex,
        **signer("PUT", path, signed_digest(blake3_hex)),
    }
    with _connection(url, context, timeout) as connection:
        connection.putrequest("PUT", path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        _send_all(connection, chunks)
        response = connection.getresponse()
        data = response.read(64 * 1024)
    if response.status >= 400:
        _raise_error(response.status, data)
    try:
        return json.loads(data) if data else None
    except ValueError as err:
        raise WireError(f"the hub's answer to PUT {path} is not JSON") from err


@contextlib.contextmanager
def _connection(
    url: str, context: ssl.SSLContext, timeout: float
) -> Iterator[http.client.HTTPSConnection]:
    """One HTTPS connection to the hub, closed after the exchange; the network failing
    on the way (no answer, a reset, a bad response) is ``HubUnreachableError``."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, context=context, timeout=timeout
    )
    try:
        yield connection
    except (OSError, http.client.HTTPException) as err:
        raise HubUnreachableError(url, str(err) or type(err).__name__) from err
    finally:
        connection.close()


def _send_all(connection: http.client.HTTPConnection, chunks: Iterable[bytes | memoryview]) -> None:
    """Send the body; a hub that refused it before its end may have said why, so a
    closed connection is left for ``getresponse`` to read that answer (or fail)."""
    try:
        for chunk in chunks:
            connection.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return  # the hub stopped reading: its answer, read next, says why if it sent one


def _raise_error(status: int, data: bytes) -> NoReturn:
    """The hub's answer ``status`` >= 400 as ``HubError``, with its own message if it sent one."""
    try:
        decoded = json.loads(data) if data else None
    except ValueError:
        decoded = None
    message = decoded.get("error") if isinstance(decoded, dict) else None
    raise HubError(message or f"the hub answered {status}", status)
