"""``roost sim``: many light virtual devices in one process, over the real protocol.

Each virtual device has its own key and certificate (enrolled through ``/v1/enroll``,
cached in the data dir so later runs reuse it), its own TLS context and its own MQTT
connection to the hub's broker, with client id = device id. It publishes a birth per
connection (with a fresh epoch, and a last will saying that epoch went offline),
heartbeats at the interval with a random phase, answers ``ping`` commands through an
in-memory outbox that resends until the hub acknowledges, and applies desired state by
reporting it. When the desired state names apps, the device fetches and verifies them
from the hub's signed catalog as an agent would (``roost.sim.updates``, a bounded pool of
threads) and reports them running. What a device says is decided in
``roost.sim.device``; this module is the shell: sockets, TLS, timers, threads for TUF,
progress and the clean stop.

The run writes ``status.json`` in the data dir at every phase change (and the final
figures at the end), so a benchmark can follow it without scraping the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import random
import resource
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from roost.atomic import write_atomic
from roost.errors import ConfigError, WireError
from roost.sim.apps import Outcome
from roost.sim.device import Publication, VirtualDevice
from roost.sim.store import IdentityCache
from roost.sim.updates import UPDATE_WORKERS, FleetUpdates

log = logging.getLogger("roost.sim")

# TLS handshakes in flight at once: the broker's accept queue and both CPUs stay sane.
CONNECT_CONCURRENCY = 200
CONNECT_TIMEOUT_S = 30.0
CONNECT_ATTEMPTS = 5
KEEPALIVE_S = 60
# asyncio's TLS transport reads into a 256 KiB buffer per connection (2.5 GB for 10k
# devices); one TLS record is at most 16 KiB, so that is all a device needs.
TLS_READ_BUFFER = 16 * 1024
STOP_TIMEOUT_S = 30.0
# A fetch the hub did not answer is tried again after this, doubling up to the cap.
UPDATE_RETRY_S = 2.0
UPDATE_RETRY_MAX_S = 60.0
SIM_LABELS = {"simulated": "true"}


@dataclass
class Figures:
    """What a run did; written to ``status.json`` and summed up in the last line."""

    phase: str = "starting"
    devices: int = 0
    enrolled: int = 0
    enroll_s: float = 0.0
    connected: int = 0
    connect_failed: int = 0
    connect_s: float = 0.0
    online: int = 0
    heartbeats: int = 0
    commands: int = 0
    reported: int = 0
    disconnects: int = 0
    malformed: int = 0
    # Apps: releases verified, refused for good, and fetches that will be tried again.
    apps_verified: int = 0
    apps_failed: int = 0
    apps_retried: int = 0
    # What the hub answered for /v1/tuf/ (any status), and requests it did not answer.
    tuf_metadata_requests: int = 0
    tuf_target_requests: int = 0
    tuf_unanswered: int = 0
    tuf_bytes: int = 0
    run_s: float = 0.0
    heartbeats_per_s: float = 0.0
    started_at: float = field(default_factory=time.time)


class StatusFile:
    def __init__(self, path: Path, figures: Figures) -> None:
        self.path = path
        self.figures = figures

    def write(self, phase: str | None = None) -> None:
        if phase is not None:
            self.figures.phase = phase
        write_atomic(self.path, json.dumps(asdict(self.figures), indent=2))


class SimLink:
    """One virtual device's MQTT connection (gmqtt) around its ``VirtualDevice``."""

    def __init__(self, fleet: Fleet, device: VirtualDevice, pem_path: Path, data_dir: Path) -> None:
        self.fleet = fleet
        self.device = device
        self.pem_path = pem_path
        self.data_dir = data_dir
        self.online = False
        self.scheduled = False
        self.client: Any = None
        self._tls: ssl.SSLContext | None = None
        self._failures = 0

    def tls(self) -> ssl.SSLContext:
        # Made on first connect and kept: building one costs ~1 ms of CPU (OpenSSL 3).
        if self._tls is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cadata=self.fleet.ca_pem)
            context.load_cert_chain(self.pem_path)
            self._tls = context
        return self._tls

    def _new_client(self) -> Any:
        from gmqtt import Client, Message

        will = self.device.will(time.time_ns() // 1000)
        client = Client(
            self.device.device_id,
            clean_session=True,
            will_message=Message(will.topic, will.payload, qos=will.qos),
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.set_config({"reconnect_retries": -1, "reconnect_delay": self._backoff()})
        return client

    def _backoff(self) -> float:
        return random.uniform(0.5, min(30.0, 0.5 * 2 ** (self._failures + 1)))

    async def connect(self, host: str, port: int) -> None:
        from gmqtt.mqtt.constants import MQTTv50

        tls = self.tls()
        for attempt in range(CONNECT_ATTEMPTS):
            self.client = self._new_client()
            try:
                await asyncio.wait_for(
                    self.client.connect(
                        host, port, ssl=tls, keepalive=KEEPALIVE_S, version=MQTTv50
                    ),
                    CONNECT_TIMEOUT_S,
                )
                return
            except (OSError, ssl.SSLError, TimeoutError, Exception) as err:
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                log.debug("%s: connect failed (%s); retrying", self.device.device_id, err)
                with contextlib.suppress(Exception):
                    await self.client.disconnect()
                self._failures += 1
                await asyncio.sleep(self._backoff())

    def publish(self, items: list[Publication]) -> None:
        client = self.client
        if client is None or not self.online:
            return
        for item in items:
            client.publish(item.topic, item.payload, qos=item.qos)

    def _on_connect(self, client: Any, _flags: int, _rc: int, _props: Any) -> None:
        self._failures = 0
        client.subscribe(self.device.down_filter, qos=1)
        self.online = True
        self.publish(self.device.connected(time.time()))
        self.fleet.came_online(self)

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        try:
            out = self.device.receive(topic, payload, time.time())
        except WireError as err:
            self.fleet.figures.malformed += 1
            log.debug("%s ignored a message: %s", self.device.device_id, err)
            return 0
        self.publish(out)
        self.fleet.answered(self, out)
        self.fleet.update(self)
        return 0

    def _on_disconnect(self, client: Any, _packet: Any, _exc: Any = None) -> None:
        if self.online:
            self.online = False
            self.fleet.went_offline(self)
        self._failures += 1
        # gmqtt reconnects by itself, with the will it holds at CONNECT time: give the
        # next connection its own epoch, and a jittered delay so a fleet spreads out.
        will = self.device.will(time.time_ns() // 1000)
        from gmqtt import Message

        client._will_message = Message(will.topic, will.payload, qos=will.qos)
        client.reconnect_delay = self._backoff()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if self.online:
            goodbye = self.device.goodbye()
            with contextlib.suppress(Exception):
                client.publish(goodbye.topic, goodbye.payload, qos=goodbye.qos)
        self.online = False
        with contextlib.suppress(Exception):
            await client.disconnect()


class Fleet:
    """The virtual devices of this process, their heartbeat schedule and outbox resends."""

    def __init__(
        self,
        cache: IdentityCache,
        device_ids: list[str],
        heartbeat: float,
        figures: Figures,
        seed: int | None = None,
        update_workers: int = UPDATE_WORKERS,
    ) -> None:
        hub = cache.hub
        if hub is None or not hub.mqtt_port:
            raise ConfigError(f"{cache.directory} does not say where the hub's broker is")
        self.host, self.port = hub.mqtt_host, hub.mqtt_port
        self.ca_pem = cache.ca_path.read_text()
        self.figures = figures
        self._rng = random.Random(seed)
        now = time.time()
        self.links = [
            SimLink(
                self,
                VirtualDevice(d, i, heartbeat, self._rng, now),
                cache.pem_path(d),
                cache.device_dir(d),
            )
            for i, d in enumerate(device_ids)
        ]
        self._beats: list[tuple[float, int, SimLink]] = []
        self._wake = asyncio.Event()
        self._with_outbox: set[SimLink] = set()
        self.updates = FleetUpdates(hub.hub_url, self.ca_pem, figures, update_workers)
        self._updating: dict[SimLink, asyncio.Task[None]] = {}

    # -- events from the links -----------------------------------------------------------

    def came_online(self, link: SimLink) -> None:
        self.figures.online += 1
        if not link.scheduled:
            link.scheduled = True
            loop = asyncio.get_running_loop()
            due = loop.time() + self._rng.uniform(0, link.device.heartbeat_interval)
            heapq.heappush(self._beats, (due, link.device.index, link))
            self._wake.set()
        if len(link.device.outbox):
            self._with_outbox.add(link)

    def went_offline(self, _link: SimLink) -> None:
        self.figures.online -= 1
        self.figures.disconnects += 1

    def answered(self, link: SimLink, out: list[Publication]) -> None:
        for item in out:
            if item.topic.endswith("/reply"):
                self.figures.commands += 1
            elif item.topic.endswith("/reported"):
                self.figures.reported += 1
        if len(link.device.outbox):
            self._with_outbox.add(link)

    def update(self, link: SimLink) -> None:
        """Fetch the releases the device wants now, unless it is at it already."""
        if link in self._updating or not link.device.app_fetches():
            return
        self._updating[link] = asyncio.get_running_loop().create_task(self._update(link))

    async def _update(self, link: SimLink) -> None:
        device, retries = link.device, 0
        try:
            while fetches := device.app_fetches():
                outcomes = await self.updates.fetch(
                    device.device_id, link.pem_path, link.data_dir, fetches
                )
                out = device.apps_fetched(outcomes, time.time())
                link.publish(out)
                self.answered(link, out)
                self._count(device.device_id, outcomes)
                if any(o.error is not None and not o.final for o in outcomes):
                    retries += 1
                    delay = min(UPDATE_RETRY_S * 2 ** (retries - 1), UPDATE_RETRY_MAX_S)
                    await asyncio.sleep(random.uniform(delay / 2, delay))
        except Exception:
            log.exception("%s: fetching its apps failed", device.device_id)
        finally:
            del self._updating[link]

    def _count(self, device_id: str, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.error is None:
                self.figures.apps_verified += 1
            elif outcome.final:
                self.figures.apps_failed += 1
                log.warning("%s %s: %s", device_id, outcome.name, outcome.error)
            else:
                self.figures.apps_retried += 1

    # -- phases --------------------------------------------------------------------------

    async def connect_all(self, on_done: Any) -> None:
        """Connect every device, ``CONNECT_CONCURRENCY`` handshakes at a time."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(link: SimLink) -> None:
            async with gate:
                try:
                    await link.connect(self.host, self.port)
                    self.figures.connected += 1
                except Exception as err:
                    self.figures.connect_failed += 1
                    why = str(err) or type(err).__name__
                    log.warning("%s could not connect: %s", link.device.device_id, why)
                on_done()

        await asyncio.gather(*(one(link) for link in self.links))

    async def heartbeats(self) -> None:
        """Each device beats at its own interval, at a phase of its own."""
        loop = asyncio.get_running_loop()
        beats = self._beats
        while True:
            now = loop.time()
            wall = time.time()
            sent = 0
            while beats and beats[0][0] <= now:
                due, index, link = heapq.heappop(beats)
                if not link.online:
                    link.scheduled = False
                    continue
                link.publish([link.device.heartbeat(wall)])
                sent += 1
                interval = link.device.heartbeat_interval
                # Behind by more than an interval (an overloaded machine): skip, not burst.
                nxt = due + interval if due + interval > now else now + interval
                heapq.heappush(beats, (nxt, index, link))
            self.figures.heartbeats += sent
            self._wake.clear()
            delay = beats[0][0] - loop.time() if beats else 1.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))

    async def resend(self) -> None:
        """Outbox messages the hub has not acknowledged go again."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for link in list(self._with_outbox):
                if not len(link.device.outbox):
                    self._with_outbox.discard(link)
                elif link.online:
                    link.publish(link.device.resend(now))

    async def close_all(self) -> None:
        self.updates.close()
        for task in list(self._updating.values()):
            task.cancel()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(link: SimLink) -> None:
            async with gate:
                await link.close()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(one(link) for link in self.links)), STOP_TIMEOUT_S
            )


# -- the command -------------------------------------------------------------------------


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft limit on open files as far as the hard limit allows; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def run_sim(
    config: Path | None, devices: int, data: Path, heartbeat: float, duration: float
) -> None:
    """Enroll what is missing, connect ``devices`` virtual devices, run, stop cleanly."""
    if devices < 1:
        raise ConfigError("--devices must be at least 1")
    if not 0.1 <= heartbeat <= 86400:
        raise ConfigError("--heartbeat must be between 0.1 and 86400 seconds")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.CRITICAL)
    limit = raise_open_files_limit(devices + 256)
    if devices + 64 > limit:
        log.warning("only %s open files allowed; some of %s devices will fail", limit, devices)
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    from roost.sim.run import SimRun

    SimRun(config, devices, data, heartbeat, duration).run()
    sys.stdout.flush()
