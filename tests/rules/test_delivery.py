"""Delivering the outbox: the retry policy, the webhook signature, and each kind of action
against real receivers (an HTTP server, an SMTP server) on a real (SQLite, and where it
is installed PostgreSQL) database, with rows put in the outbox by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

import roost.access.models
import roost.events.models
import roost.fleet.models  # noqa: F401  (tables)
from roost.access import Principal
from roost.access.service import create_tenant, ensure_default_tenant
from roost.db import Base, Database, utcnow
from roost.errors import BrokerError, DeliveryError, NotFoundError
from roost.events.models import EventRow
from roost.fleet.models import CommandRow, Device
from roost.pki import CertificateAuthority, generate_key
from roost.pki.ca import cert_to_pem
from roost.pki.keys import key_to_pem
from roost.rules import deadletters
from roost.rules.delivery import STOPPED, Delivery, RetryPolicy, settle
from roost.rules.models import ActionRow
from roost.rules.secrets import SecretStore
from roost.settings import HubSettings
from roost.webhooks import sign, signature, verify_webhook
from roost.wire import Reply
from roost.wire.topics import Down, down
from rules.receivers import WebhookReceiver, smtp_server

DEFAULT = Principal(tenant_id="default", role="owner", token_id="t-owner")
ACME = Principal(tenant_id="acme", role="admin", token_id="t-acme")
NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)

# -- the retry policy ---------------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=5, base_s=1.0, cap_s=10.0)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (80, 10.0)]
)
def test_the_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert POLICY.ceiling(attempt) == ceiling


@given(attempt=st.integers(1, 200), rand=st.floats(0, 1, exclude_max=True))
def test_full_jitter_stays_between_zero_and_the_ceiling(attempt: int, rand: float) -> None:
    delay = POLICY.delay(attempt, rand)
    assert 0 <= delay < POLICY.ceiling(attempt) or delay == 0


def _at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("attempt", "error", "rand", "expected"),
    [
        (1, None, 0.5, ("delivered", NOW, "")),
        (1, DeliveryError("503"), 0.5, ("pending", _at(0.5), "503")),
        (3, DeliveryError("503"), 0.5, ("pending", _at(2.0), "503")),
        (4, DeliveryError("503"), 0.0, ("pending", NOW, "503")),
        (5, DeliveryError("503"), 0.5, ("dead", NOW, "gave up after 5 tries: 503")),
        (1, DeliveryError("404", permanent=True), 0.5, ("dead", NOW, "404")),
        # A receiver's Retry-After is a floor, never beyond the cap.
        (1, DeliveryError("429", retry_after=3), 0.5, ("pending", _at(3.0), "429")),
        (1, DeliveryError("429", retry_after=99), 0.5, ("pending", _at(10.0), "429")),
    ],
)
def test_a_try_settles_as_delivered_retried_or_dead(
    attempt: int, error: DeliveryError | None, rand: float, expected: tuple[Any, ...]
) -> None:
    got = settle(attempt, error, POLICY, NOW, rand)
    assert (got.status, got.at, got.error) == expected


def test_one_try_only_gives_up_at_once() -> None:
    got = settle(1, DeliveryError("down"), RetryPolicy(1, 1.0, 1.0), NOW, 0.5)
    assert (got.status, got.error) == ("dead", "gave up after 1 try: down")


# -- the webhook signature ----------------------------------------------------------------

SECRET = b"s3cret"
BODY = b'{"to":"+15550100","text":"Alice: 150/85"}'


def test_a_signed_webhook_verifies() -> None:
    headers = sign(SECRET, "k1", BODY, now=1_000_000)
    assert headers["Roost-Timestamp"] == "1000000"
    assert headers["Roost-Signature"] == signature(SECRET, 1_000_000, "k1", BODY)
    assert verify_webhook(SECRET, headers, BODY, now=1_000_100)
    assert verify_webhook(SECRET.decode(), {k.lower(): v for k, v in headers.items()}, BODY, 1e6)


def test_the_signature_is_hmac_sha256_of_timestamp_key_and_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET, b"1000000.k1." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1_000_000, "k1", BODY) == "sha256=" + expected


@pytest.mark.parametrize(
    ("change", "now"),
    [
        (lambda h, b: (h, b + b" "), 1_000_000),  # the body
        (lambda h, b: (h, b.replace(b"150", b"120")), 1_000_000),
        (lambda h, b: ({**h, "Roost-Timestamp": "1000001"}, b), 1_000_000),
        (lambda h, b: ({**h, "Roost-Idempotency-Key": "k2"}, b), 1_000_000),
        (lambda h, b: ({**h, "Roost-Signature": "sha256=00"}, b), 1_000_000),
        (lambda h, b: ({k: v for k, v in h.items() if k != "Roost-Signature"}, b), 1_000_000),
        (lambda h, b: (h, b), 1_000_000 + 301),  # replayed too late
        (lambda h, b: (h, b), 1_000_000 - 301),  # or from the future
    ],
)
def test_a_changed_or_stale_webhook_does_not_verify(
    change: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]], now: float
) -> None:
    headers, body = change(sign(SECRET, "k1", BODY, now=1_000_000), BODY)
    assert not verify_webhook(SECRET, headers, body, now=now)
    assert not verify_webhook(b"other", sign(SECRET, "k1", BODY, now=now), BODY, now=now)


def test_the_docs_standard_library_check_verifies_and_refuses() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "rules.md").read_text()
    section = docs.split("### Webhooks: the headers and their signature")[1]
    snippet = section.split("```python\n")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    verify = namespace["verify"]
    headers = sign(SECRET, "k1", BODY)
    assert verify(SECRET, headers, BODY)
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, BODY)
    assert not verify(SECRET, headers, BODY + b" ")
    assert not verify(b"other", headers, BODY)
    assert not verify(SECRET, {**headers, "Roost-Idempotency-Key": "k2"}, BODY)
    assert not verify(SECRET, sign(SECRET, "k1", BODY, now=time.time() - 301), BODY)


def test_no_secret_no_signature() -> None:
    headers = sign(b"", "k1", BODY, now=1_000_000)
    assert set(headers) == {"Roost-Idempotency-Key", "Roost-Timestamp"}


# -- delivering: the fixtures --------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A file database (delivery works from threads) with tenants ``default`` and ``acme``."""
    database = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    Base.metadata.create_all(database.engine)
    with database.session() as session:
        ensure_default_tenant(session)
        create_tenant(session, DEFAULT, "acme")
    yield database
    database.dispose()


class Outlets:
    """Stands in for the hub's device commands and MQTT link, and keeps what it was given."""

    def __init__(self) -> None:
        self.commands: list[CommandRow] = []
        self.published: list[tuple[str, bytes]] = []
        self.connected = True
        self.answer: Reply | None = None

    async def send_command(self, row: CommandRow, timeout: float) -> Reply | None:
        self.commands.append(row)
        return self.answer or Reply(seq=1, id=row.id, ok=True, result="done")

    def publish(self, topic: str, payload: bytes) -> None:
        if not self.connected:
            raise BrokerError("the hub is not connected to the broker")
        self.published.append((topic, payload))


def hub_settings(tmp_path: Path, **overrides: Any) -> HubSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "delivery_backoff_base_s": 0.01,
        "delivery_backoff_cap_s": 0.05,
        "delivery_max_attempts": 4,
        "delivery_poll_s": 0.05,
    }
    return HubSettings.load(env={}, **{**values, **overrides})


@pytest.fixture
def outlets() -> Outlets:
    return Outlets()


@pytest.fixture
def make_delivery(db: Database, tmp_path: Path, outlets: Outlets) -> Callable[..., Delivery]:
    def make(**overrides: Any) -> Delivery:
        settings = hub_settings(tmp_path, **overrides)
        secrets = SecretStore.open(tmp_path)
        return Delivery(db, settings, secrets, outlets.send_command, outlets.publish)

    return make


@pytest.fixture
async def delivery(make_delivery: Callable[..., Delivery]) -> AsyncIterator[Delivery]:
    async with make_delivery() as running:
        yield running


def add_action(
    db: Database,
    kind: str,
    fields: dict[str, Any],
    tenant: str = "default",
    key: str = "",
    rule: str = "r1",
) -> int:
    with db.session() as session:
        row = ActionRow(
            tenant_id=tenant,
            key=key or uuid.uuid4().hex,
            rule_id=rule,
            event_id="e1",
            kind=kind,
            fields=fields,
            next_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row.id


def action(db: Database, action_id: int) -> ActionRow:
    with db.session() as session:
        row = session.get(ActionRow, action_id)
        assert row is not None
        return row


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 - polls what the delivery's tasks change
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"waited {timeout:g}s for {what}") from None


async def settled(db: Database, action_id: int, status: str) -> ActionRow:
    await until(lambda: action(db, action_id).status == status, f"action {status}")
    return action(db, action_id)


def webhook(url: str, **fields: Any) -> dict[str, Any]:
    body = {"to": "+15550100", "text": "Alice: 150/85"}
    return {"url": url, "body": body, "headers": {}, "secret": "", "timeout": 5.0, **fields}


# -- webhooks -------------------------------------------------------------------------------


async def test_a_webhook_is_posted_signed_with_the_tenants_secret(
    db: Database, delivery: Delivery
) -> None:
    with db.session() as session:
        delivery.secrets.set(session, "acme", "doctor-sms", b"acme's secret")
        delivery.secrets.set(session, "default", "doctor-sms", b"another tenant's")
    with WebhookReceiver() as receiver:
        fields = webhook(receiver.url, secret="doctor-sms", headers={"X-Team": "care"})
        action_id = add_action(db, "webhook", fields, tenant="acme", key="k" * 34)
        delivery.notify()
        row = await settled(db, action_id, "delivered")
    assert row.attempts == 1
    assert row.delivered_at is not None
    (request,) = receiver.requests
    assert request.headers["Roost-Idempotency-Key"] == "k" * 34
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Team"] == "care"
    assert request.body == b'{"to":"+15550100","text":"Alice: 150/85"}'
    assert verify_webhook(b"acme's secret", request.headers, request.body)
    assert not verify_webhook(b"another tenant's", request.headers, request.body)
    assert not verify_webhook(b"acme's secret", request.headers, request.body + b" ")


async def test_a_failing_receiver_is_retried_until_it_recovers(
    db: Database, delivery: Delivery
) -> None:
    with WebhookReceiver(statuses=[503, 500, 429]) as receiver:
        action_id = add_action(db, "webhook", webhook(receiver.url), key="retry-me")
        delivery.notify()
        row = await settled(db, action_id, "delivered")
    assert row.attempts == 4
    assert receiver.keys() == ["retry-me"] * 4, "every try carries the same key"


async def test_a_dead_receiver_makes_a_dead_letter_and_a_replay_delivers_it(
    db: Database, delivery: Delivery
) -> None:
    with WebhookReceiver(status=500) as receiver:
        action_id = add_action(db, "webhook", webhook(receiver.url))
        delivery.notify()
        row = await settled(db, action_id, "dead")
        assert row.attempts == 4
        assert row.last_error == f"gave up after 4 tries: {receiver.url} answered 500: status 500"
        assert len(receiver.requests) == 4
        with db.session() as session:
            (letter,) = deadletters.dead_letters(session, DEFAULT)
            assert letter.id == action_id
            assert deadletters.dead_letters(session, ACME) == []
            with pytest.raises(NotFoundError):
                deadletters.replay(session, ACME, utcnow(), action_id)

        receiver.status = 200
        with db.session() as session:
            assert deadletters.replay(session, DEFAULT, utcnow(), action_id) == 1
        delivery.notify()
        row = await settled(db, action_id, "delivered")
        assert (row.attempts, row.last_error) == (1, "")
        assert len(receiver.requests) == 5


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        *[(status, "dead") for status in (301, 400, 401, 404, 410)],
        *[(status, "delivered") for status in (408, 429, 502, 504)],
    ],
)
async def test_a_client_error_is_final_and_a_server_error_is_retried(
    db: Database, delivery: Delivery, status: int, outcome: str
) -> None:
    with WebhookReceiver(statuses=[status]) as receiver:
        action_id = add_action(db, "webhook", webhook(receiver.url))
        delivery.notify()
        row = await settled(db, action_id, outcome)
    assert row.attempts == (1 if outcome == "dead" else 2)
    if outcome == "dead":
        assert row.last_error == f"{receiver.url} answered {status}: status {status}"


async def test_a_receiver_too_slow_is_tried_again(db: Database, delivery: Delivery) -> None:
    with WebhookReceiver() as receiver:
        receiver.delay = 1.0
        action_id = add_action(db, "webhook", webhook(receiver.url, timeout=0.2))
        delivery.notify()
        await until(lambda: action(db, action_id).attempts >= 2, "a second try")
        receiver.delay = 0.0
        row = await settled(db, action_id, "delivered")
    assert row.attempts >= 2


async def test_nobody_listening_is_tried_again_then_given_up(
    db: Database, delivery: Delivery
) -> None:
    with WebhookReceiver() as receiver:
        url = receiver.url  # closed when the block ends: nothing listens there now
    action_id = add_action(db, "webhook", webhook(url))
    delivery.notify()
    row = await settled(db, action_id, "dead")
    assert row.attempts == 4
    assert row.last_error.startswith(f"gave up after 4 tries: {url}: ")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"secret": "nope"}, "no secret 'nope' (roost secrets set nope)"),
        ({"url": "ftp://example.org/x"}, "'ftp://example.org/x' is not an http(s) URL"),
        ({"headers": {"X-Bad": "a\r\nInjected: 1"}}, "header 'X-Bad' is not a valid HTTP header"),
    ],
)
async def test_a_webhook_that_cannot_work_is_dead_at_once(
    db: Database, delivery: Delivery, fields: dict[str, Any], error: str
) -> None:
    with WebhookReceiver() as receiver:
        action_id = add_action(db, "webhook", {**webhook(receiver.url), **fields})
        delivery.notify()
        row = await settled(db, action_id, "dead")
    assert (row.attempts, row.last_error) == (1, error)
    assert receiver.requests == []


# -- email ----------------------------------------------------------------------------------


async def test_a_mail_reaches_the_smtp_server_with_its_key(
    db: Database, make_delivery: Callable[..., Delivery]
) -> None:
    with smtp_server() as (port, mails):
        settings = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "smtp_from": "roost@example.org",
        }
        fields = {
            "to": ["bob@example.org", "carol@example.org"],
            "cc": ["dave@example.org"],
            "subject": "Alice's blood pressure is 150/85\nBcc: eve@example.org",
            "body": "Please call her.",
        }
        async with make_delivery(**settings) as delivery:
            action_id = add_action(db, "email", fields, tenant="acme", key="m" * 34)
            delivery.notify()
            await settled(db, action_id, "delivered")
    ((recipients, mail),) = mails
    assert recipients == ["bob@example.org", "carol@example.org", "dave@example.org"]
    assert mail["From"] == "roost@example.org"
    assert mail["To"] == "bob@example.org, carol@example.org"
    assert mail["Cc"] == "dave@example.org"
    assert mail["Subject"] == "Alice's blood pressure is 150/85 Bcc: eve@example.org"
    assert mail["Bcc"] is None
    assert mail["Message-ID"] == f"<{'m' * 34}.acme@example.org>"
    assert mail["Roost-Idempotency-Key"] == "m" * 34
    assert mail.get_content().strip() == "Please call her."


@pytest.fixture(scope="module")
def smtp_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 from a CA of its own, and that CA's file."""
    ca = CertificateAuthority.create()
    key = generate_key()
    cert = ca.issue_server(["127.0.0.1"], key.public_key(), dt.timedelta(days=1))
    directory = tmp_path_factory.mktemp("smtp-tls")
    (directory / "server.pem").write_bytes(key_to_pem(key) + cert_to_pem(cert).encode())
    (directory / "ca.pem").write_text(ca.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    return context, directory / "ca.pem"


# aiosmtpd warns that AUTH without STARTTLS is unsafe: it does not see implicit TLS as TLS.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("security", ["starttls", "ssl"])
async def test_a_mail_goes_over_tls_and_logs_in(
    db: Database,
    make_delivery: Callable[..., Delivery],
    smtp_tls: tuple[ssl.SSLContext, Path],
    security: str,
) -> None:
    context, ca_file = smtp_tls
    with smtp_server(context, implicit=security == "ssl", login=("roost", "pw")) as (port, mails):
        settings = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": security,
            "smtp_ca_file": str(ca_file),
            "smtp_user": "roost",
        }
        fields = {"to": "bob@example.org", "subject": "hi"}
        async with make_delivery(**settings, smtp_password="pw") as delivery:
            sent = add_action(db, "email", fields)
            delivery.notify()
            await settled(db, sent, "delivered")
        async with make_delivery(**settings, smtp_password="wrong") as delivery:
            refused = add_action(db, "email", fields)
            delivery.notify()
            row = await settled(db, refused, "dead")
            assert row.attempts == 1
            assert row.last_error.startswith("the SMTP server answered 535")
        # Without the CA, the server's certificate is not trusted: nothing is sent.
        settings["smtp_ca_file"] = ""
        async with make_delivery(**settings, smtp_password="pw") as delivery:
            untrusted = add_action(db, "email", fields)
            delivery.notify()
            row = await settled(db, untrusted, "dead")
            assert "certificate verify failed" in row.last_error
    assert len(mails) == 1


async def test_a_mail_without_an_smtp_server_is_a_dead_letter(
    db: Database, delivery: Delivery
) -> None:
    action_id = add_action(db, "email", {"to": ["bob@example.org"], "subject": "hi"})
    delivery.notify()
    row = await settled(db, action_id, "dead")
    assert row.last_error == "the hub has no SMTP server (set smtp_host)"


async def test_a_mail_server_that_is_down_is_tried_again(
    db: Database, make_delivery: Callable[..., Delivery]
) -> None:
    from system.procs import free_port

    settings = {"smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_security": "none"}
    async with make_delivery(**settings) as delivery:
        action_id = add_action(db, "email", {"to": ["bob@example.org"], "subject": "hi"})
        delivery.notify()
        row = await settled(db, action_id, "dead")
    assert row.attempts == 4
    assert row.last_error.startswith("gave up after 4 tries: the SMTP server at 127.0.0.1:")


# -- emit -----------------------------------------------------------------------------------


async def test_emit_stores_one_event_however_often_it_is_delivered(
    db: Database, delivery: Delivery
) -> None:
    fields = {
        "type": "ops.page",
        "subject": "alice",
        "data": {"bp": 150},
        "source": "roost://rules/alice-blood-pressure",
    }
    action_id = add_action(db, "emit", fields, key="e" * 34, rule="alice-blood-pressure")
    delivery.notify()
    await settled(db, action_id, "delivered")
    with db.session() as session:  # delivered again, as after a lost acknowledgement
        session.get(ActionRow, action_id).status = "pending"  # type: ignore[union-attr]
    delivery.notify()
    await until(lambda: action(db, action_id).attempts == 2, "a second delivery")
    await settled(db, action_id, "delivered")
    with db.session() as session:
        (event,) = session.scalars(select(EventRow))
        assert (event.event_id, event.source) == ("e" * 34, "roost://rules/alice-blood-pressure")
        assert (event.type, event.subject, event.data) == ("ops.page", "alice", {"bp": 150})
        assert event.tenant_id == "default"


async def test_emit_refuses_the_hubs_own_event_types(db: Database, delivery: Delivery) -> None:
    action_id = add_action(db, "emit", {"type": "roost.device.offline", "subject": ""})
    delivery.notify()
    row = await settled(db, action_id, "dead")
    assert row.last_error == "event type 'roost.device.offline': roost.* is the hub's own"


# -- command and publish ------------------------------------------------------------------


def add_device(db: Database, device_id: str, tenant: str, **labels: str) -> None:
    with db.session() as session:
        session.add(
            Device(
                id=device_id,
                tenant_id=tenant,
                labels=labels,
                cert_pem="",
                cert_not_after=NOW,
            )
        )


async def test_a_command_goes_to_a_device_of_the_rules_tenant_only(
    db: Database, delivery: Delivery, outlets: Outlets
) -> None:
    add_device(db, "d-acme", "acme")
    add_device(db, "d-other", "default")
    fields = {"name": "guest-access.disable", "args": {"why": "forced"}, "timeout": 5.0}
    theirs = add_action(db, "command", {**fields, "device": "d-other"}, tenant="acme")
    ours = add_action(db, "command", {**fields, "device": "d-acme"}, tenant="acme")
    delivery.notify()
    row = await settled(db, theirs, "dead")
    assert (row.attempts, row.last_error) == (1, "no device 'd-other' in this tenant")
    await settled(db, ours, "delivered")
    (sent,) = outlets.commands
    assert (sent.device_id, sent.tenant_id, sent.name) == ("d-acme", "acme", fields["name"])
    assert sent.args == {"why": "forced"}


async def test_a_command_unanswered_is_tried_again_and_a_refused_one_is_dead(
    db: Database, delivery: Delivery, outlets: Outlets
) -> None:
    add_device(db, "d1", "default")
    outlets.answer = Reply(seq=1, id="x", ok=False, error="no such command")
    refused = add_action(db, "command", {"device": "d1", "name": "nope", "timeout": 5.0})
    delivery.notify()
    row = await settled(db, refused, "dead")
    assert row.last_error == "device d1 answered 'nope' with: no such command"

    no_device = add_action(db, "command", {"device": "", "name": "ping", "timeout": 5.0})
    delivery.notify()
    row = await settled(db, no_device, "dead")
    assert row.last_error == "command 'ping': the event names no device (set device:)"


async def test_publish_to_a_topic_and_to_the_tenants_devices(
    db: Database, delivery: Delivery, outlets: Outlets
) -> None:
    add_device(db, "d-hvac", "acme", role="hvac")
    add_device(db, "d-lamp", "acme", role="lamp")
    add_device(db, "d-theirs", "default", role="hvac")
    payload = {"room": "kitchen", "avg": 31.5}
    to_topic = add_action(db, "publish", {"topic": "home/alerts", "payload": payload}, "acme")
    to_devices = add_action(
        db, "publish", {"devices": "role=hvac", "payload": payload}, "acme", key="p" * 34
    )
    into_roost = add_action(db, "publish", {"topic": "roost/v1/d/x/down/cmd"}, "acme")
    delivery.notify()
    await settled(db, to_topic, "delivered")
    await settled(db, to_devices, "delivered")
    row = await settled(db, into_roost, "dead")
    assert row.last_error == "topic 'roost/v1/d/x/down/cmd': outside roost/, without wildcards"
    assert sorted(outlets.published) == sorted(
        [
            ("home/alerts", b'{"room": "kitchen", "avg": 31.5}'),
            (
                down("d-hvac", Down.MESSAGE),
                b'{"key": "' + b"p" * 34 + b'", "rule": "r1", "payload": '
                b'{"room": "kitchen", "avg": 31.5}}',
            ),
        ]
    )


async def test_publish_while_the_broker_is_away_is_tried_again(
    db: Database, delivery: Delivery, outlets: Outlets
) -> None:
    outlets.connected = False
    action_id = add_action(db, "publish", {"topic": "home/alerts", "payload": 1})
    delivery.notify()
    await until(lambda: action(db, action_id).attempts >= 2, "a second try")
    outlets.connected = True
    await settled(db, action_id, "delivered")
    assert outlets.published == [("home/alerts", b"1")]


async def test_invoke_without_functions_is_a_dead_letter(db: Database, delivery: Delivery) -> None:
    action_id = add_action(db, "invoke", {"function": "triage", "input": {}})
    delivery.notify()
    row = await settled(db, action_id, "dead")
    assert row.last_error == "this hub runs no functions"


# -- the outbox ---------------------------------------------------------------------------


async def test_notify_wakes_the_delivery_from_another_thread(
    db: Database, make_delivery: Callable[..., Delivery]
) -> None:
    # Polling once a minute: only the nudge can make it deliver within the wait below.
    with WebhookReceiver() as receiver:
        async with make_delivery(delivery_poll_s=60) as delivery:
            await asyncio.sleep(0.2)  # the loop has looked, found nothing, and sleeps
            action_id = add_action(db, "webhook", webhook(receiver.url))
            threading.Thread(target=delivery.notify).start()
            await until(lambda: action(db, action_id).status == "delivered", "delivery", 30)


async def test_no_more_tries_at_once_than_the_concurrency_allows(
    db: Database, make_delivery: Callable[..., Delivery]
) -> None:
    with WebhookReceiver() as receiver:
        receiver.delay = 0.2
        ids = [add_action(db, "webhook", webhook(receiver.url)) for _ in range(9)]
        async with make_delivery(delivery_concurrency=3) as delivery:
            delivery.notify()
            for action_id in ids:
                await settled(db, action_id, "delivered")
    assert len(receiver.requests) == 9
    assert 1 < receiver.most_in_flight <= 3, "concurrent, within the bound"


async def test_stopping_leaves_a_try_in_flight_due_again(
    db: Database, make_delivery: Callable[..., Delivery]
) -> None:
    with WebhookReceiver() as receiver:
        receiver.delay = 3.0
        async with make_delivery() as delivery:
            action_id = add_action(db, "webhook", webhook(receiver.url))
            delivery.notify()
            await until(lambda: len(receiver.requests) == 1, "the first try")
        row = action(db, action_id)
        assert (row.status, row.attempts, row.last_error) == ("pending", 1, STOPPED)
        assert row.next_at <= utcnow()
        receiver.delay = 0.0
        async with make_delivery():
            await settled(db, action_id, "delivered")


async def check_hubs_share_the_outbox(db: Database, make: Callable[[], Delivery]) -> None:
    """Two deliveries on one database, as two hubs: each action is posted exactly once."""
    with WebhookReceiver() as receiver:
        ids = [add_action(db, "webhook", webhook(receiver.url)) for _ in range(60)]
        async with make() as first, make() as second:
            first.notify()
            second.notify()

            def all_delivered() -> bool:
                with db.session() as session:
                    query = select(func.count()).where(ActionRow.status == "delivered")
                    return session.scalar(query) == len(ids)

            await until(all_delivered, "every action delivered")
        keys = receiver.keys()
    assert len(keys) == len(ids)
    assert len(set(keys)) == len(ids)


async def test_two_hubs_on_sqlite_deliver_each_action_once(
    db: Database, make_delivery: Callable[..., Delivery]
) -> None:
    await check_hubs_share_the_outbox(db, lambda: make_delivery(delivery_concurrency=8))


async def test_two_hubs_on_postgresql_deliver_each_action_once(
    fresh_postgres_db: str, tmp_path: Path, outlets: Outlets
) -> None:
    database = Database(fresh_postgres_db)
    try:
        Base.metadata.create_all(database.engine)
        with database.session() as session:
            ensure_default_tenant(session)
        settings = hub_settings(tmp_path, delivery_concurrency=8)
        secrets = SecretStore.open(tmp_path)

        def make() -> Delivery:
            return Delivery(database, settings, secrets, outlets.send_command, outlets.publish)

        await check_hubs_share_the_outbox(database, make)
    finally:
        database.dispose()


async def test_dead_letters_are_dropped_per_tenant(db: Database, delivery: Delivery) -> None:
    action_id = add_action(db, "invoke", {"function": "f"}, tenant="acme")
    delivery.notify()
    await settled(db, action_id, "dead")
    with db.session() as session:
        with pytest.raises(NotFoundError):
            deadletters.drop(session, DEFAULT, action_id)
        deadletters.drop(session, ACME, action_id)
        assert session.get(ActionRow, action_id) is None


# -- secrets --------------------------------------------------------------------------------


def test_secrets_are_sealed_per_tenant_and_name(db: Database, tmp_path: Path) -> None:
    store = SecretStore.open(tmp_path)
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    with db.session() as session:
        store.set(session, "acme", "doctor-sms", b"hunter2")
    with db.session() as session:
        from roost.rules.secrets import SecretRow

        row = session.get(SecretRow, ("acme", "doctor-sms"))
        assert row is not None
        assert b"hunter2" not in row.sealed
        assert store.get(session, "acme", "doctor-sms") == b"hunter2"
        assert store.get(session, "default", "doctor-sms") is None
        assert SecretStore.open(tmp_path).get(session, "acme", "doctor-sms") == b"hunter2"
        # Moved to another tenant, it no longer opens.
        session.add(SecretRow(tenant_id="default", name="doctor-sms", sealed=row.sealed))
        session.flush()
        from roost.errors import ConfigError

        with pytest.raises(ConfigError, match="does not open"):
            store.get(session, "default", "doctor-sms")
