"""Device-side key material: the key pair a device makes for itself, and its CSRs.

The private key is written once, mode 0600, and never leaves the device.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from roost.errors import PKIError


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return load_key_pem(path.read_bytes())
    except OSError as err:
        raise PKIError(f"cannot read the private key {path}: {err}") from err


def load_key_pem(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:  # TypeError: the key is encrypted
        raise PKIError(f"not a PEM private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("the private key is not an EC key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, name: str = "roost-device") -> str:
    """A CSR that proves possession of ``key``; the hub chooses the real subject."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()
