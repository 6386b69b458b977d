"""The fleet's logic on an in-memory database: join tokens, enrollment and renewal,
labels and the twin, tenant isolation, revocation."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from roost.access import Principal
from roost.db import Database
from roost.errors import (
    NotFoundError,
    PKIError,
    TokenExpiredError,
    TokenInvalidError,
    TokenUsedUpError,
    ValidationError,
)
from roost.fleet import service
from roost.fleet.models import CommandRow, Device, DeviceCert, JoinTokenRow
from roost.fleet.selectors import Selector
from roost.pki import CertificateAuthority, common_name, generate_key, load_cert, make_csr
from roost.pki.tokens import hash_secret
from roost.wire import topics

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
CERT_TTL = dt.timedelta(days=30)


def make_token(
    db: Database,
    principal: Principal,
    uses: int | None = 1,
    labels: dict[str, str] | None = None,
    ttl: dt.timedelta = HOUR,
) -> tuple[str, str]:
    with db.session() as session:
        row, secret = service.create_join_token(session, principal, labels or {}, uses, ttl, NOW)
        return row.id, secret


def enroll(
    db: Database,
    ca: CertificateAuthority,
    token: tuple[str, str],
    now: dt.datetime = NOW,
    csr: str | None = None,
) -> tuple[str, str]:
    """Enroll with ``token``; the new device id and its certificate (PEM)."""
    with db.session() as session:
        device, cert = service.enroll(
            session, ca, token[0], token[1], csr or make_csr(generate_key()), CERT_TTL, now
        )
        return device.id, cert


def load_device(db: Database, device_id: str) -> Device:
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        return device


def count(db: Database, model: type[Any]) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# -- join tokens ------------------------------------------------------------------------


def test_a_join_token_is_kept_as_a_hash_of_its_secret(db: Database, owner: Principal) -> None:
    token_id, secret = make_token(db, owner, uses=3, labels={"role": "router"})
    with db.session() as session:
        row = session.get(JoinTokenRow, token_id)
        assert row is not None
        assert row.secret_hash == hash_secret(secret)
        assert secret not in json.dumps([row.id, row.secret_hash, row.labels])
        assert row.uses_left == 3
        assert row.expires_at == NOW + HOUR
        assert row.tenant_id == "default"
        assert row.labels == {"role": "router"}


@pytest.mark.parametrize(
    ("uses", "labels"),
    [(0, {}), (-1, {}), (1, {"bad key": "x"}), (1, {"role": "x" * 129})],
)
def test_a_join_token_needs_a_use_and_valid_labels(
    db: Database, owner: Principal, uses: int, labels: dict[str, str]
) -> None:
    with pytest.raises(ValidationError):
        make_token(db, owner, uses=uses, labels=labels)
    assert count(db, JoinTokenRow) == 0


@pytest.mark.parametrize("uses", [1, 3])
def test_a_token_admits_as_many_devices_as_it_has_uses(
    db: Database, owner: Principal, ca: CertificateAuthority, uses: int
) -> None:
    token = make_token(db, owner, uses=uses)
    ids = {enroll(db, ca, token)[0] for _ in range(uses)}
    assert len(ids) == uses
    with pytest.raises(TokenUsedUpError, match="used up"):
        enroll(db, ca, token)
    assert count(db, Device) == uses
    with db.session() as session:
        row = session.get(JoinTokenRow, token[0])
        assert row is not None
        assert row.uses_left == 0


def test_an_unlimited_token_admits_any_number_until_it_expires(
    db: Database, owner: Principal, ca: CertificateAuthority
) -> None:
    token = make_token(db, owner, uses=None)
    ids = {enroll(db, ca, token, now=NOW + dt.timedelta(minutes=n))[0] for n in range(5)}
    assert len(ids) == 5
    with db.session() as session:
        row = session.get(JoinTokenRow, token[0])
        assert row is not None
        assert row.uses_left is None
    with pytest.raises(TokenExpiredError, match="expired"):
        enroll(db, ca, token, now=NOW + HOUR)


@pytest.mark.parametrize(
    ("after", "expired"),
    [
        (dt.timedelta(0), False),
        (HOUR - dt.timedelta(seconds=1), False),
        (HOUR, True),
        (dt.timedelta(days=2), True),
    ],
)
def test_a_token_expires_after_its_ttl(
    db: Database,
    owner: Principal,
    ca: CertificateAuthority,
    after: dt.timedelta,
    expired: bool,
) -> None:
    token = make_token(db, owner, ttl=HOUR)
    if expired:
        with pytest.raises(TokenExpiredError):
            enroll(db, ca, token, now=NOW + after)
        assert count(db, Device) == 0
    else:
        enroll(db, ca, token, now=NOW + after)
        assert count(db, Device) == 1


def test_a_wrong_secret_or_unknown_token_is_invalid_and_takes_no_use(
    db: Database, owner: Principal, ca: CertificateAuthority
) -> None:
    token_id, secret = make_token(db, owner, uses=1)
    with pytest.raises(TokenInvalidError):
        enroll(db, ca, (token_id, secret + "x"))
    with pytest.raises(TokenInvalidError):
        enroll(db, ca, ("0" * 16, secret))
    # A wrong secret learns nothing about the token, not even that it has expired.
    with pytest.raises(TokenInvalidError):
        enroll(db, ca, (token_id, "guess"), now=NOW + 2 * HOUR)
    enroll(db, ca, (token_id, secret))
    assert count(db, Device) == 1


def test_a_failed_enrollment_gives_the_use_back(
    db: Database, owner: Principal, ca: CertificateAuthority
) -> None:
    token = make_token(db, owner, uses=1)
    with pytest.raises(PKIError):
        enroll(db, ca, token, csr="not a CSR")
    assert count(db, Device) == 0
    enroll(db, ca, token)
    assert count(db, Device) == 1


# -- enrollment and renewal -------------------------------------------------------------


def test_enroll_issues_a_certificate_whose_subject_is_the_new_device_id(
    db: Database, owner: Principal, ca: CertificateAuthority
) -> None:
    token = make_token(db, owner, labels={"role": "router"})
    key = generate_key()
    # The CSR asks for another name; the hub decides the subject.
    csr = make_csr(key, name="droostdevicexxxxxxxxxx")
    device_id, cert_pem = enroll(db, ca, token, csr=csr)

    assert topics.is_device_id(device_id)
    cert = load_cert(cert_pem)
    assert common_name(cert) == device_id
    ca.verify(cert, NOW)
    assert public_der(cert.public_key()) == public_der(key.public_key())
    assert cert.not_valid_after_utc == NOW + CERT_TTL

    device = load_device(db, device_id)
    assert device.tenant_id == "default"
    assert device.state == "active"
    assert device.labels == {"role": "router"}
    assert device.cert_pem == cert_pem
    assert device.cert_not_after == NOW + CERT_TTL
    assert device.desired_version == 1
    with db.session() as session:
        certs = session.scalars(select(DeviceCert).where(DeviceCert.device_id == device_id))
        assert [(c.serial, c.revoked_at) for c in certs] == [
            (format(cert.serial_number, "x"), None)
        ]


def test_a_device_enrolls_into_the_tenant_of_its_token(
    db: Database, owner: Principal, acme: Principal, ca: CertificateAuthority
) -> None:
    device_id, _ = enroll(db, ca, make_token(db, acme))
    assert load_device(db, device_id).tenant_id == "acme"
    with db.session() as session:
        assert service.get_device(session, acme, device_id).id == device_id
        with pytest.raises(NotFoundError):
            service.get_device(session, owner, device_id)


def test_renew_issues_a_fresh_certificate_and_records_it(
    db: Database, owner: Principal, ca: CertificateAuthority
) -> None:
    device_id, first_pem = enroll(db, ca, make_token(db, owner))
    key = generate_key()
    later = NOW + dt.timedelta(days=20)
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        renewed_pem = service.renew(session, ca, device, make_csr(key), CERT_TTL, later)
    renewed = load_cert(renewed_pem)
    assert renewed_pem != first_pem
    assert common_name(renewed) == device_id
    assert public_der(renewed.public_key()) == public_der(key.public_key())
    assert renewed.not_valid_after_utc == later + CERT_TTL
    device = load_device(db, device_id)
    assert device.cert_pem == renewed_pem
    assert device.cert_not_after == later + CERT_TTL
    with db.session() as session:
        serials = set(session.scalars(select(DeviceCert.serial)))
    assert serials == {
        format(load_cert(first_pem).serial_number, "x"),
        format(renewed.serial_number, "x"),
    }


def test_new_device_ids_are_valid_topic_segments_and_distinct() -> None:
    ids = [service.new_device_id() for _ in range(500)]
    assert all(topics.is_device_id(i) for i in ids)
    assert len(set(ids)) == len(ids)


# -- labels and the twin ----------------------------------------------------------------


@pytest.fixture
def device_id(db: Database, owner: Principal, ca: CertificateAuthority) -> str:
    return enroll(db, ca, make_token(db, owner, labels={"role": "router", "site": "a"}))[0]


def test_set_labels_merges_removes_and_bumps_the_desired_version(
    db: Database, owner: Principal, device_id: str
) -> None:
    with db.session() as session:
        device = service.set_labels(
            session, owner, device_id, {"site": "b", "role": None, "tier": "prod"}
        )
        desired = service.desired_message(device)
    assert desired.version == 2
    assert desired.state["labels"] == {"site": "b", "tier": "prod"}
    device = load_device(db, device_id)
    assert device.labels == {"site": "b", "tier": "prod"}
    assert device.desired_version == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"": "x"},
        {"a b": "x"},
        {"k" * 64: "x"},
        {"role": "v" * 129},
        {"role": 5},
        {"wifi:ssid": "x"},
    ],
)
def test_bad_labels_are_refused_and_change_nothing(
    db: Database, owner: Principal, device_id: str, changes: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError), db.session() as session:
        service.set_labels(session, owner, device_id, changes)
    device = load_device(db, device_id)
    assert device.labels == {"role": "router", "site": "a"}
    assert device.desired_version == 1


def test_labels_at_the_limits_are_accepted(db: Database, owner: Principal, device_id: str) -> None:
    changes = {"k" * 63: "v" * 128, "example.com/rack-no_1": ""}
    with db.session() as session:
        service.set_labels(session, owner, device_id, changes)
    assert load_device(db, device_id).labels == {"role": "router", "site": "a", **changes}


def test_set_desired_merges_top_level_keys_and_bumps_the_version(
    db: Database, owner: Principal, device_id: str
) -> None:
    with db.session() as session:
        service.set_desired(
            session, owner, device_id, {"config": {"a": 1}, "heartbeat_interval": 5}, 1024
        )
    with db.session() as session:
        device = service.set_desired(
            session, owner, device_id, {"heartbeat_interval": None, "x": [1]}, 1024
        )
        desired = service.desired_message(device)
    assert desired.version == 3
    assert desired.state == {
        "config": {"a": 1},
        "x": [1],
        "labels": {"role": "router", "site": "a"},
    }
    device = load_device(db, device_id)
    assert device.desired == {"config": {"a": 1}, "x": [1]}
    assert device.desired_version == 3


@pytest.mark.parametrize(
    "patch",
    [
        {"labels": {"role": "x"}},
        {"heartbeat_interval": 0},
        {"heartbeat_interval": 0.5},
        {"heartbeat_interval": 86401},
        {"heartbeat_interval": True},
        {"heartbeat_interval": "5"},
        {"config": [1]},
        {"config": "eco"},
        {"apps": []},
        {"apps": {"Web": {"version": "1.0.0"}}},
        {"apps": {"web": "1.0.0"}},
        {"apps": {"web": {"version": ""}}},
        {"apps": {"web": {"version": "1.0.0", "extra": 1}}},
    ],
)
def test_bad_desired_state_is_refused_and_changes_nothing(
    db: Database, owner: Principal, device_id: str, patch: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError), db.session() as session:
        service.set_desired(session, owner, device_id, patch, 1024)
    device = load_device(db, device_id)
    assert device.desired == {}
    assert device.desired_version == 1


@pytest.mark.parametrize("interval", [1, 2.5, 86400])
def test_heartbeat_intervals_within_bounds_are_accepted(
    db: Database, owner: Principal, device_id: str, interval: float
) -> None:
    with db.session() as session:
        service.set_desired(session, owner, device_id, {"heartbeat_interval": interval}, 1024)
    assert load_device(db, device_id).desired == {"heartbeat_interval": interval}


# interval of its own (None: the hub's 30 s), seconds since last seen (None: never),
# seconds the hub has been listening -> called silent (3 intervals without a word)
SILENCE_CASES = [
    (None, 10, 1000, False),
    (None, 89, 1000, False),
    (None, 91, 1000, True),
    (None, None, 1000, True),
    (None, 91, 80, False),  # the hub has not listened for 3 intervals yet
    (5, 14, 1000, False),
    (5, 16, 1000, True),
    (600, 91, 1000, False),
    (600, 1801, 5000, True),
    (600, 1801, 1000, False),
]


@pytest.mark.parametrize(("own", "seen_ago", "listened", "silent"), SILENCE_CASES)
def test_devices_are_silent_after_three_of_their_own_heartbeat_intervals(
    db: Database,
    owner: Principal,
    device_id: str,
    own: float | None,
    seen_ago: float | None,
    listened: float,
    silent: bool,
) -> None:
    if own is not None:
        with db.session() as session:
            service.set_desired(session, owner, device_id, {"heartbeat_interval": own}, 1024)
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.online = True
        device.last_seen = None if seen_ago is None else NOW - dt.timedelta(seconds=seen_ago)
    with db.session() as session:
        found = service.silent_devices(session, NOW, listened, 30.0, 3)
    assert found == ([device_id] if silent else [])


def test_offline_devices_are_never_called_silent(db: Database, device_id: str) -> None:
    with db.session() as session:
        assert service.silent_devices(session, NOW, 10_000, 30.0, 3) == []


def test_removing_the_heartbeat_interval_returns_the_device_to_the_hubs(
    db: Database, owner: Principal, device_id: str
) -> None:
    with db.session() as session:
        service.set_desired(session, owner, device_id, {"heartbeat_interval": 600}, 1024)
    assert load_device(db, device_id).heartbeat_s == 600
    with db.session() as session:
        service.set_desired(session, owner, device_id, {"heartbeat_interval": None}, 1024)
    assert load_device(db, device_id).heartbeat_s is None


def test_desired_state_is_limited_in_size(db: Database, owner: Principal, device_id: str) -> None:
    limit = 200
    # json.dumps({"config": {"blob": ""}}) is 24 characters.
    fits = {"config": {"blob": "x" * (limit - 24)}}
    assert len(json.dumps(fits)) == limit
    with db.session() as session:
        service.set_desired(session, owner, device_id, fits, limit)
    with pytest.raises(ValidationError, match="exceeds"), db.session() as session:
        service.set_desired(
            session, owner, device_id, {"config": {"blob": "x" * (limit - 23)}}, limit
        )
    device = load_device(db, device_id)
    assert device.desired == fits
    assert device.desired_version == 2


# -- tenants ----------------------------------------------------------------------------


def test_another_tenants_device_is_not_found_and_not_touched(
    db: Database, acme: Principal, device_id: str
) -> None:
    attempts = [
        lambda s: service.get_device(s, acme, device_id),
        lambda s: service.set_labels(s, acme, device_id, {"owned": "yes"}),
        lambda s: service.set_desired(s, acme, device_id, {"config": {}}, 1024),
        lambda s: service.revoke(s, acme, device_id, NOW),
    ]
    for attempt in attempts:
        with pytest.raises(NotFoundError), db.session() as session:
            attempt(session)
    with db.session() as session:
        assert service.list_devices(session, acme) == []
    device = load_device(db, device_id)
    assert device.state == "active"
    assert device.labels == {"role": "router", "site": "a"}
    assert device.desired_version == 1


def test_an_unknown_device_is_not_found(db: Database, owner: Principal) -> None:
    with pytest.raises(NotFoundError), db.session() as session:
        service.get_device(session, owner, "d" + "a" * 20)


def test_list_devices_shows_the_callers_tenant_in_enrollment_order(
    db: Database, owner: Principal, acme: Principal, ca: CertificateAuthority
) -> None:
    router = enroll(db, ca, make_token(db, owner, labels={"role": "router"}))[0]
    nas = enroll(
        db, ca, make_token(db, owner, labels={"role": "nas"}), now=NOW + dt.timedelta(seconds=1)
    )[0]
    other = enroll(db, ca, make_token(db, acme, labels={"role": "nas"}))[0]
    with db.session() as session:
        assert [d.id for d in service.list_devices(session, owner)] == [router, nas]
        assert [d.id for d in service.list_devices(session, owner, Selector.parse("role=nas"))] == [
            nas
        ]
        assert [d.id for d in service.list_devices(session, owner, Selector.parse("gpu"))] == []
        assert [d.id for d in service.list_devices(session, acme)] == [other]


# -- revocation -------------------------------------------------------------------------


def test_revoke_marks_every_certificate_of_the_device_and_only_those(
    db: Database, owner: Principal, ca: CertificateAuthority
) -> None:
    token = make_token(db, owner, uses=2)
    victim, first_pem = enroll(db, ca, token)
    bystander, bystander_pem = enroll(db, ca, token)
    with db.session() as session:
        device = session.get(Device, victim)
        assert device is not None
        device.online = True
        renewed_pem = service.renew(session, ca, device, make_csr(generate_key()), CERT_TTL, NOW)

    when = NOW + HOUR
    with db.session() as session:
        service.revoke(session, owner, victim, when)
    device = load_device(db, victim)
    assert device.state == "revoked"
    assert not device.online
    assert load_device(db, bystander).state == "active"

    with db.session() as session:
        revoked_at = dict(session.execute(select(DeviceCert.serial, DeviceCert.revoked_at)).all())
        revoked, ids = service.revocations(session)
    victim_serials = {load_cert(pem).serial_number for pem in (first_pem, renewed_pem)}
    assert {int(s, 16) for s, at in revoked_at.items() if at == when} == victim_serials
    assert revoked_at[format(load_cert(bystander_pem).serial_number, "x")] is None
    assert {r.serial for r in revoked} == victim_serials
    assert ids == [victim]

    crl = x509.load_pem_x509_crl(ca.crl(revoked, NOW).encode())
    for serial in victim_serials:
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert (
        crl.get_revoked_certificate_by_serial_number(load_cert(bystander_pem).serial_number) is None
    )

    # Revoking again keeps the first revocation time.
    with db.session() as session:
        service.revoke(session, owner, victim, when + HOUR)
    with db.session() as session:
        assert {r.revoked_at for r in service.revocations(session)[0]} == {when}


def test_finished_commands_older_than_the_cutoff_are_pruned(
    db: Database, ca: CertificateAuthority, owner: Principal
) -> None:
    device_id, _ = enroll(db, ca, make_token(db, owner))
    day = dt.timedelta(days=1)
    ages = {"old-ok": ("ok", 9), "old-timeout": ("timeout", 9), "old-pending": ("pending", 9)}
    ages["new-ok"] = ("ok", 1)
    with db.session() as session:
        for name, (status, days) in ages.items():
            created = NOW - days * day
            session.add(
                CommandRow(
                    id=name,
                    tenant_id="default",
                    device_id=device_id,
                    name="ping",
                    status=status,
                    created_at=created,
                    deadline=created + dt.timedelta(seconds=10),
                )
            )
    with db.session() as session:
        assert service.prune_commands(session, NOW - 7 * day, batch=1) == 1
        assert service.prune_commands(session, NOW - 7 * day) == 1
        assert service.prune_commands(session, NOW - 7 * day) == 0
        kept = sorted(session.scalars(select(CommandRow.id)))
    assert kept == ["new-ok", "old-pending"], "a pending command waits for its deadline"
