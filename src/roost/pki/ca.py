"""The hub's certificate authority: ECDSA P-256, device and server certificates, the CRL.

The CA key lives in the hub's data dir (mode 0600). Device certificates carry the device
id as their subject common name; that name is the device's MQTT identity (the broker
uses it as username and client id) and its HTTPS identity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from roost.atomic import write_atomic, write_private
from roost.errors import PKIError
from roost.pki.keys import generate_key, key_to_pem, load_key

CA_NAME = "Roost hub CA"


def fingerprint(cert_pem: bytes | str) -> str:
    """SHA-256 of the certificate's DER, hex; what a join token pins."""
    cert = load_cert(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_cert(pem: bytes | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as err:
        raise PKIError(f"not a PEM certificate: {err}") from err


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@dataclass(frozen=True)
class Revoked:
    serial: int
    revoked_at: dt.datetime


class CertificateAuthority:
    """A CA whose key and certificate are files in ``directory``."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @property
    def cert_pem(self) -> str:
        return cert_to_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    @classmethod
    def load_or_create(
        cls, directory: Path, now: dt.datetime | None = None
    ) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            return cls(load_key(key_path), load_cert(cert_path.read_bytes()))
        if key_path.exists() or cert_path.exists():
            # Never make a new CA over half of an old one: every device trusts the old.
            raise PKIError(
                f"{directory} holds only one of ca.key and ca.pem; restore the other from "
                "a backup (a new CA would cut off every enrolled device)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls.create(now)
        write_private(key_path, key_to_pem(ca._key))
        write_atomic(cert_path, ca.cert_pem)
        return ca

    @classmethod
    def create(cls, now: dt.datetime | None = None, years: int = 20) -> CertificateAuthority:
        now = now or dt.datetime.now(dt.UTC)
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def _builder(
        self,
        subject: str,
        public_key: ec.EllipticCurvePublicKey,
        ttl: dt.timedelta,
        now: dt.datetime,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def issue_client(
        self,
        subject: str,
        public_key: ec.EllipticCurvePublicKey,
        ttl: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A TLS client certificate: a device's, or the hub's own MQTT identity."""
        now = now or dt.datetime.now(dt.UTC)
        builder = self._builder(subject, public_key, ttl, now).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return builder.sign(self._key, hashes.SHA256())

    def issue_server(
        self,
        hostnames: Sequence[str],
        public_key: ec.EllipticCurvePublicKey,
        ttl: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A TLS server certificate for the hub's HTTPS API and the broker."""
        now = now or dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = []
        for host in dict.fromkeys(hostnames):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        builder = (
            self._builder(hostnames[0], public_key, ttl, now)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return builder.sign(self._key, hashes.SHA256())

    def sign_csr(
        self, csr_pem: str, subject: str, ttl: dt.timedelta, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Issue a client certificate for a CSR, whatever subject the CSR asked for.

        The CSR must be self-signed by an EC P-256 key; the device proves it holds the key.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as err:
            raise PKIError(f"not a PEM certificate signing request: {err}") from err
        if not csr.is_signature_valid:
            raise PKIError("the CSR's signature does not match its key")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise PKIError("device keys must be ECDSA P-256")
        return self.issue_client(subject, key, ttl, now)

    def verify(self, cert: x509.Certificate, now: dt.datetime | None = None) -> None:
        """Raise ``PKIError`` unless ``cert`` was issued by this CA and is valid at ``now``."""
        now = now or dt.datetime.now(dt.UTC)
        if cert.issuer != self.cert.subject:
            raise PKIError("certificate was not issued by this hub's CA")
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise PKIError("certificate signature does not verify against this hub's CA") from err
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PKIError("certificate is expired or not yet valid")

    def crl(
        self, revoked: Iterable[Revoked], now: dt.datetime | None = None, days: int = 365
    ) -> str:
        """A CRL naming every revoked serial, PEM."""
        now = now or dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for item in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(item.serial)
                .revocation_date(item.revoked_at)
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM).decode()
