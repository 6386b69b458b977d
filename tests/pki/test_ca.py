"""The hub's CA: creation and persistence, device and server certificates, CSRs, the CRL."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from roost.errors import PKIError
from roost.pki import (
    CertificateAuthority,
    Revoked,
    common_name,
    fingerprint,
    generate_key,
    load_cert,
    make_csr,
)
from roost.pki.ca import CA_NAME, cert_to_pem
from roost.pki.keys import key_to_pem

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
DEVICE = "d" + "a" * 20


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(NOW)


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create(NOW)


def csr_for(key: object, name: str = "roost-device") -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# --- the CA itself --------------------------------------------------------------------


def test_created_ca_is_a_self_signed_p256_ca(ca: CertificateAuthority) -> None:
    cert = ca.cert
    assert common_name(cert) == CA_NAME
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - NOW >= dt.timedelta(days=365 * 19)


def test_each_ca_is_distinct(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    # Distinct subjects too: a device must never mistake one hub's CA for another's.
    assert ca.fingerprint != other_ca.fingerprint
    assert ca.cert.subject != other_ca.cert.subject


def test_load_or_create_creates_then_loads(tmp_path: Path) -> None:
    directory = tmp_path / "hub" / "pki"
    first = CertificateAuthority.load_or_create(directory, NOW)
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    assert key_path.exists()
    assert cert_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert load_cert(cert_path.read_bytes()) == first.cert

    again = CertificateAuthority.load_or_create(directory)
    assert again.fingerprint == first.fingerprint
    # The reloaded CA signs with the same key: its certificates verify against the first.
    issued = again.issue_client(DEVICE, generate_key().public_key(), DAY, NOW)
    first.verify(issued, NOW)


def test_load_or_create_refuses_a_non_ec_key(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path, NOW)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "ca.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PKIError, match="not an EC key"):
        CertificateAuthority.load_or_create(tmp_path)


def test_load_or_create_does_not_replace_a_key_whose_cert_is_missing(tmp_path: Path) -> None:
    original = CertificateAuthority.load_or_create(tmp_path, NOW)
    key_before = (tmp_path / "ca.key").read_bytes()
    (tmp_path / "ca.pem").unlink()
    with contextlib.suppress(PKIError):  # refusing to start is fine too
        CertificateAuthority.load_or_create(tmp_path, NOW)
    assert (tmp_path / "ca.key").read_bytes() == key_before, original.fingerprint


def test_fingerprint_is_sha256_of_the_der_and_stable(ca: CertificateAuthority) -> None:
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    assert ca.fingerprint == expected
    assert fingerprint(ca.cert_pem) == expected
    assert fingerprint(ca.cert_pem.encode()) == expected
    assert fingerprint(cert_to_pem(load_cert(ca.cert_pem))) == expected
    assert len(expected) == 64


def test_load_cert_refuses_garbage() -> None:
    with pytest.raises(PKIError, match="not a PEM certificate"):
        load_cert("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError):
        fingerprint(b"")


# --- device certificates from CSRs ----------------------------------------------------


def test_sign_csr_issues_a_client_cert_for_the_hubs_subject(ca: CertificateAuthority) -> None:
    key = generate_key()
    cert = ca.sign_csr(make_csr(key, name="whatever-the-device-asked"), DEVICE, 30 * DAY, NOW)
    assert common_name(cert) == DEVICE
    assert cert.issuer == ca.cert.subject
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_after_utc == NOW + 30 * DAY
    assert cert.not_valid_before_utc <= NOW
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not constraints.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca.verify(cert, NOW)
    ca.verify(cert, NOW + 30 * DAY)


def test_serials_are_unique(ca: CertificateAuthority) -> None:
    key = generate_key().public_key()
    serials = {ca.issue_client(DEVICE, key, DAY, NOW).serial_number for _ in range(20)}
    assert len(serials) == 20


def test_cert_of_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    foreign = other_ca.sign_csr(make_csr(generate_key()), DEVICE, DAY, NOW)
    other_ca.verify(foreign, NOW)
    with pytest.raises(PKIError, match="not issued by this hub's CA"):
        ca.verify(foreign, NOW)


def test_forged_cert_naming_our_ca_is_refused(ca: CertificateAuthority) -> None:
    # Same issuer name as ours, signed by an impostor's key.
    impostor = generate_key()
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE)]))
        .issuer_name(ca.cert.subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(impostor, hashes.SHA256())
    )
    with pytest.raises(PKIError, match="signature does not verify"):
        ca.verify(forged, NOW)


@pytest.mark.parametrize(
    ("when", "ok"),
    [
        (NOW - dt.timedelta(minutes=6), False),  # before not_valid_before (5 min grace)
        (NOW - dt.timedelta(minutes=5), True),
        (NOW, True),
        (NOW + DAY, True),  # the last instant
        (NOW + DAY + dt.timedelta(seconds=1), False),
        (NOW + 365 * DAY, False),
    ],
)
def test_validity_window(ca: CertificateAuthority, when: dt.datetime, ok: bool) -> None:
    cert = ca.issue_client(DEVICE, generate_key().public_key(), DAY, NOW)
    if ok:
        ca.verify(cert, when)
    else:
        with pytest.raises(PKIError, match="expired or not yet valid"):
            ca.verify(cert, when)


def test_expired_cert_is_refused_at_the_real_clock(ca: CertificateAuthority) -> None:
    long_ago = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    cert = ca.issue_client(DEVICE, generate_key().public_key(), DAY, long_ago)
    with pytest.raises(PKIError, match="expired"):
        ca.verify(cert)


def _tampered_csr() -> str:
    # Change one letter of the subject after signing: the signature no longer matches.
    der = x509.load_pem_x509_csr(make_csr(generate_key(), "roost-device").encode()).public_bytes(
        serialization.Encoding.DER
    )
    assert der.count(b"roost-device") == 1
    bad = der.replace(b"roost-device", b"roost-devicf")
    return x509.load_der_x509_csr(bad).public_bytes(serialization.Encoding.PEM).decode()


def test_csr_with_a_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError, match="signature does not match"):
        ca.sign_csr(_tampered_csr(), DEVICE, DAY, NOW)


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
        pytest.param(
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="rsa"
        ),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
def test_csr_with_a_non_p256_key_is_refused(ca: CertificateAuthority, make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    with pytest.raises(PKIError, match="P-256"):
        ca.sign_csr(csr_for(key), DEVICE, DAY, NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_garbage_csr_is_refused(ca: CertificateAuthority, text: str) -> None:
    with pytest.raises(PKIError, match="not a PEM certificate signing request"):
        ca.sign_csr(text, DEVICE, DAY, NOW)


def test_a_certificate_is_not_a_csr(ca: CertificateAuthority) -> None:
    with pytest.raises(PKIError):
        ca.sign_csr(ca.cert_pem, DEVICE, DAY, NOW)


# --- server certificates --------------------------------------------------------------


def test_server_cert_names_every_host_once(ca: CertificateAuthority) -> None:
    hosts = ["hub.local", "127.0.0.1", "::1", "hub.example.org", "hub.local", "127.0.0.1"]
    cert = ca.issue_server(hosts, generate_key().public_key(), 365 * DAY, NOW)
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["hub.local", "hub.example.org"]
    assert alt.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert common_name(cert) == "hub.local"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca.verify(cert, NOW)


def test_certs_work_for_mutual_tls(tmp_path: Path) -> None:
    """A real TLS 1.3 handshake: the server cert checks out for 127.0.0.1, the client
    cert is required and accepted, and each side sees the other's identity."""
    ca = CertificateAuthority.create()
    server_key, client_key = generate_key(), generate_key()
    issued = {
        "server": (
            server_key,
            ca.issue_server(["localhost", "127.0.0.1"], server_key.public_key(), DAY),
        ),
        "client": (client_key, ca.sign_csr(make_csr(client_key), DEVICE, DAY)),
    }
    files: dict[str, Path] = {}
    for role, (key, cert) in issued.items():
        (tmp_path / f"{role}.key").write_bytes(key_to_pem(key))
        (tmp_path / f"{role}.pem").write_text(cert_to_pem(cert))
        files[role] = tmp_path / role
    (tmp_path / "ca.pem").write_text(ca.cert_pem)

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(f"{files['server']}.pem", f"{files['server']}.key")
    server_ctx.load_verify_locations(tmp_path / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.pem")
    client_ctx.load_cert_chain(f"{files['client']}.pem", f"{files['client']}.key")

    seen: dict[str, object] = {}
    left, right = socket.socketpair()
    with left, right:

        def serve() -> None:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve)
        thread.start()
        with client_ctx.wrap_socket(right, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
            seen["server"] = tls.getpeercert()
        thread.join(10)
    client = seen["client"]
    assert isinstance(client, dict)
    assert client["subject"] == ((("commonName", DEVICE),),)
    server = seen["server"]
    assert isinstance(server, dict)
    assert ("IP Address", "127.0.0.1") in server["subjectAltName"]


# --- the CRL --------------------------------------------------------------------------


def test_crl_names_the_revoked_serials_and_is_signed_by_the_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    serials = [11, 22, 2**150]  # x509 serials are up to 20 bytes
    revoked = [Revoked(serial, NOW - dt.timedelta(hours=i)) for i, serial in enumerate(serials)]
    crl = x509.load_pem_x509_crl(ca.crl(revoked, NOW, days=7).encode())
    assert crl.issuer == ca.cert.subject
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert not crl.is_signature_valid(other_ca.cert.public_key())  # type: ignore[arg-type]
    assert sorted(entry.serial_number for entry in crl) == [11, 22, 2**150]
    entry = crl.get_revoked_certificate_by_serial_number(22)
    assert entry is not None
    assert entry.revocation_date_utc == NOW - dt.timedelta(hours=1)
    assert crl.get_revoked_certificate_by_serial_number(33) is None
    assert crl.next_update_utc == NOW + 7 * DAY
    assert crl.last_update_utc is not None
    assert crl.last_update_utc <= NOW


def test_crl_of_an_issued_cert(ca: CertificateAuthority) -> None:
    cert = ca.issue_client(DEVICE, generate_key().public_key(), DAY, NOW)
    crl = x509.load_pem_x509_crl(ca.crl([Revoked(cert.serial_number, NOW)], NOW).encode())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_empty_crl_is_valid(ca: CertificateAuthority) -> None:
    crl = x509.load_pem_x509_crl(ca.crl([], NOW).encode())
    assert len(crl) == 0
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
