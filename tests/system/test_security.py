"""Attacks on a real fleet: a hub, its managed Mosquitto and real agents.

One hub serves the whole module. Its devices:

- ``alice`` and ``bob`` run their agents: the bystanders an attacker aims at;
- ``mallory`` is enrolled but its agent is stopped: the tests connect raw MQTT clients
  with its real identity (``identity.pem``, ``ca.pem``), as a device taken over would;
- ``victim`` is enrolled and stopped, so forged messages about it would leave traces
  (metrics, inventory) that its own agent cannot overwrite.

Negative checks ("nothing arrives") end with a positive control sent afterwards over
the same path: once the control is seen, anything sent before it would have been too.
Mosquitto drops denied publishes and subscriptions silently, so this is the only way
to see that nothing got through.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import sqlite3
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from roost.agent import hubapi
from roost.agent.identity import IdentityStore
from roost.client import RoostClient
from roost.errors import CommandTimeoutError, ForbiddenError, HubError, NotFoundError
from roost.pki import CertificateAuthority, JoinToken, generate_key, make_csr
from roost.pki.ca import cert_to_pem
from roost.pki.keys import key_to_pem
from roost.wire import Birth, Event, Heartbeat, Reply, Status, topics
from roost.wire.topics import Up
from system.harness import ROOST, Agent, Hub
from system.procs import Proc, StartProc, wait_for

T = TypeVar("T")
MAX_PAYLOAD = 2048


# -- a bare MQTT client --------------------------------------------------------------


class RawDevice:
    """A gmqtt client on an event loop of its own thread, so sync tests can drive it.

    It never reconnects: whatever the broker does to it stays visible.
    """

    def __init__(self, port: int, context: ssl.SSLContext, client_id: str) -> None:
        self.port = port
        self.context = context
        self.client_id = client_id
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, tuple[int, ...]] = {}
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client: Client = self._call(self._make_client())

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _make_client(self) -> Client:
        client = Client(self.client_id, clean_session=True)
        client.on_connect = lambda *_: self.connected.set()
        client.on_disconnect = lambda *_: self.disconnected.set()
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _on_message(self, _c: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        self.messages.append((topic, payload))
        return 0

    def _on_subscribe(self, _c: Any, mid: int, codes: Sequence[int], _p: Any) -> None:
        self.subacks[mid] = tuple(codes)

    def connect(self) -> None:
        async def connect() -> None:
            await self._client.connect(
                "127.0.0.1", self.port, ssl=self.context, keepalive=30, version=MQTTv50
            )

        self._call(connect())
        wait_for(self.connected.is_set, timeout=10, what="CONNACK")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        async def publish() -> None:
            self._client.publish(topic, payload, qos=qos)

        self._call(publish())

    def subscribe(self, topic: str) -> tuple[int, ...]:
        """Subscribe with QoS 1; the SUBACK's reason codes."""

        async def subscribe() -> int:
            mid: int = self._client.subscribe(topic, qos=1)
            return mid

        mid = self._call(subscribe())
        return wait_for(lambda: self.subacks.get(mid), timeout=10, what=f"SUBACK for {topic}")

    def topics_seen(self) -> set[str]:
        return {topic for topic, _ in list(self.messages)}

    def close(self) -> None:
        async def shut() -> None:
            self._client.stop_reconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.disconnect(), 5)
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def raw_device(port: int, context: ssl.SSLContext, client_id: str) -> Iterator[RawDevice]:
    device = RawDevice(port, context, client_id)
    try:
        device.connect()
        yield device
    finally:
        device.close()


def mqtt_connack(port: int, context: ssl.SSLContext, client_id: str) -> int | None:
    """A bare MQTT 3.1.1 CONNECT over TLS: the CONNACK return code, or None when the
    broker would not talk (TLS refused, or the connection closed without a CONNACK)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x1e" + struct.pack("!H", len(cid)) + cid
    packet = bytes([0x10, len(body)]) + body
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as plain,
            context.wrap_socket(plain, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(packet)
            answer = tls.recv(4)
    except (ssl.SSLError, ConnectionError):
        return None
    if len(answer) < 4 or answer[0] != 0x20:
        return None
    return answer[3]


def device_tls(data_dir: Path) -> ssl.SSLContext:
    """What an agent connects with: its identity, trusting the hub's CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=data_dir / "ca.pem")
    context.load_cert_chain(data_dir / "identity.pem")
    return context


def forged_tls(hub_ca: Path, ca: CertificateAuthority, subject: str, where: Path) -> ssl.SSLContext:
    """A client certificate for ``subject`` from ``ca`` (not the hub's), trusting the hub."""
    key = generate_key()
    cert = ca.issue_client(subject, key.public_key(), dt.timedelta(hours=1))
    where.write_bytes(key_to_pem(key) + cert_to_pem(cert).encode())
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=hub_ca)
    context.load_cert_chain(where)
    return context


def lookalike_ca(hub_ca: Path) -> CertificateAuthority:
    """A CA with the hub CA's exact name (and a key of its own)."""
    real = x509.load_pem_x509_certificate(hub_ca.read_bytes())
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, cert)


# -- the fleet of this module ----------------------------------------------------------


@dataclass
class Fleet:
    hub: Hub
    alice: Agent
    bob: Agent
    mallory: Agent
    victim: Agent
    tmp: Path

    @property
    def hub_ca(self) -> Path:
        return self.hub.data_dir / "pki" / "ca.pem"

    def api(self) -> RoostClient:
        return self.hub.client()

    def mallory_raw(
        self, client_id: str | None = None
    ) -> contextlib.AbstractContextManager[RawDevice]:
        return raw_device(
            self.hub.mqtt_port,
            device_tls(self.mallory.data_dir),
            client_id or self.mallory.device_id,
        )

    def control_event(self, raw: RawDevice) -> None:
        """Send an event of mallory's own through ``raw`` and wait until the hub stores it.

        Everything ``raw`` published before has then reached the hub (or never will).
        """
        event_id = f"control-{uuid.uuid4()}"
        event = {"id": event_id, "source": "test", "type": "test.control"}
        raw.publish(topics.up(self.mallory.device_id, Up.EVENT), Event(seq=1, event=event).encode())
        with self.api() as api:
            wait_for(
                lambda: any(
                    e["id"] == event_id
                    for e in api.events(type="test.control", device=self.mallory.device_id)
                ),
                timeout=15,
                what="mallory's control event at the hub",
            )

    def events_after(self, after: int, **filters: str) -> list[dict[str, Any]]:
        with self.api() as api:
            return api.events(after=after, limit=1000, **filters)

    def last_event_seq(self) -> int:
        with self.api() as api:
            events = api.events(limit=1000)
            while len(events) == 1000:
                events = api.events(after=events[-1]["seq"], limit=1000)
            return int(events[-1]["seq"]) if events else 0


@pytest.fixture(scope="module")
def module_start_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartProc]:
    log_dir = tmp_path_factory.mktemp("security-logs")
    started: list[Proc] = []

    def start(
        argv: Sequence[str | PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        proc = Proc(argv, log_dir=log_dir, name=name, env=env, cwd=cwd).start()
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="module")
def fleet(
    module_start_proc: StartProc, tmp_path_factory: pytest.TempPathFactory, mosquitto_bin: str
) -> Fleet:
    tmp = tmp_path_factory.mktemp("security")
    hub = Hub.start(
        module_start_proc, tmp / "hub", settings={"ROOST_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD)}
    )
    agents = {
        name: hub.join(tmp / name, {"name": name}) for name in ("alice", "bob", "mallory", "victim")
    }
    hub.wait_online([a.device_id for a in agents.values()])
    with hub.client() as api:
        wait_for(
            lambda: "cpu" in api.device(agents["victim"].device_id)["metrics"],
            timeout=15,
            what="a heartbeat of the victim",
        )
    for name in ("mallory", "victim"):
        agents[name].proc.stop()
    with hub.client() as api:
        for name in ("mallory", "victim"):
            wait_for(
                lambda name=name: api.device(agents[name].device_id)["status"] == "offline",
                timeout=15,
                what=f"{name} offline",
            )
    return Fleet(hub=hub, tmp=tmp, **agents)


# -- helpers over the fleet -------------------------------------------------------------


def pending_command(hub: Hub, device_id: str) -> str | None:
    """The id of a pending command for ``device_id``, read from the hub's SQLite file.

    The API answers a command only once it is done; a forged reply needs its id before.
    """
    url = f"file:{hub.data_dir / 'roost.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(url, uri=True)) as db:
        row = db.execute(
            "SELECT id FROM commands WHERE device_id = ? AND status = 'pending'", (device_id,)
        ).fetchone()
    return str(row[0]) if row else None


def agent_join(token: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ROOST, "agent", "join", token, "--no-run", "--data", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def signed(
    hub: Hub, agent_dir: Path, device_id: str, key_pem: bytes, method: str, path: str, body: Any
) -> Any:
    """An HTTPS call to the hub as ``device_id``, signed with ``key_pem``."""
    context = hubapi.verified_context((agent_dir / "ca.pem").read_text())
    signer = hubapi.device_signer(device_id, key_pem)
    return hubapi.request(hub.url, method, path, context, body, signer=signer)


def assert_refused(call: Callable[[], Any], status: int = 401) -> None:
    with pytest.raises(HubError) as refused:
        call()
    assert refused.value.status == status, refused.value


def forged_event(event_id: str) -> dict[str, Any]:
    return {"id": event_id, "source": "forged", "type": "test.forged"}


# -- 1. a certificate from another CA ----------------------------------------------------


def test_a_certificate_from_another_ca_is_refused(fleet: Fleet) -> None:
    bob = fleet.bob.device_id
    port = fleet.hub.mqtt_port
    # The same bare CONNECT with a real identity is accepted.
    assert mqtt_connack(port, device_tls(fleet.mallory.data_dir), fleet.mallory.device_id) == 0

    for name, ca in [
        ("other", CertificateAuthority.create()),
        ("lookalike", lookalike_ca(fleet.hub_ca)),
    ]:
        context = forged_tls(fleet.hub_ca, ca, bob, fleet.tmp / f"{name}-client.pem")
        assert mqtt_connack(port, context, bob) is None, f"a client cert from the {name} CA"

    # HTTPS: only bob's own key speaks for bob.
    bob_key = IdentityStore(fleet.bob.data_dir).key_pem()
    assert (
        signed(fleet.hub, fleet.bob.data_dir, bob, bob_key, "GET", "/v1/agent/self", None)["id"]
        == bob
    )
    for key_pem in (key_to_pem(generate_key()), IdentityStore(fleet.alice.data_dir).key_pem()):
        assert_refused(
            lambda key_pem=key_pem: signed(
                fleet.hub, fleet.bob.data_dir, bob, key_pem, "GET", "/v1/agent/self", None
            )
        )
    context = hubapi.verified_context(fleet.hub_ca.read_text())
    assert_refused(lambda: hubapi.request(fleet.hub.url, "GET", "/v1/agent/self", context))

    # A signature covers method, path and body: one made for a harmless GET does not
    # carry over to a renewal.
    real = hubapi.device_signer(bob, bob_key)

    def replayed(_method: str, _target: str, _body: bytes) -> dict[str, str]:
        return real("GET", "/v1/agent/self", b"")

    csr = {"csr": make_csr(generate_key())}
    assert_refused(
        lambda: hubapi.request(
            fleet.hub.url, "POST", "/v1/agent/renew", context, csr, signer=replayed
        )
    )

    with fleet.api() as api:
        assert api.device(bob)["status"] == "online"
        assert api.command(bob, "ping", timeout=10)["status"] == "ok"


# -- 2. another device's topics ----------------------------------------------------------


def test_a_device_cannot_publish_as_another(fleet: Fleet) -> None:
    victim, bob = fleet.victim.device_id, fleet.bob.device_id
    mark = fleet.last_event_seq()
    with fleet.api() as api:
        before = api.device(victim)

    outcome: dict[str, Any] = {}

    def command_victim() -> None:
        with fleet.api() as api:
            try:
                outcome["reply"] = api.command(victim, "ping", timeout=4)
            except CommandTimeoutError as err:
                outcome["timeout"] = err

    waiter = threading.Thread(target=command_victim)
    waiter.start()
    try:
        command_id = wait_for(
            lambda: pending_command(fleet.hub, victim), timeout=10, what="the pending command"
        )
        with fleet.mallory_raw() as raw:
            forge = {
                topics.up(victim, Up.HEARTBEAT): Heartbeat(
                    time=time.time(), metrics={"cpu": 4242.0}
                ),
                topics.up(victim, Up.BIRTH): Birth(
                    epoch=time.time_ns(),
                    agent_version="forged",
                    inventory={"forged": True},
                    labels={},
                ),
                topics.up(victim, Up.EVENT): Event(seq=1, event=forged_event(f"v-{uuid.uuid4()}")),
                topics.up(victim, Up.REPLY): Reply(seq=2, id=command_id, ok=True, result="forged"),
                topics.up(bob, Up.STATUS): Status(online=False, epoch=2**62),
                topics.up(bob, Up.EVENT): Event(seq=3, event=forged_event(f"b-{uuid.uuid4()}")),
            }
            for topic, message in forge.items():
                raw.publish(topic, message.encode())
            fleet.control_event(raw)
    finally:
        waiter.join(30)

    # The forged reply did not answer the command.
    assert "timeout" in outcome, outcome
    with fleet.api() as api:
        after = api.device(victim)
        for key in ("status", "metrics", "inventory", "agent_version", "last_seen"):
            assert after[key] == before[key], key
        assert api.device(bob)["status"] == "online"
    assert fleet.events_after(mark, type="test.forged") == []
    # No online or offline event either.
    assert fleet.events_after(mark, device=victim) == []
    assert fleet.events_after(mark, device=bob) == []


def test_a_device_cannot_receive_what_is_meant_for_another(fleet: Fleet) -> None:
    bob, mallory = fleet.bob.device_id, fleet.mallory.device_id
    probe = str(uuid.uuid4())
    with fleet.mallory_raw() as raw:
        # Mosquitto grants these (its SUBACK says QoS 1) and filters every delivery
        # through the ACL; what counts is what arrives.
        for pattern in (
            topics.device_down_filter(bob),  # bob's retained desired state is there
            f"{topics.PREFIX}/+/down/+",
            f"{topics.PREFIX}/+/up/+",  # every device's heartbeats, events, replies
            "#",
        ):
            raw.subscribe(pattern)
        with fleet.api() as api:
            api.set_desired(bob, {"config": {"probe": probe}})
            assert api.command(bob, "ping", timeout=10)["status"] == "ok"
            wait_for(lambda: api.twin(bob)["in_sync"], timeout=15, what="bob in sync")
            # Control: mallory's own desired state reaches it through the same
            # subscriptions, after everything the hub sent to bob.
            api.set_desired(mallory, {"config": {"probe": probe}})
            wait_for(
                lambda: any(probe.encode() in payload for _, payload in list(raw.messages)),
                timeout=15,
                what="mallory's own desired state",
            )
        seen = raw.topics_seen()
    assert seen
    assert all(t.startswith(f"{topics.PREFIX}/{mallory}/down/") for t in seen), seen


# -- 3. another device's client id ---------------------------------------------------------


def test_another_client_id_does_not_take_over_a_session(fleet: Fleet) -> None:
    bob = fleet.bob.device_id
    assert fleet.hub.proc is not None
    mark = fleet.last_event_seq()
    bob_losses = fleet.bob.proc.log_text().count("lost the broker")
    hub_losses = fleet.hub.proc.log_text().count("lost the broker")
    for client_id in (bob, topics.HUB_IDENTITY):
        with fleet.mallory_raw(client_id) as raw:
            # Had the broker taken the client id, bob's (or the hub's) connection would
            # have been closed before this CONNACK, and its last will sent to the hub
            # before this event.
            fleet.control_event(raw)
    assert fleet.events_after(mark, device=bob) == []
    assert fleet.bob.proc.log_text().count("lost the broker") == bob_losses
    assert fleet.hub.proc.log_text().count("lost the broker") == hub_losses
    with fleet.api() as api:
        assert api.device(bob)["status"] == "online"
        assert api.command(bob, "ping", timeout=10)["status"] == "ok"


# -- 4. revocation -----------------------------------------------------------------------


def test_a_revoked_device_is_cut_off_and_the_rest_come_back(fleet: Fleet) -> None:
    hub = fleet.hub
    # Quick retries, so that refused reconnects show up soon.
    rex = hub.join(fleet.tmp / "rex", env={"ROOST_RECONNECT_MAX_S": "1"})
    hub.wait_online([rex.device_id])
    rex_key = IdentityStore(rex.data_dir).key_pem()
    others = [fleet.alice.device_id, fleet.bob.device_id]
    with fleet.api() as api:
        restarts = api.stats()["broker_restarts"]
        assert api.revoke(rex.device_id)["state"] == "revoked"
        wait_for(
            lambda: api.device(rex.device_id)["status"] == "offline",
            timeout=15,
            what="the revoked device offline",
        )
        last_seen = api.device(rex.device_id)["last_seen"]
        # The managed broker restarted to load the CRL; the others come back.
        wait_for(lambda: api.stats()["broker_restarts"] > restarts, timeout=15, what="restart")
        hub.wait_online(others)
        for device_id in others:
            assert api.command(device_id, "ping", timeout=10)["status"] == "ok"

        # The broker refuses the revoked certificate at TLS...
        assert mqtt_connack(hub.mqtt_port, device_tls(rex.data_dir), rex.device_id) is None
        # ...again and again, as the agent keeps trying (for several heartbeat
        # intervals), and the agent says why.
        wait_for(
            lambda: rex.proc.log_text().count("CERTIFICATE_REVOKED") >= 3,
            timeout=30,
            what="the agent to log refused reconnects",
        )
        gone = api.device(rex.device_id)
        assert (gone["status"], gone["state"]) == ("offline", "revoked")
        assert gone["last_seen"] == last_seen  # not heard from since
        with pytest.raises(HubError):
            api.command(rex.device_id, "ping", timeout=2)

    for method, path, body in [
        ("GET", "/v1/agent/self", None),
        ("POST", "/v1/agent/renew", {"csr": make_csr(generate_key())}),
    ]:
        assert_refused(
            lambda method=method, path=path, body=body: signed(
                hub, rex.data_dir, rex.device_id, rex_key, method, path, body
            )
        )


# -- 5. join tokens ----------------------------------------------------------------------


def test_join_tokens_refuse_clearly_and_create_nothing(fleet: Fleet) -> None:
    tmp = fleet.tmp / "joins"
    with fleet.api() as api:
        expiring = api.create_join_token(ttl_s=1)
        before = len(api.devices())
        once = api.create_join_token(uses=1)["token"]
        good = api.create_join_token(uses=1)["token"]

    first = agent_join(once, tmp / "first")
    assert first.returncode == 0, first.stderr
    assert "enrolled as" in first.stdout

    pinned = JoinToken.decode(good)
    refusals = {
        "used up": once,
        "damaged": once[: len(once) // 2],
        "does not match the token's": JoinToken(
            pinned.hub_url,
            CertificateAuthority.create().fingerprint,
            pinned.token_id,
            pinned.secret,
        ).encode(),
        "unknown join token": JoinToken(
            pinned.hub_url, pinned.ca_fingerprint, pinned.token_id, "not-the-secret"
        ).encode(),
    }
    for n, (message, token) in enumerate(refusals.items()):
        result = agent_join(token, tmp / f"refused{n}")
        assert result.returncode != 0, message
        assert message in result.stderr, result.stderr
        assert not (tmp / f"refused{n}" / "identity.json").exists()

    expires_at = dt.datetime.fromisoformat(expiring["expires_at"])
    wait_for(lambda: dt.datetime.now(dt.UTC) > expires_at, timeout=5, what="the token to expire")
    expired = agent_join(expiring["token"], tmp / "expired")
    assert expired.returncode != 0
    assert "expired" in expired.stderr, expired.stderr

    with fleet.api() as api:
        assert len(api.devices()) == before + 1
    # The token whose pin was altered was never spent: the agent stopped before sending
    # its secret anywhere, and a wrong secret takes no use either.
    again = agent_join(good, tmp / "good")
    assert again.returncode == 0, again.stderr
    with fleet.api() as api:
        assert len(api.devices()) == before + 2


# -- 6. malformed payloads ---------------------------------------------------------------


def test_malformed_payloads_are_counted_and_harmless(fleet: Fleet) -> None:
    mallory = fleet.mallory.device_id
    oversized = Event(seq=1, event={**forged_event("big"), "data": "x" * MAX_PAYLOAD}).encode()
    assert MAX_PAYLOAD < len(oversized) < 4 * MAX_PAYLOAD  # past the hub, not the broker
    garbage = [
        (Up.EVENT, b"not json {"),
        (Up.HEARTBEAT, b"\xff\xfe\xfd"),
        (Up.HEARTBEAT, b"[1, 2, 3]"),
        (Up.BIRTH, b'{"epoch": "soon", "agent_version": 1, "inventory": [], "labels": {}}'),
        (Up.HEARTBEAT, b'{"time": 1, "metrics": {"cpu": "high"}}'),
        (Up.REPLY, b'{"seq": "1", "id": 5, "ok": "yes"}'),
        (Up.STATUS, b'{"online": "no", "epoch": 1}'),
        (Up.REPORTED, b'{"seq": 1, "desired_version": 1, "state": []}'),
        (Up.EVENT, b'{"seq": 1, "event": {"type": "no.id.or.source"}}'),
        (Up.EVENT, oversized),
    ]
    with fleet.api() as api:
        dropped = api.stats()["messages"].get("dropped_malformed", 0)
        with fleet.mallory_raw() as raw:
            for kind, payload in garbage:
                raw.publish(topics.up(mallory, kind), payload)
            raw.publish(f"{topics.PREFIX}/{mallory}/up/nonsense", b"{}")  # the ACL allows it
            expected = dropped + len(garbage) + 1
            wait_for(
                lambda: api.stats()["messages"].get("dropped_malformed", 0) >= expected,
                timeout=15,
                what="the garbage to be counted",
            )
            # The hub still takes mallory's good messages after the garbage...
            fleet.control_event(raw)
        assert api.stats()["messages"]["dropped_malformed"] == expected
        # ...and keeps serving everyone else.
        hub_devices = [fleet.alice.device_id, fleet.bob.device_id]
        fleet.hub.wait_online(hub_devices)
        for device_id in hub_devices:
            assert api.command(device_id, "ping", timeout=10)["status"] == "ok"
        assert fleet.events_after(0, type="test.forged") == []


# -- 7. tenants --------------------------------------------------------------------------


def test_tenants_see_and_touch_only_their_own(fleet: Fleet) -> None:
    bob = fleet.bob.device_id
    with fleet.api() as owner:
        admin_token = owner.create_tenant("acme")["admin_token"]
        default_ids = {d["id"] for d in owner.devices()}
    assert bob in default_ids

    with fleet.hub.client(admin_token) as acme:
        assert acme.devices() == []
        assert acme.events(limit=1000) == []
        attempts: dict[str, Callable[[], Any]] = {
            "show": lambda: acme.device(bob),
            "label": lambda: acme.label(bob, {"owner": "acme"}),
            "twin": lambda: acme.twin(bob),
            "desired": lambda: acme.set_desired(bob, {"config": {"owner": "acme"}}),
            "command": lambda: acme.command(bob, "ping", timeout=2),
            "revoke": lambda: acme.revoke(bob),
        }
        for what, attempt in attempts.items():
            try:
                attempt()
            except NotFoundError:
                continue
            raise AssertionError(f"acme could {what} a device of the default tenant")
        with pytest.raises(ForbiddenError):
            acme.create_tenant("acme-two")
        with pytest.raises(ForbiddenError):
            acme.stats()  # the whole hub's counters are the owner's

    with fleet.api() as owner:
        untouched = owner.device(bob)
        assert untouched["state"] == "active"
        assert "owner" not in untouched["labels"]
        assert "owner" not in owner.twin(bob)["desired"].get("config", {})
        assert "acme-two" not in {t["name"] for t in owner.tenants()}

    # A device enrolled with acme's token belongs to acme only.
    agent = fleet.hub.join(fleet.tmp / "acme-device", client=fleet.hub.client(admin_token))
    with fleet.hub.client(admin_token) as acme:
        wait_for(
            lambda: [d["status"] for d in acme.devices()] == ["online"],
            timeout=30,
            what="acme's device online",
        )
        assert acme.device(agent.device_id)["tenant"] == "acme"
        assert acme.command(agent.device_id, "ping", timeout=10)["status"] == "ok"
        assert {e["subject"] for e in acme.events(limit=1000)} <= {agent.device_id}
    with fleet.api() as owner:
        with pytest.raises(NotFoundError):
            owner.device(agent.device_id)
        with pytest.raises(NotFoundError):
            owner.command(agent.device_id, "ping", timeout=2)
        assert agent.device_id not in {d["id"] for d in owner.devices()}
        assert owner.events(device=agent.device_id, limit=1000) == []
