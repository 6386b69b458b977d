"""Join tokens and API tokens: how they look, and how their secrets are kept.

A join token is what an operator hands to a device. It carries everything the device
needs to trust the hub before it has any certificate: the hub URL, the SHA-256
fingerprint of the hub's CA (pinned), the token id and its secret. The hub keeps only a
hash of the secret. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field

from roost.errors import TokenInvalidError

JOIN_PREFIX = "rjt1_"
API_PREFIX = "rat_"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Secrets are 256 random bits, so one SHA-256 is enough; no password stretching."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


@dataclass(frozen=True)
class JoinToken:
    hub_url: str
    ca_fingerprint: str
    token_id: str
    secret: str = field(repr=False)

    def encode(self) -> str:
        body = json.dumps(
            {"u": self.hub_url, "f": self.ca_fingerprint, "i": self.token_id, "s": self.secret},
            separators=(",", ":"),
        )
        return JOIN_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> JoinToken:
        text = text.strip()
        if not text.startswith(JOIN_PREFIX):
            raise TokenInvalidError("this is not a Roost join token (it should start with rjt1_)")
        raw = text[len(JOIN_PREFIX) :]
        try:
            body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            token = cls(str(body["u"]), str(body["f"]), str(body["i"]), str(body["s"]))
        except (binascii.Error, ValueError, KeyError, TypeError) as err:
            raise TokenInvalidError("the join token is damaged; copy it again") from err
        if not token.hub_url.startswith("https://") or len(token.ca_fingerprint) != 64:
            raise TokenInvalidError("the join token is damaged; copy it again")
        return token


def new_api_token() -> str:
    return API_PREFIX + new_secret()
