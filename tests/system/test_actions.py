"""Rules' actions delivered by a real hub: a webhook signed with a secret set through the
CLI, a dead letter seen, replayed and dropped through the CLI, and the blood-pressure
example of the issue from an event posted to the API to a local HTTP receiver and a
local SMTP server."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import roost.access.models  # (the tenants table the outbox refers to)
from roost.db import Database, utcnow
from roost.rules.models import ActionRow
from roost.webhooks import verify_webhook
from rules.receivers import WebhookReceiver, smtp_server
from system.harness import ROOST, Hub
from system.procs import StartProc, wait_for

FAST_RETRIES = {
    "ROOST_DELIVERY_MAX_ATTEMPTS": "2",
    "ROOST_DELIVERY_BACKOFF_BASE_S": "0.05",
    "ROOST_DELIVERY_BACKOFF_CAP_S": "0.1",
}


def roost(config: Path, *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [*ROOST, *args],
        env={**os.environ, "ROOST_CONFIG": str(config)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"roost {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def put_action(hub: Hub, kind: str, fields: dict[str, Any]) -> int:
    """An action in the hub's outbox, as the rules service writes one."""
    db = Database(f"sqlite:///{hub.data_dir / 'roost.db'}")
    try:
        with db.session() as session:
            row = ActionRow(
                tenant_id="default",
                key=uuid.uuid4().hex,
                rule_id="by-hand",
                event_id="e1",
                kind=kind,
                fields=fields,
                next_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return row.id
    finally:
        db.dispose()


def test_secrets_sign_webhooks_and_dead_letters_are_replayed_and_dropped(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub", settings=FAST_RETRIES)
    config = hub.data_dir / "client.toml"
    assert roost(config, "secrets", "set", "hook-key", stdin="s3cret\n") == "secret hook-key set\n"
    assert roost(config, "secrets", "ls").startswith("hook-key  set ")
    with hub.client() as api:
        assert [s["name"] for s in api.secrets()] == ["hook-key"]
        assert "s3cret" not in json.dumps(api.secrets())

    with WebhookReceiver(status=503) as receiver:
        fields = {"url": receiver.url, "body": {"n": 1}, "secret": "hook-key", "timeout": 5}
        action_id = put_action(hub, "webhook", fields)
        with hub.client() as api:
            wait_for(lambda: api.deadletters() != [], timeout=30, what="a dead letter")
            (letter,) = api.deadletters()
        assert letter["id"] == action_id
        assert letter["last_error"] == (
            f"gave up after 2 tries: {receiver.url} answered 503: status 503"
        )
        listed = roost(config, "deadletters", "ls")
        assert "by-hand" in listed
        assert "webhook" in listed

        receiver.status = 200
        assert "1 dead letter(s) back" in roost(config, "deadletters", "replay", str(action_id))
        wait_for(lambda: len(receiver.requests) == 3, timeout=30, what="the replayed webhook")
        request = receiver.requests[-1]
        assert request.body == b'{"n":1}'
        assert verify_webhook(b"s3cret", request.headers, request.body)

    # A kind that cannot work yet dies at once; --all replays, drop forgets.
    dead = put_action(hub, "invoke", {"function": "f", "input": {}})
    with hub.client() as api:
        wait_for(lambda: len(api.deadletters()) == 1, timeout=30, what="the invoke to die")
        assert api.deadletters()[0]["last_error"] == "functions are not available yet"
        assert "1 dead letter(s) back" in roost(config, "deadletters", "replay", "--all")
        wait_for(lambda: len(api.deadletters()) == 1, timeout=30, what="it to die again")
        assert roost(config, "deadletters", "drop", str(dead)) == f"dead letter {dead} dropped\n"
        assert api.deadletters() == []
        assert roost(config, "secrets", "rm", "hook-key") == "secret hook-key removed\n"
        assert api.secrets() == []


BLOOD_PRESSURE = """\
id: alice-blood-pressure
trigger: {type: app.reading.bp, subject: "alice/*"}
condition: event.data.systolic > 140 || event.data.diastolic > 90
actions:
  - kind: webhook                         # the doctor's SMS gateway
    url: URL
    secret: doctor-sms
    body: {to: "+15550100", text: "Alice: {{ event.data.systolic }}/{{ event.data.diastolic }}"}
  - kind: email
    to: [bob@example.org, carol@example.org]
    subject: "Alice's blood pressure is {{ event.data.systolic }}/{{ event.data.diastolic }}"
"""


def test_the_blood_pressure_rule_reaches_the_doctor_and_the_family(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    with WebhookReceiver() as receiver, smtp_server() as (smtp_port, mails):
        smtp = {
            "ROOST_SMTP_HOST": "127.0.0.1",
            "ROOST_SMTP_PORT": str(smtp_port),
            "ROOST_SMTP_SECURITY": "none",
            "ROOST_SMTP_FROM": "alerts@example.org",
        }
        hub = Hub.start(start_proc, tmp_path / "hub", settings=smtp)
        with hub.client() as api:
            api.set_secret("doctor-sms", "the doctor's key")
            api.apply_rules(BLOOD_PRESSURE.replace("URL", receiver.url))
            api.send_event("app.reading.bp", {"systolic": 120, "diastolic": 80}, "alice/arm")
            api.send_event("app.reading.bp", {"systolic": 150, "diastolic": 85}, "alice/arm")
            wait_for(lambda: receiver.requests and mails, timeout=30, what="the webhook and mail")

        (request,) = receiver.requests
        assert json.loads(request.body) == {"to": "+15550100", "text": "Alice: 150/85"}
        assert verify_webhook(b"the doctor's key", request.headers, request.body)
        assert not verify_webhook(b"the doctor's key", request.headers, request.body[:-1] + b" ")
        ((recipients, mail),) = mails
        assert recipients == ["bob@example.org", "carol@example.org"]
        assert mail["Subject"] == "Alice's blood pressure is 150/85"
        key = request.headers["Roost-Idempotency-Key"]
        assert mail["Roost-Idempotency-Key"] != key, "each action has its own key"
        assert mail["Roost-Idempotency-Key"][:-2] == key[:-2], "both from the same firing"
