"""Device keys and CSRs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from roost.errors import PKIError
from roost.pki import generate_key, load_key, make_csr
from roost.pki.keys import key_to_pem


def test_generated_keys_are_p256_and_distinct() -> None:
    first, second = generate_key(), generate_key()
    assert first.curve.name == "secp256r1"
    assert first.public_key() != second.public_key()


def test_key_round_trips_through_a_file(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "device.key"
    path.write_bytes(key_to_pem(key))
    assert load_key(path).private_numbers() == key.private_numbers()


def test_csr_proves_the_key_and_carries_the_name() -> None:
    key = generate_key()
    csr = x509.load_pem_x509_csr(make_csr(key, name="kitchen-pi").encode())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kitchen-pi"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="bad"),
        pytest.param(
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            id="not-ec",
        ),
    ],
)
def test_bad_key_files_are_pki_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(content)
    with pytest.raises(PKIError):
        load_key(path)


def test_missing_key_file_is_a_pki_error(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="cannot read"):
        load_key(tmp_path / "nope.key")


def test_encrypted_key_file_is_a_pki_error(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(PKIError):
        load_key(path)
