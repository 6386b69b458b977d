"""The running agent: MQTT link, birth and heartbeats, outbox, desired state, commands.

One asyncio loop. The link reconnects by itself with exponential backoff and jitter;
every connection gets a fresh ``epoch`` (in its birth and its last will) so the hub can
tell a late last will from a fresh connection. Outbox messages leave only when the hub
acknowledges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50

from roost import __version__
from roost.agent import facts, selfupdate
from roost.agent.commands import CommandTable, UnknownCommandError, logs_handler, ping
from roost.agent.identity import Identity, IdentityStore
from roost.agent.outbox import EDGE_FEED, Outbox
from roost.agent.shares import ShareCommands, ShareStore
from roost.errors import RoostError, WireError
from roost.settings import AgentSettings
from roost.wire import (
    Ack,
    Birth,
    Command,
    Desired,
    Event,
    Heartbeat,
    Reply,
    Reported,
    Status,
    topics,
)
from roost.wire.apps import WantedApp, wanted_apps
from roost.wire.functions import wanted_functions
from roost.wire.topics import Down, Up

if TYPE_CHECKING:
    from roost.agent.apps import AppReconciler
    from roost.agent.edgefns import EdgeFunctions
    from roost.agent.hubapi import Signer
    from roost.agent.updates import HubFetch

log = logging.getLogger("roost.agent")

MAX_DOWN_BYTES = 1024 * 1024
# The edge functions of the last desired state, kept for a restart while offline.
FUNCTIONS_KEY = "functions_wanted"


def backoff(attempt: int, low: float, high: float) -> float:
    """Exponential backoff with full jitter: a whole fleet does not come back in step."""
    return random.uniform(low, min(high, low * 2**attempt))


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.data_dir: Path = settings.data_dir
        self.store = IdentityStore(self.data_dir)
        self.identity: Identity = self.store.load()
        self.outbox = Outbox(self.data_dir / "agent.db", settings.outbox_max_messages)
        self.connected = asyncio.Event()
        self.epoch = 0
        self.desired_version = int(self.outbox.get("desired_version") or 0)
        self.state: dict[str, Any] = self.outbox.get("state") or {
            "labels": dict(self.identity.labels),
            "config": {},
            "heartbeat_interval": self.identity.heartbeat_interval,
        }
        self.commands = CommandTable()
        self.commands.register("ping", ping)
        self.commands.register("reload-config", self._reload_config)
        self.commands.register("logs", logs_handler(self.data_dir / "agent.log"))
        self.commands.register("app-logs", self._app_logs)
        self.shares = ShareCommands(
            ShareStore(self.data_dir / "shares", settings.storage_quota_bytes), self._hub_call
        )
        self.shares.register(self.commands)
        self.apps: AppReconciler | None = None
        self.edge: EdgeFunctions | None = None
        # A new version of the agent on trial: kept once the hub acknowledges it.
        self._on_trial = selfupdate.is_trial(self.data_dir)
        self._client: Client | None = None
        self._tls = self._tls_context()
        self._failures = 0
        self._wake_outbox = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def heartbeat_interval(self) -> float:
        return float(self.state.get("heartbeat_interval") or self.settings.heartbeat_interval_s)

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.store.ca_path)
        context.load_cert_chain(self.store.pem_path)
        return context

    # -- life cycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()``; returns after a clean disconnect, with its apps stopped."""
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="link"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._outbox_loop(), name="outbox"),
            asyncio.create_task(self._renew_loop(), name="renew"),
            asyncio.create_task(self._scrub_loop(), name="scrub"),
        ]
        self._want_apps(stored_apps(self.outbox.get("apps_wanted")))
        self._want_functions(wanted_functions({"functions": self.outbox.get(FUNCTIONS_KEY)}))
        await self._stop.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                # A clean disconnect: the broker drops the last will, so publish offline.
                self._client.publish(
                    topics.up(self.device_id, Up.STATUS),
                    Status(online=False, epoch=self.epoch).encode(),
                    qos=1,
                )
                await asyncio.sleep(0.05)
                await self._client.disconnect()
        self.outbox.close()

    def stop(self) -> None:
        self._stop.set()

    # -- the link ------------------------------------------------------------------------

    def _new_client(self) -> Client:
        self.epoch = time.time_ns() // 1000
        client = Client(self.device_id, clean_session=True, will_message=self._will())
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _will(self) -> Message:
        return Message(
            topics.up(self.device_id, Up.STATUS),
            Status(online=False, epoch=self.epoch).encode(),
            qos=1,
        )

    async def _connect_loop(self) -> None:
        """The first connection; afterwards gmqtt reconnects with the delay we set."""
        attempt = 0
        while True:
            client = self._client = self._new_client()
            try:
                await client.connect(
                    self.identity.mqtt_host,
                    self.identity.mqtt_port,
                    ssl=self._tls,
                    keepalive=self.settings.keepalive_s,
                    version=MQTTv50,
                )
                return
            except (OSError, ssl.SSLError, Exception) as err:
                delay = backoff(
                    attempt, self.settings.reconnect_min_s, self.settings.reconnect_max_s
                )
                log.warning("cannot reach the broker (%s); retrying in %.1fs", err, delay)
                with contextlib.suppress(Exception):
                    await client.disconnect()
                attempt += 1
                await asyncio.sleep(delay)

    def _on_connect(self, client: Client, _flags: int, _rc: int, _props: Any) -> None:
        self._failures = 0
        client.subscribe(topics.device_down_filter(self.device_id), qos=1)
        birth = Birth(
            epoch=self.epoch,
            agent_version=__version__,
            inventory=facts.inventory(),
            labels=dict(self.state.get("labels", {})),
            desired_version=self.desired_version,
        )
        client.publish(topics.up(self.device_id, Up.BIRTH), birth.encode(), qos=1)
        self.outbox.reset_sent()
        if self._on_trial:
            self._report()  # something for the hub to acknowledge
        self.connected.set()
        self._wake_outbox.set()
        log.info("online as %s (epoch %s)", self.device_id, self.epoch)

    def _on_disconnect(self, client: Client, _packet: Any, _exc: Any = None) -> None:
        if self.connected.is_set():
            log.warning("lost the broker; reconnecting")
        self.connected.clear()
        self._failures += 1
        # gmqtt reconnects by itself; give it our backoff and a last will for the next
        # connection's epoch (it sends the will it holds at CONNECT time).
        client.reconnect_delay = backoff(
            self._failures, self.settings.reconnect_min_s, self.settings.reconnect_max_s
        )
        self.epoch = time.time_ns() // 1000
        client._will_message = self._will()

    def _publish(self, kind: Up, payload: bytes, qos: int) -> bool:
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        client.publish(topics.up(self.device_id, kind), payload, qos=qos)
        return True

    # -- messages from the hub -----------------------------------------------------------

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        try:
            parsed = topics.parse(topic)
            if parsed.device_id != self.device_id or parsed.direction != "down":
                raise WireError(f"unexpected topic {topic}")
            if parsed.kind == Down.ACK:
                self.outbox.ack(Ack.decode(payload, MAX_DOWN_BYTES).seqs)
                if self._on_trial:
                    self._confirm_self_update()
            elif parsed.kind == Down.DESIRED:
                self._apply_desired(Desired.decode(payload, MAX_DOWN_BYTES))
            elif parsed.kind == Down.COMMAND:
                command = Command.decode(payload, MAX_DOWN_BYTES)
                task = asyncio.create_task(self._run_command(command))
                self._tasks.append(task)
                task.add_done_callback(self._tasks.remove)
        except WireError as err:
            log.warning("ignored a message from the hub: %s", err)
        return 0

    def _apply_desired(self, desired: Desired) -> None:
        """Take what this agent knows from the desired state, and report what it has."""
        if desired.version == self.desired_version:
            return
        wanted = desired.state
        state = dict(self.state)
        state["labels"] = {str(k): str(v) for k, v in dict(wanted.get("labels", {})).items()}
        config = wanted.get("config", {})
        state["config"] = config if isinstance(config, dict) else {}
        interval = wanted.get("heartbeat_interval")
        if isinstance(interval, int | float) and 0.1 <= interval <= 86400:
            state["heartbeat_interval"] = float(interval)
        else:
            state["heartbeat_interval"] = self.identity.heartbeat_interval
        self.state = state
        self.desired_version = desired.version
        apps = wanted_apps(wanted)
        functions = wanted_functions(wanted)
        self.outbox.set("state", state)
        self.outbox.set("desired_version", desired.version)
        self.outbox.set("apps_wanted", {name: app._asdict() for name, app in apps.items()})
        self.outbox.set(FUNCTIONS_KEY, {name: {"version": v} for name, v in functions.items()})
        self._want_apps(apps)
        self._want_functions(functions)
        self._report()
        log.info("applied desired state version %s", desired.version)

    def _want_apps(self, apps: dict[str, WantedApp]) -> None:
        """Hand the wanted apps to the reconciler, starting it (and the supervisor) the
        first time a device has apps: one without apps never loads that machinery."""
        if self.apps is not None:
            self.apps.want(apps)
        elif apps or any((self.data_dir / "apps").glob("*/current")):
            self._tasks.append(asyncio.create_task(self._run_apps(apps), name="apps"))

    async def _run_apps(self, apps: dict[str, WantedApp]) -> None:
        from roost.agent.appevents import AppEvents
        from roost.agent.apps import AppReconciler
        from roost.agent.supervisor import Supervisor

        def status_changed(name: str, _status: object) -> None:
            if self.apps is not None:
                self.apps.supervisor_changed(name)

        # The events sockets close after the apps have stopped.
        async with (
            AppEvents(self.settings, self._event_stored) as events,
            Supervisor(on_change=status_changed) as sup,
        ):
            self.apps = AppReconciler(
                self.settings,
                self._catalog_fetch,
                sup,
                self.outbox,
                self._apps_changed,
                reported=self.state.get("apps") or {},
                stop_agent=self.stop,
                events=events,
            )
            self.apps.want(apps)
            await self.apps.run()

    def _event_stored(self) -> None:
        """An app's event is in the outbox (and the edge functions' inbox)."""
        self._wake_outbox.set()
        if self.edge is not None:
            self.edge.wake()

    def _want_functions(self, functions: dict[str, int]) -> None:
        """Hand the wanted edge functions over, starting their machinery the first time
        the device is given one; a device without any never loads it."""
        if self.edge is not None:
            self.edge.want(functions)
        elif functions:
            self._tasks.append(asyncio.create_task(self._run_functions(functions), name="fns"))
        else:
            self.outbox.set(EDGE_FEED, False)

    async def _run_functions(self, functions: dict[str, int]) -> None:
        from roost.agent.edgefns import EdgeFunctions, catalog_download

        self.edge = EdgeFunctions(
            self.settings,
            self.outbox,
            catalog_download(self.data_dir, self._catalog_fetch),
            self.device_id,
            on_sent=self._wake_outbox.set,
            on_change=self._functions_changed,
        )
        self.edge.want(functions)
        await self.edge.run()

    def _functions_changed(self) -> None:
        """An edge function was installed, refused or let go: report it."""
        if self.edge is None:
            return
        report = self.edge.report()
        if report != self.state.get("functions"):
            self.state = {**self.state, "functions": report}
            self.outbox.set("state", self.state)
            self._report()

    def _confirm_self_update(self) -> None:
        """This agent runs a new version of itself on trial, and it is online: the hub
        acknowledged what it sent after its birth. Keep this version, and say so."""
        self._on_trial = False
        if selfupdate.confirm(self.data_dir):
            self._apps_changed()

    def _apps_changed(self) -> None:
        """An app started, stopped, turned unhealthy or was updated: report it."""
        if self.apps is None:
            return
        report = self.apps.report()
        if report != self.state.get("apps"):
            self.state = {**self.state, "apps": report}
            self.outbox.set("state", self.state)
            self._report()

    def _hub_call(self) -> tuple[str, ssl.SSLContext, Signer]:
        """The hub's URL, its pinned TLS and a signer with the current device key."""
        from roost.agent import hubapi

        signer = hubapi.device_signer(self.device_id, self.store.key_pem())
        context = hubapi.verified_context(self.store.ca_path.read_text())
        return self.identity.hub_url, context, signer

    def _catalog_fetch(self) -> HubFetch:
        """GETs of the tenant's signed catalog, signed with the current device key."""
        from roost.agent import hubapi
        from roost.agent.updates import hub_fetch

        signer = hubapi.device_signer(self.device_id, self.store.key_pem())
        context = hubapi.verified_context(self.store.ca_path.read_text())
        return hub_fetch(self.identity.hub_url, context, signer)

    async def _app_logs(self, args: dict[str, Any]) -> Any:
        if self.apps is None:
            raise RoostError("apps are not running yet")
        lines = int(args.get("lines", 100))
        return {"lines": self.apps.tail(str(args.get("app", "")), lines)}

    def _report(self) -> None:
        body = {"desired_version": self.desired_version, "state": self.state}
        self.outbox.put(Up.REPORTED, body, time.time())
        self._wake_outbox.set()

    async def _run_command(self, command: Command) -> None:
        if command.deadline and time.time() > command.deadline:
            reply = {"id": command.id, "ok": False, "error": "the command's deadline had passed"}
        else:
            try:
                result = await self.commands.run(command.name, command.args)
                reply = {"id": command.id, "ok": True, "result": result}
            except UnknownCommandError as err:
                reply = {"id": command.id, "ok": False, "error": str(err)}
            except (RoostError, ValueError, TypeError, OSError) as err:
                reply = {"id": command.id, "ok": False, "error": f"{command.name} failed: {err}"}
        self.outbox.put(Up.REPLY, reply, time.time())
        self._wake_outbox.set()

    async def _reload_config(self, _args: dict[str, Any]) -> Any:
        self.settings = AgentSettings.load(self.data_dir / "settings.toml", data_dir=self.data_dir)
        return {"reloaded": True, "heartbeat_interval": self.heartbeat_interval}

    # -- loops ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        facts.metrics()  # the first CPU reading only starts the measurement
        while True:
            await self.connected.wait()
            metrics = {**facts.metrics(), **self.shares.metrics()}
            beat = Heartbeat(time=time.time(), metrics=metrics)
            self._publish(Up.HEARTBEAT, beat.encode(), qos=0)
            await asyncio.sleep(self.heartbeat_interval)

    async def _outbox_loop(self) -> None:
        # Other processes may add to the outbox, so look now and then even unwoken.
        while True:
            # Not asyncio.wait_for: on 3.11 it swallows a cancel that comes with a wake
            # (a report just before stop), and the agent would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake_outbox.wait()
            self._wake_outbox.clear()
            if not self.connected.is_set():
                continue
            now = time.time()
            due = self.outbox.due(now, self.settings.resend_after_s, self.settings.outbox_batch)
            sent = []
            for item in due:
                payload = _encode_outbox(Up(item.kind), item.seq, item.body)
                if not self._publish(Up(item.kind), payload, qos=1):
                    break
                sent.append(item.seq)
            self.outbox.mark_sent(sent, now)
            if len(due) == self.settings.outbox_batch:
                self._wake_outbox.set()

    async def _scrub_loop(self) -> None:
        """Re-hash the shares now and then; the first scrub anywhere in the first interval,
        then every interval ±10 %, so a fleet started together does not scrub together."""
        wait = random.uniform(0, self.settings.storage_scrub_interval_s)
        while True:
            await asyncio.sleep(wait)
            wait = self.settings.storage_scrub_interval_s * random.uniform(0.9, 1.1)
            try:
                found = await self.shares.scrub()
            except Exception:
                log.exception("scrubbing shares failed")
                continue
            for share_id, problem in found.items():
                log.warning("scrub: share %s is %s; reported to the hub", share_id, problem)

    async def _renew_loop(self) -> None:
        from roost.agent import enroll

        while True:
            identity = self.identity
            lifetime = identity.not_after - identity.not_before
            renew_at = identity.not_after - lifetime * self.settings.renew_at_fraction
            await asyncio.sleep(max(0.0, renew_at - time.time()))
            try:
                # Blocking HTTPS and key generation: keep them off the event loop.
                self.identity = await asyncio.to_thread(enroll.renew, self.store)
                self._tls.load_cert_chain(self.store.pem_path)
                log.info(
                    "renewed the certificate; valid until %s", time.ctime(self.identity.not_after)
                )
            except RoostError as err:
                retry = min(300.0, max(1.0, (identity.not_after - time.time()) / 10))
                log.warning("certificate renewal failed (%s); retrying in %.0fs", err, retry)
                await asyncio.sleep(retry)


def stored_apps(raw: Any) -> dict[str, WantedApp]:
    """The wanted apps as the outbox keeps them, ``{name: {"version", "apply"}}``; agents
    before ``apply`` kept ``{name: version}``."""
    if not isinstance(raw, dict):
        return {}
    entries = {n: {"version": e} if isinstance(e, str) else e for n, e in raw.items()}
    return wanted_apps({"apps": entries})


def _encode_outbox(kind: Up, seq: int, body: dict[str, Any]) -> bytes:
    """Outbox bodies are stored without their seq; it is added as they leave."""
    if kind == Up.EVENT:
        return Event(seq=seq, event=body["event"]).encode()
    if kind == Up.REPORTED:
        return Reported(seq=seq, **body).encode()
    return Reply(seq=seq, **body).encode()
