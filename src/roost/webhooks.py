"""How Roost signs the webhooks its rules send, and how a receiver checks them.

Every webhook is a POST of a JSON body with these headers:

- ``Roost-Idempotency-Key``: the action's key; a redelivery carries the same one, so a
  receiver that remembers keys drops a second copy;
- ``Roost-Timestamp``: when this try was sent, in whole seconds since the Unix epoch;
- ``Roost-Signature``: ``sha256=`` and the lowercase hex HMAC-SHA256, under the secret the
  action names, of ``TIMESTAMP + "." + KEY + "." + BODY`` (the body's exact bytes). Only
  when the action names a secret.

A receiver recomputes the HMAC over the bytes it received, compares in constant time, and
refuses a timestamp too far from its own clock, so a captured request cannot be played
again later, nor its body, timestamp or key changed. ``verify_webhook`` does all of it.

Pure standard library, so a receiver needs nothing else of Roost.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

KEY_HEADER = "Roost-Idempotency-Key"
TIMESTAMP_HEADER = "Roost-Timestamp"
SIGNATURE_HEADER = "Roost-Signature"
SCHEME = "sha256="
# A signed request older or newer than this (seconds) is refused.
TOLERANCE_S = 300.0


def signature(secret: bytes, timestamp: int, key: str, body: bytes) -> str:
    """The ``Roost-Signature`` header's value for one try."""
    message = f"{timestamp}.{key}.".encode() + body
    return SCHEME + hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, key: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The Roost headers for a body sent now; the signature only with a secret."""
    timestamp = int(time.time() if now is None else now)
    headers = {KEY_HEADER: key, TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, key, body)
    return headers


def verify_webhook(
    secret: bytes | str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """Whether a received webhook is Roost's, unchanged and fresh.

    ``headers`` as received (any case of names); ``body`` the exact bytes received,
    before any JSON parsing.
    """
    if isinstance(secret, str):
        secret = secret.encode()
    lower = {name.lower(): value for name, value in headers.items()}
    stamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    key = lower.get(KEY_HEADER.lower(), "")
    given = lower.get(SIGNATURE_HEADER.lower(), "")
    if not stamp.isdigit() or not given.startswith(SCHEME):
        return False
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(secret, timestamp, key, body))
