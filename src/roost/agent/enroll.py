"""Joining a hub and renewing the certificate: the agent's only uses of ``cryptography``.

Join: fetch the hub's CA, check it against the fingerprint pinned in the token, make a
key pair here (the private key never leaves the device), send a CSR with the token's
secret, store the certificate. Renew: a new key pair and a CSR, signed with the current
key so the hub knows who asks.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from roost.agent import hubapi
from roost.agent.identity import Identity, IdentityStore
from roost.errors import ConfigError, FingerprintMismatchError

if TYPE_CHECKING:
    from cryptography import x509


def _lifetime_start(cert: x509.Certificate) -> float:
    """When the certificate's lifetime began, for renewal: now, not its notBefore.

    The CA backdates notBefore by minutes to forgive clock skew; counted in, a certificate
    shorter than that would look due for renewal the moment it arrives, and the agent
    would renew in a tight loop.
    """
    return min(
        max(cert.not_valid_before_utc.timestamp(), time.time()),
        cert.not_valid_after_utc.timestamp(),
    )


def join(token_text: str, data_dir: Path) -> Identity:
    from roost.pki import JoinToken, fingerprint, generate_key, load_cert, make_csr
    from roost.pki.keys import key_to_pem

    store = IdentityStore(data_dir)
    if store.exists():
        raise ConfigError(
            f"{data_dir} already holds an enrolled device ({store.load().device_id}); "
            "use another --data dir or `roost agent run`"
        )
    token = JoinToken.decode(token_text)
    ca = hubapi.request(token.hub_url, "GET", "/v1/ca", hubapi.unverified_context())
    actual = fingerprint(ca["ca_pem"])
    if actual != token.ca_fingerprint:
        raise FingerprintMismatchError(token.ca_fingerprint, actual)
    # From here on the hub must prove it holds a certificate from that CA.
    context = hubapi.verified_context(ca["ca_pem"])
    key = generate_key()
    body = {"token_id": token.token_id, "secret": token.secret, "csr": make_csr(key)}
    answer = hubapi.request(token.hub_url, "POST", "/v1/enroll", context, body)
    cert = load_cert(answer["cert_pem"])
    identity = Identity(
        device_id=answer["device_id"],
        hub_url=token.hub_url,
        mqtt_host=answer["mqtt_host"],
        mqtt_port=int(answer["mqtt_port"]),
        not_before=_lifetime_start(cert),
        not_after=cert.not_valid_after_utc.timestamp(),
        heartbeat_interval=float(answer["heartbeat_interval"]),
        labels=dict(answer["labels"]),
    )
    store.save(identity, key_to_pem(key), answer["cert_pem"], answer["ca_pem"])
    return identity


def renew(store: IdentityStore) -> Identity:
    """Replace key and certificate; returns the new identity. Blocking: run in a thread."""
    from roost.pki import generate_key, load_cert, make_csr
    from roost.pki.keys import key_to_pem

    identity = store.load()
    ca_pem = store.ca_path.read_text()
    key = generate_key()
    signer = hubapi.device_signer(identity.device_id, store.key_pem())
    answer = hubapi.request(
        identity.hub_url,
        "POST",
        "/v1/agent/renew",
        hubapi.verified_context(ca_pem),
        {"csr": make_csr(key)},
        signer=signer,
    )
    cert = load_cert(answer["cert_pem"])
    renewed = dataclasses.replace(
        identity,
        not_before=_lifetime_start(cert),
        not_after=cert.not_valid_after_utc.timestamp(),
    )
    store.save(renewed, key_to_pem(key), answer["cert_pem"], ca_pem)
    return renewed
