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

import roost.access.models  # noqa: F401  (the tenants table the outbox refers to)
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


def run_cli(config: Path, *args: str, stdin: str = "") -> str:
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
    set_key = run_cli(config, "secrets", "set", "hook-key", stdin="s3cret\n")
    assert set_key == "secret hook-key set\n"
    assert run_cli(config, "secrets", "ls").startswith("hook-key  set ")
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
        listed = run_cli(config, "deadletters", "ls")
        assert "by-hand" in listed
        assert "webhook" in listed

        receiver.status = 200
        assert "1 dead letter(s) back" in run_cli(config, "deadletters", "replay", str(action_id))
        wait_for(lambda: len(receiver.requests) == 3, timeout=30, what="the replayed webhook")
        request = receiver.requests[-1]
        assert request.body == b'{"n":1}'
        assert verify_webhook(b"s3cret", request.headers, request.body)

    # A function that is not there dies at once; --all replays, drop forgets.
    dead = put_action(hub, "invoke", {"function": "f", "input": {}})
    with hub.client() as api:
        wait_for(lambda: len(api.deadletters()) == 1, timeout=30, what="the invoke to die")
        assert api.deadletters()[0]["last_error"] == "no function 'f'"
        assert "1 dead letter(s) back" in run_cli(config, "deadletters", "replay", "--all")
        wait_for(lambda: len(api.deadletters()) == 1, timeout=30, what="it to die again")
        assert run_cli(config, "deadletters", "drop", str(dead)) == f"dead letter {dead} dropped\n"
        assert api.deadletters() == []
        assert run_cli(config, "secrets", "rm", "hook-key") == "secret hook-key removed\n"
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
        # Alice's blood-pressure monitor is a device of the fleet; its readings travel
        # through its agent's outbox and the broker, as a device's events do.
        monitor = hub.join(tmp_path / "monitor", {"role": "health"})
        hub.wait_online([monitor.device_id])
        with hub.client() as api:
            api.set_secret("doctor-sms", "the doctor's key")
            api.apply_rules(BLOOD_PRESSURE.replace("URL", receiver.url))
            monitor.emit("app.reading.bp", {"systolic": 120, "diastolic": 80}, "alice/arm")
            monitor.emit("app.reading.bp", {"systolic": 150, "diastolic": 85}, "alice/arm")
            wait_for(lambda: receiver.requests and mails, timeout=30, what="the webhook and mail")
            (reading, _) = api.events(type="app.reading.bp")
            assert reading["source"].startswith(f"roost://devices/{monitor.device_id}/")

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


HVAC = """\
id: hot-room
trigger: {type: app.reading.temperature}
condition: event.data.celsius > 30
actions:
  - kind: publish
    devices: role=hvac
    payload: {room: "{{ event.subject }}", c: "{{ event.data.celsius }}"}
"""


class DeviceListener:
    """A device of the hub's fleet, enrolled and connected over MQTT in this process, that
    keeps what arrives on its own ``down`` topics."""

    def __init__(self, device_id: str, client: Any) -> None:
        self.device_id = device_id
        self.client = client
        self.messages: list[tuple[str, bytes]] = []

    @classmethod
    async def join(cls, hub: Hub, api: Any, directory: Path, **labels: str) -> DeviceListener:
        import ssl

        from gmqtt import Client
        from gmqtt.mqtt.constants import MQTTv50

        from roost.pki import JoinToken
        from roost.sim.enroll import enroll_devices
        from roost.sim.store import IdentityCache
        from roost.wire import topics

        token = JoinToken.decode(api.create_join_token(labels)["token"])
        ca_pem = (hub.data_dir / "pki" / "ca.pem").read_text()
        cache = IdentityCache(directory)
        cache.bind(token.hub_url, token.ca_fingerprint, ca_pem)
        (device_id,) = await enroll_devices(token, ca_pem, cache, 1)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.load_verify_locations(cadata=ca_pem)
        tls.load_cert_chain(cache.pem_path(device_id))
        listener = cls(device_id, Client(device_id))

        def on_message(_client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
            listener.messages.append((topic, payload))
            return 0

        listener.client.on_message = on_message
        await listener.client.connect("127.0.0.1", hub.mqtt_port, ssl=tls, version=MQTTv50)
        listener.client.subscribe(topics.device_down_filter(device_id), qos=1)
        return listener


async def test_a_publish_action_reaches_the_tenants_devices_that_match(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    import asyncio

    from roost.wire.topics import Down, down

    hub = Hub.start(start_proc, tmp_path / "hub")
    with hub.client() as api:
        acme = api.with_token(api.create_tenant("acme")["admin_token"])
        hvac = await DeviceListener.join(hub, api, tmp_path / "d1", role="hvac")
        lamp = await DeviceListener.join(hub, api, tmp_path / "d2", role="lamp")
        theirs = await DeviceListener.join(hub, acme, tmp_path / "d3", role="hvac")
        try:
            api.apply_rules(HVAC)
            api.send_event("app.reading.temperature", {"celsius": 31.5}, "kitchen")

            async def arrived() -> None:
                while not any(t.endswith("/down/msg") for t, _ in hvac.messages):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(arrived(), 30)
            await asyncio.sleep(0.5)  # what else was coming has come
            (message,) = [(t, p) for t, p in hvac.messages if t.endswith("/down/msg")]
            assert message[0] == down(hvac.device_id, Down.MESSAGE)
            body = json.loads(message[1])
            assert (body["rule"], body["payload"]) == ("hot-room", {"room": "kitchen", "c": 31.5})
            assert len(body["key"]) == 32
            for other in (lamp, theirs):
                assert not any(t.endswith("/down/msg") for t, _ in other.messages)
        finally:
            for device in (hvac, lamp, theirs):
                await device.client.disconnect()
            acme.close()
