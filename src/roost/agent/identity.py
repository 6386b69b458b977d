"""A device's identity on disk: its key and certificate, the hub's CA, where the hub is.

``identity.pem`` holds the private key and the certificate together, written in one
atomic step, so a crash during renewal never leaves a key beside a certificate that
does not match it. Only the standard library here; see ``agent/enroll.py`` for the
parts that need ``cryptography``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from roost.atomic import write_atomic, write_private
from roost.errors import ConfigError


@dataclass(frozen=True)
class Identity:
    device_id: str
    hub_url: str
    mqtt_host: str
    mqtt_port: int
    # Validity of the current certificate, as UNIX times (kept here so the agent need
    # not parse X.509 to know when to renew). ``not_before`` is when the agent received
    # it, not the backdated notBefore (see ``enroll._lifetime_start``).
    not_before: float
    not_after: float
    heartbeat_interval: float
    labels: dict[str, str]


class IdentityStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def pem_path(self) -> Path:
        return self.data_dir / "identity.pem"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def json_path(self) -> Path:
        return self.data_dir / "identity.json"

    def exists(self) -> bool:
        return self.json_path.exists() and self.pem_path.exists()

    def load(self) -> Identity:
        if not self.exists():
            raise ConfigError(
                f"this device is not enrolled (no identity in {self.data_dir}); "
                "run `roost agent join TOKEN` first"
            )
        try:
            return Identity(**json.loads(self.json_path.read_text()))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{self.json_path} is damaged: {err}") from err

    def save(self, identity: Identity, key_pem: bytes, cert_pem: str, ca_pem: str) -> None:
        """Key and certificate first (one file, atomic), then the metadata."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.ca_path, ca_pem)
        write_private(self.pem_path, key_pem + cert_pem.encode())
        write_atomic(self.json_path, json.dumps(asdict(identity), indent=2))

    def key_pem(self) -> bytes:
        """The private key block of ``identity.pem``."""
        text = self.pem_path.read_bytes()
        start = text.index(b"-----BEGIN PRIVATE KEY-----")
        end = text.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----")
        return text[start:end] + b"\n"
