"""The hub's composition root: settings, database, identity, broker, link and loops.

``Hub.start`` runs at application start-up (FastAPI lifespan) and ``Hub.stop`` at
shutdown, so the managed broker never outlives the hub that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm.exc import StaleDataError

from roost.access.service import ensure_default_tenant
from roost.atomic import write_private
from roost.catalog.models import AppRelease
from roost.catalog.repository import Catalog
from roost.db import Database, utcnow
from roost.errors import BrokerError
from roost.events import schedules
from roost.events.store import expire_events, hub_event, insert_events, when_stored
from roost.fleet import service as fleet
from roost.fleet.ingest import Batch, FlushResult, Ingest
from roost.fleet.models import CommandRow, Device
from roost.functions import edge
from roost.functions.runtime import Functions
from roost.hub import identity as hub_identity
from roost.hub.broker import ManagedBroker
from roost.hub.database import migrate
from roost.hub.link import HubLink, client_tls
from roost.rollouts import service as rollouts
from roost.rules.delivery import Delivery
from roost.rules.runner import RuleRunner
from roost.rules.secrets import SecretStore
from roost.settings import HubSettings
from roost.storage.upkeep import repair_loop
from roost.wire import Ack, Command, Desired, Reply, topics
from roost.wire.topics import Down

log = logging.getLogger("roost.hub")

# Heartbeats (and nothing else) are written at most this often.
HEARTBEAT_FLUSH_S = 1.0
# The longest pause between two writes of device messages (see _flush_loop).
FLUSH_GAP_MAX_S = 0.02
# How often the catalog's TUF metadata is checked for re-signing (its timestamp lives a day).
CATALOG_REFRESH_S = 600.0
# Running rollouts are stepped this often; finished ones (which only admit devices that
# join their selector later) every ROLLOUT_IDLE_STEPS steps.
ROLLOUT_STEP_S = 1.0
# How often events past the retention are deleted.
RETENTION_CHECK_S = 3600.0
# How often schedules are checked (cron's resolution is a minute).
SCHEDULE_CHECK_S = 1.0
# How often edge functions are placed again on the devices their selectors pick.
EDGE_FUNCTIONS_S = 5.0
ROLLOUT_IDLE_STEPS = 10


def public_host(settings: HubSettings) -> str:
    if settings.public_host:
        return settings.public_host
    if settings.listen_host not in ("0.0.0.0", "::", ""):
        return settings.listen_host
    return socket.gethostname()


def client_config_text(hub_url: str, ca_file: str, token: str) -> str:
    return f'hub_url = "{hub_url}"\nca_file = "{ca_file}"\ntoken = "{token}"\n'


class Hub:
    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.host = public_host(settings)
        self.url = f"https://{self.host}:{settings.listen_port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = hub_identity.load_or_create(
            self.data_dir / "pki", self.host, settings.server_cert_ttl_s
        )
        self.ca = self.identity.ca
        self.db = Database(settings.database)
        self.ingest = Ingest(settings.max_payload_bytes, settings.max_twin_bytes)
        self.catalog = Catalog(self.data_dir)
        self.broker: ManagedBroker | None = None
        self.link: HubLink | None = None
        self.first_token: str | None = None
        self.started_at = time.time()
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_wanted = asyncio.Event()
        self._flush_soon = asyncio.Event()
        self._link_up_since = 0.0
        self._revocation_lock = asyncio.Lock()
        # The outbox of rules' actions; ``self.delivery.notify()`` when rows are due.
        self.delivery = Delivery(
            self.db,
            settings,
            SecretStore.open(self.data_dir),
            self.send_command,
            self.publish_message,
        )
        self.rules = RuleRunner(self.db)
        # Functions run in warm workers that never see the data dir.
        self.functions = Functions(self.db, settings, hidden=[self.data_dir])
        self.delivery.invoke_function = self.functions.invoke
        self._rules_wanted = asyncio.Event()
        self._unlisten: Callable[[], None] | None = None

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_database)
        mqtt_host, mqtt_port = await self._start_broker()
        tls = client_tls(
            str(self.identity.ca_path),
            str(self.identity.client_cert),
            str(self.identity.client_key),
        )
        self.link = HubLink(mqtt_host, mqtt_port, tls, self._on_message)
        await self.link.start()
        await self.functions.start()
        await self.delivery.start()
        self._link_up_since = time.monotonic()
        # The rules runner wakes as soon as any transaction of this hub stores events.
        running = asyncio.get_running_loop()

        def wake_rules() -> None:
            running.call_soon_threadsafe(self._rules_wanted.set)

        self._unlisten = when_stored(wake_rules)
        for loop in (
            self._flush_loop(),
            self._presence_loop(),
            self._command_expiry_loop(),
            self._catalog_loop(),
            self._rollout_loop(),
            self._retention_loop(),
            self._schedule_loop(),
            self._edge_functions_loop(),
            repair_loop(self),
            self.rules.run(self._rules_wanted, self.delivery.notify),
        ):
            self._spawn(loop)
        log.info("hub ready at %s (mqtt %s:%s)", self.url, mqtt_host, mqtt_port)

    def _prepare_database(self) -> None:
        migrate(self.db)
        with self.db.session() as session:
            self.first_token = ensure_default_tenant(session)
            for device_id, tenant_id, state in session.execute(
                select(Device.id, Device.tenant_id, Device.state)
            ):
                self.ingest.known(device_id, tenant_id if state == "active" else None)
        if self.first_token is not None:
            write_private(
                self.data_dir / "client.toml",
                client_config_text(self.url, str(self.identity.ca_path), self.first_token),
            )

    async def _start_broker(self) -> tuple[str, int]:
        settings = self.settings
        if settings.external_broker:
            host, _, port = settings.external_broker.rpartition(":")
            if not host or not port.isdigit():
                raise BrokerError("external_broker must be host:port")
            return host, int(port)
        self.broker = ManagedBroker(
            self.data_dir / "broker",
            settings.mqtt_port,
            settings.listen_host or "0.0.0.0",
            binary=settings.mosquitto_bin,
            max_packet=settings.max_payload_bytes * 4,
            backoff_max_s=settings.broker_restart_backoff_max_s,
        )
        crl, revoked_ids = await asyncio.to_thread(self._revocation_files)
        identity = self.identity
        self.broker.write_files(
            self.ca.cert_pem,
            identity.server_cert.read_text(),
            identity.server_key.read_bytes(),
            crl,
        )
        self.broker.write_revocations(crl, revoked_ids)
        await self.broker.start()
        connect_host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "") else self.host
        return connect_host, settings.mqtt_port

    def _revocation_files(self) -> tuple[str, list[str]]:
        with self.db.session() as session:
            revoked, ids = fleet.revocations(session)
        return self.ca.crl(revoked), ids

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        await self.delivery.stop()
        await self.functions.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._flush_once()
        if self.link is not None:
            await self.link.stop()
        if self.broker is not None:
            await self.broker.stop()
        self.db.dispose()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    # -- device messages -----------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.ingest.accept(topic, payload):
            self._flush_soon.set()
        self._flush_wanted.set()

    async def _flush_loop(self) -> None:
        # What a device waits for (acknowledgements, presence) is written as soon as the
        # last write is done. Heartbeats alone wait for the heartbeat flush period, so a
        # busy hub writes each device's newest metrics about once a second rather than
        # in dozens of small transactions; whatever arrives meanwhile coalesces.
        loop = asyncio.get_running_loop()
        period = min(HEARTBEAT_FLUSH_S, self.settings.heartbeat_interval_s / 2)
        due = 0.0
        while True:
            await self._flush_wanted.wait()
            if not self._flush_soon.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush_soon.wait(), due - loop.time())
            self._flush_wanted.clear()
            self._flush_soon.clear()
            due = loop.time() + period
            began = loop.time()
            try:
                await self._flush_once()
            except Exception:
                log.exception("writing device messages failed; retrying")
                await asyncio.sleep(1)
            # Let what arrives meanwhile coalesce for as long as the write took (at most
            # FLUSH_GAP_MAX_S): a quiet hub stores an event within milliseconds, a busy
            # one spends at most about half its time opening transactions.
            await asyncio.sleep(min(FLUSH_GAP_MAX_S, loop.time() - began))

    async def _flush_once(self) -> None:
        batch = self.ingest.take()
        if not len(batch):
            return
        result = await asyncio.to_thread(self._write_batch, batch)
        self._publish_results(result)

    def _write_batch(self, batch: Batch) -> FlushResult:
        now = utcnow()
        with self.db.session() as session:
            result = self.ingest.flush(session, batch, now)
            lifecycle = [("online", d) for d in result.went_online] + [
                ("offline", d) for d in result.went_offline
            ]
            if lifecycle:
                self._lifecycle_events(session, lifecycle, now)
        return result

    def _lifecycle_events(
        self, session: Any, changes: list[tuple[str, str]], now: dt.datetime
    ) -> None:
        tenants = dict(
            session.execute(
                select(Device.id, Device.tenant_id).where(Device.id.in_([d for _, d in changes]))
            ).all()
        )
        rows = [
            hub_event(tenants[device_id], f"roost.device.{kind}", device_id, now)
            for kind, device_id in changes
            if device_id in tenants
        ]
        if rows:
            insert_events(session, rows)

    def _publish_results(self, result: FlushResult) -> None:
        if self.link is None:
            return
        for device_id, seqs in result.acks.items():
            self.link.publish(topics.down(device_id, Down.ACK), Ack(seqs=seqs).encode(), qos=1)
        for device_id, desired in result.desired:
            self.publish_desired(device_id, desired)
        for reply in result.replies:
            waiter = self._waiters.get(reply.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)

    def publish_desired(self, device_id: str, desired: Desired) -> None:
        if self.link is not None:
            self.link.publish(topics.down(device_id, Down.DESIRED), desired.encode(), retain=True)

    def publish_message(self, topic: str, payload: bytes) -> None:
        """An MQTT message (QoS 1) for a rule's publish action; BrokerError while offline."""
        if self.link is None or not self.link.connected.is_set():
            raise BrokerError("the hub is not connected to the broker")
        self.link.publish(topic, payload, qos=1)

    # -- presence and commands -----------------------------------------------------------

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, min(5.0, self.settings.heartbeat_interval_s / 2)))
            try:
                await asyncio.to_thread(self._mark_silent_offline)
            except Exception:
                log.exception("presence check failed")

    def _mark_silent_offline(self) -> None:
        """Devices not heard from for a few heartbeat intervals are offline.

        Not while the hub's own link to the broker is down or has just come back: then
        silence says nothing about the devices.
        """
        if self.link is None or not self.link.connected.is_set():
            self._link_up_since = 0.0
            return
        if not self._link_up_since:
            self._link_up_since = time.monotonic()
        listened = time.monotonic() - self._link_up_since
        now = utcnow()
        with self.db.session() as session:
            silent = fleet.silent_devices(
                session,
                now,
                listened,
                self.settings.heartbeat_interval_s,
                self.settings.offline_after_intervals,
            )
            if silent:
                session.execute(update(Device).where(Device.id.in_(silent)).values(online=False))
                self._lifecycle_events(session, [("offline", d) for d in silent], now)

    async def _command_expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(self._expire_commands)
            except Exception:
                log.exception("command expiry failed")

    def _expire_commands(self) -> None:
        with self.db.session() as session:
            session.execute(
                update(CommandRow)
                .where(CommandRow.status == "pending", CommandRow.deadline < utcnow())
                .values(status="timeout", error="the device did not answer in time")
            )

    async def send_command(self, row: CommandRow, timeout: float) -> Reply | None:
        """Publish a stored command and wait for its reply; None on timeout."""
        assert self.link is not None
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters[row.id] = waiter
        try:
            message = Command(
                id=row.id, name=row.name, args=row.args, deadline=row.deadline.timestamp()
            )
            self.link.publish(topics.down(row.device_id, Down.COMMAND), message.encode())
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiters.pop(row.id, None)

    # -- the catalog ---------------------------------------------------------------------

    async def _catalog_loop(self) -> None:
        """Re-sign catalog metadata before it expires, so devices never see it stale."""
        while True:
            try:
                await asyncio.to_thread(self._refresh_catalogs)
            except Exception:
                log.exception("refreshing the catalog's signatures failed")
            await asyncio.sleep(CATALOG_REFRESH_S)

    def _refresh_catalogs(self) -> None:
        with self.db.session() as session:
            tenants = set(session.scalars(select(AppRelease.tenant_id).distinct()))
        for tenant_id in sorted(tenants):
            self.catalog.tenant(tenant_id)  # opened, so that refresh covers it
        for tenant_id in self.catalog.refresh(utcnow()):
            log.info("re-signed the catalog metadata of tenant %s", tenant_id)

    # -- rollouts ------------------------------------------------------------------------

    async def _rollout_loop(self) -> None:
        """Step the rollouts: waves start, pass or halt, devices catch up or roll back."""
        beat = 0
        while True:
            await asyncio.sleep(ROLLOUT_STEP_S)
            statuses = rollouts.LIVE if beat % ROLLOUT_IDLE_STEPS == 0 else ("waiting", "running")
            beat += 1
            try:
                changes = await asyncio.to_thread(self._step_rollouts, statuses)
            except StaleDataError:
                log.info("another hub stepped a rollout at the same time; stepping again")
                continue
            except Exception:
                log.exception("stepping rollouts failed")
                continue
            for device_id, desired in changes:
                self.publish_desired(device_id, desired)

    def _step_rollouts(self, statuses: tuple[str, ...]) -> list[tuple[str, Desired]]:
        with self.db.session() as session:
            return rollouts.step_rollouts(session, utcnow(), statuses)

    # -- events ----------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        """Delete stored events and finished commands older than their retention."""
        kept = (
            ("events", self._expire_events, self.settings.event_retention_days),
            ("finished commands", self._prune_commands, self.settings.command_retention_days),
        )
        while True:
            for what, expire, days in kept:
                try:
                    deleted = await asyncio.to_thread(expire)
                except Exception:
                    log.exception("deleting old %s failed", what)
                    continue
                if deleted:
                    log.info("deleted %d %s past the %g-day retention", deleted, what, days)
            await asyncio.sleep(RETENTION_CHECK_S)

    async def _schedule_loop(self) -> None:
        """Fire the schedules whose time has come."""
        while True:
            await asyncio.sleep(SCHEDULE_CHECK_S)
            try:
                await asyncio.to_thread(self._fire_schedules)
            except Exception:
                log.exception("firing schedules failed")

    async def _edge_functions_loop(self) -> None:
        """Place edge functions on the devices their selectors pick now (labels change)."""
        while True:
            await asyncio.sleep(EDGE_FUNCTIONS_S)
            try:
                changes = await asyncio.to_thread(self._place_edge_functions)
            except Exception:
                log.exception("placing edge functions failed")
                continue
            for device_id, desired in changes:
                self.publish_desired(device_id, desired)

    def _place_edge_functions(self) -> list[tuple[str, Desired]]:
        with self.db.session() as session:
            return [
                change
                for tenant_id in edge.tenants_with_edge_functions(session)
                for change in edge.reconcile(session, tenant_id)
            ]

    def _fire_schedules(self) -> None:
        with self.db.session() as session:
            schedules.fire_due(session, utcnow())

    def _expire_events(self) -> int:
        cutoff = utcnow() - dt.timedelta(days=self.settings.event_retention_days)
        return self.db.delete_in_batches(lambda session: expire_events(session, cutoff))

    def _prune_commands(self) -> int:
        cutoff = utcnow() - dt.timedelta(days=self.settings.command_retention_days)
        return self.db.delete_in_batches(lambda session: fleet.prune_commands(session, cutoff))

    # -- revocation ----------------------------------------------------------------------

    async def apply_revocations(self) -> None:
        """Push the CRL and ACL to the broker and drop the revoked devices' connections."""
        async with self._revocation_lock:
            crl, ids = await asyncio.to_thread(self._revocation_files)
            for device_id in ids:
                self.ingest.known(device_id, None)
            if self.broker is not None:
                self.broker.write_revocations(crl, ids)
                await self.broker.restart()

    def stats(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "mqtt_connected": bool(self.link and self.link.connected.is_set()),
            "broker_restarts": self.broker.restarts if self.broker else 0,
            "messages": dict(self.ingest.stats),
        }
