"""The hub's own key material: its CA, its TLS server certificate, its MQTT identity.

Everything lives in ``DATA/pki`` and is made on first start. The server certificate is
issued again when the names the hub is reached by change or when it nears expiry.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from roost.atomic import write_atomic, write_private
from roost.pki import CertificateAuthority, generate_key, load_cert
from roost.pki.ca import cert_to_pem
from roost.pki.keys import key_to_pem
from roost.wire import topics


@dataclass(frozen=True)
class HubIdentity:
    ca: CertificateAuthority
    directory: Path

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "hub-client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "hub-client.key"


def server_names(public_host: str) -> list[str]:
    names = [public_host, "localhost", "127.0.0.1", "::1", socket.gethostname()]
    return [n for n in dict.fromkeys(names) if n]


def _needs_reissue(path: Path, names: list[str], now: dt.datetime) -> bool:
    if not path.exists():
        return True
    cert = load_cert(path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
            str(v) for v in sans.get_values_for_type(x509.IPAddress)
        }
    except x509.ExtensionNotFound:
        have = set()
    return not set(names) <= have or cert.not_valid_after_utc - now < dt.timedelta(days=30)


def load_or_create(directory: Path, public_host: str, server_ttl_s: int) -> HubIdentity:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.load_or_create(directory, now)
    identity = HubIdentity(ca, directory)
    names = server_names(public_host)
    ttl = dt.timedelta(seconds=server_ttl_s)
    if _needs_reissue(identity.server_cert, names, now):
        key = generate_key()
        cert = ca.issue_server(names, key.public_key(), ttl, now)
        write_private(identity.server_key, key_to_pem(key))
        write_atomic(identity.server_cert, cert_to_pem(cert))
    client = identity.client_cert
    if not client.exists() or load_cert(client.read_bytes()).not_valid_after_utc - now < ttl / 4:
        key = generate_key()
        cert = ca.issue_client(topics.HUB_IDENTITY, key.public_key(), ttl, now)
        write_private(identity.client_key, key_to_pem(key))
        write_atomic(client, cert_to_pem(cert))
    return identity
