"""Device-authenticated HTTPS: each request is signed with the device's own key.

The agent signs ``METHOD \\n PATH?QUERY \\n UNIX-TIME \\n SHA256(BODY)`` with ECDSA and
sends the device id, the time and the signature in headers; the hub verifies it with the
public key of the certificate it issued to that device, refuses revoked devices and
stale times. No shared secret ever exists.

A streamed body (a storage share) cannot be hashed before it is sent: its request is
signed over its BLAKE3 hash, declared in ``DIGEST_HEADER`` (``signed_digest``), and the
hub checks the body against that hash as it arrives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from roost.errors import AuthError

DEVICE_HEADER = "x-roost-device"
TIME_HEADER = "x-roost-time"
SIGNATURE_HEADER = "x-roost-signature"
# A streamed body's BLAKE3 hash (hex), declared up front; the signature covers it.
DIGEST_HEADER = "x-roost-content-blake3"


def signed_digest(blake3_hex: str) -> bytes:
    """What a streamed request is signed over in place of its body."""
    return f"blake3:{blake3_hex}".encode()


def _canonical(method: str, target: str, timestamp: int, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{digest}".encode()


def sign(
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    method: str,
    target: str,
    body: bytes,
    now: float,
) -> dict[str, str]:
    """Headers that authenticate one request as ``device_id``."""
    timestamp = int(now)
    signature = key.sign(_canonical(method, target, timestamp, body), ec.ECDSA(hashes.SHA256()))
    return {
        DEVICE_HEADER: device_id,
        TIME_HEADER: str(timestamp),
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def verify(
    public_key: ec.EllipticCurvePublicKey,
    headers: Mapping[str, str],
    method: str,
    target: str,
    body: bytes,
    now: float,
    max_skew_s: int,
) -> None:
    """Raise ``AuthError`` unless the headers are a fresh, valid signature of the request."""
    try:
        timestamp = int(headers[TIME_HEADER])
        signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
    except (KeyError, ValueError, binascii.Error) as err:
        raise AuthError("missing or malformed device signature") from err
    if abs(now - timestamp) > max_skew_s:
        raise AuthError("device request time is too far from the hub's clock")
    try:
        public_key.verify(
            signature, _canonical(method, target, timestamp, body), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature as err:
        raise AuthError("device signature does not verify") from err
