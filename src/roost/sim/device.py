"""One virtual device's behaviour on the wire, without I/O.

A ``VirtualDevice`` knows what a real agent would say and when: its birth and last will
for each connection, its heartbeats, how it answers commands, applies desired state and
keeps unacknowledged messages in a small in-memory outbox. It takes events (a new
connection, a message from the hub, the time) and returns what to publish; the driver
in ``roost.sim.fleet`` owns the MQTT client and the clock. No sockets, no clock of its
own, no randomness it was not given.

Apps in the desired state are decided by ``roost.sim.apps``: the device says which
releases to fetch (``app_fetches``); the driver fetches and verifies them and hands the
outcomes back (``apps_fetched``), which the device reports.
"""

from __future__ import annotations

import platform
import random
from dataclasses import dataclass, field
from typing import Any

from roost import __version__
from roost.errors import WireError
from roost.sim.apps import Fetch, Outcome, SimApps
from roost.wire import Ack, Birth, Command, Desired, Heartbeat, Reply, Reported, Status, topics
from roost.wire.apps import wanted_apps
from roost.wire.topics import Down, Up

MAX_DOWN_BYTES = 1024 * 1024
# Unacknowledged outbox messages go again after this, doubling up to the cap.
RESEND_AFTER_S = 5.0
RESEND_MAX_S = 60.0
# A virtual device keeps at most this many unacknowledged messages; the oldest go first.
OUTBOX_MAX = 100


@dataclass(frozen=True, slots=True)
class Publication:
    """One message the driver must publish for the device."""

    topic: str
    payload: bytes
    qos: int


@dataclass(slots=True)
class _Pending:
    kind: Up
    payload: bytes
    sent_at: float
    attempts: int = 1


@dataclass
class MemoryOutbox:
    """Messages the hub must acknowledge; resent with a growing delay until it does."""

    resend_after: float = RESEND_AFTER_S
    max_messages: int = OUTBOX_MAX
    _seq: int = 0
    _pending: dict[int, _Pending] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._pending)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def put(self, seq: int, kind: Up, payload: bytes, now: float) -> None:
        """Keep a message that was just sent (or is to be sent on the next connection)."""
        while len(self._pending) >= self.max_messages:
            del self._pending[min(self._pending)]
        self._pending[seq] = _Pending(kind, payload, now)

    def drop(self, kind: Up) -> None:
        """Forget unacknowledged messages of ``kind`` (a newer one replaces them)."""
        for seq in [s for s, item in self._pending.items() if item.kind == kind]:
            del self._pending[seq]

    def ack(self, seqs: list[int]) -> None:
        for seq in seqs:
            self._pending.pop(seq, None)

    def due(self, now: float) -> list[tuple[Up, bytes]]:
        """Messages to send again now, oldest first; they count as sent."""
        out = []
        for seq in sorted(self._pending):
            item = self._pending[seq]
            wait = min(self.resend_after * 2 ** (item.attempts - 1), RESEND_MAX_S)
            if now - item.sent_at >= wait:
                item.sent_at = now
                item.attempts += 1
                out.append((item.kind, item.payload))
        return out

    def all(self, now: float) -> list[tuple[Up, bytes]]:
        """Everything unacknowledged, for a fresh connection; the delays start over."""
        for item in self._pending.values():
            item.sent_at, item.attempts = now, 1
        return [(self._pending[s].kind, self._pending[s].payload) for s in sorted(self._pending)]


class SimulatedMetrics:
    """Plausible, slowly wandering device metrics (a random walk per device)."""

    def __init__(self, rng: random.Random, booted_at: float) -> None:
        self._rng = rng
        self._booted_at = booted_at
        self._cpu = rng.uniform(2, 40)
        self._memory = rng.uniform(20, 70)
        self.disk = round(rng.uniform(5, 80), 1)

    def read(self, now: float) -> dict[str, float | list[float]]:
        rng = self._rng
        self._cpu = min(100.0, max(0.0, self._cpu + rng.uniform(-4, 4)))
        self._memory = min(99.0, max(5.0, self._memory + rng.uniform(-1, 1)))
        load = round(self._cpu / 50, 2)
        return {
            "cpu": round(self._cpu, 1),
            "memory": round(self._memory, 1),
            "disk": self.disk,
            "load": [load, load, load],
            "uptime": round(now - self._booted_at),
        }


class VirtualDevice:
    """The protocol state of one simulated device. Not thread-safe: one event loop."""

    def __init__(
        self,
        device_id: str,
        index: int,
        heartbeat_interval: float,
        rng: random.Random,
        now: float,
    ) -> None:
        if not topics.is_device_id(device_id):
            raise WireError(f"not a device id: {device_id!r}")
        self.device_id = device_id
        self.index = index
        self.epoch = 0
        self.desired_version = 0
        self.state: dict[str, Any] = {
            "labels": {},
            "config": {},
            "heartbeat_interval": heartbeat_interval,
        }
        self.default_interval = heartbeat_interval
        self.outbox = MemoryOutbox()
        self.metrics = SimulatedMetrics(rng, now - rng.uniform(60, 30 * 86400))
        self.commands_answered = 0
        self.apps = SimApps()
        self._hb_topic = topics.up(device_id, Up.HEARTBEAT)
        self.down_filter = topics.device_down_filter(device_id)

    @property
    def heartbeat_interval(self) -> float:
        return float(self.state["heartbeat_interval"])

    # -- connections ---------------------------------------------------------------------

    def will(self, epoch: int) -> Publication:
        """Start a new connection of ``epoch``: its last will says that one went offline."""
        self.epoch = epoch
        return Publication(
            topics.up(self.device_id, Up.STATUS),
            Status(online=False, epoch=epoch).encode(),
            qos=1,
        )

    def connected(self, now: float) -> list[Publication]:
        """The birth, then every message the hub has not acknowledged yet."""
        birth = Birth(
            epoch=self.epoch,
            agent_version=__version__,
            inventory=self.inventory(),
            labels=dict(self.state["labels"]),
            desired_version=self.desired_version,
        )
        out = [Publication(topics.up(self.device_id, Up.BIRTH), birth.encode(), qos=1)]
        out += [self._up(kind, payload) for kind, payload in self.outbox.all(now)]
        return out

    def goodbye(self) -> Publication:
        """Said before a clean disconnect, which makes the broker drop the last will."""
        return Publication(
            topics.up(self.device_id, Up.STATUS),
            Status(online=False, epoch=self.epoch).encode(),
            qos=1,
        )

    def inventory(self) -> dict[str, Any]:
        return {
            "hostname": f"sim-{self.index:05d}",
            "os": "Roost simulated device",
            "kernel": platform.release(),
            "arch": platform.machine(),
            "cpus": 1 + self.index % 4,
            "memory_bytes": (256 << 20) << (self.index % 4),
            "disk_bytes": (4 << 30) << (self.index % 3),
            "agent_version": __version__,
            "python": platform.python_version(),
            "simulated": True,
        }

    # -- what the device says by itself --------------------------------------------------

    def heartbeat(self, now: float) -> Publication:
        beat = Heartbeat(time=now, metrics=self.metrics.read(now))
        return Publication(self._hb_topic, beat.encode(), qos=0)

    def resend(self, now: float) -> list[Publication]:
        return [self._up(kind, payload) for kind, payload in self.outbox.due(now)]

    # -- what the hub says ---------------------------------------------------------------

    def receive(self, topic: str, payload: bytes, now: float) -> list[Publication]:
        """React to a message on one of our ``down`` topics; raises ``WireError``."""
        parsed = topics.parse(topic)
        if parsed.device_id != self.device_id or parsed.direction != "down":
            raise WireError(f"unexpected topic {topic[:120]}")
        if parsed.kind == Down.ACK:
            self.outbox.ack(Ack.decode(payload, MAX_DOWN_BYTES).seqs)
            return []
        if parsed.kind == Down.DESIRED:
            return self._apply_desired(Desired.decode(payload, MAX_DOWN_BYTES), now)
        return self._answer(Command.decode(payload, MAX_DOWN_BYTES), now)

    def _apply_desired(self, desired: Desired, now: float) -> list[Publication]:
        if desired.version == self.desired_version:
            return []
        wanted = desired.state
        labels = wanted.get("labels", {})
        config = wanted.get("config", {})
        interval = wanted.get("heartbeat_interval")
        self.state = {
            "labels": {str(k): str(v) for k, v in labels.items()}
            if isinstance(labels, dict)
            else {},
            "config": config if isinstance(config, dict) else {},
            "heartbeat_interval": float(interval)
            if isinstance(interval, int | float) and 0.1 <= interval <= 86400
            else self.default_interval,
        }
        self.desired_version = desired.version
        self.apps.want(wanted_apps(wanted), now)
        return [self._report(now)]

    # -- apps ----------------------------------------------------------------------------

    def app_fetches(self) -> list[Fetch]:
        """Releases the driver should download and verify for this device now."""
        return self.apps.fetches()

    def apps_fetched(self, outcomes: list[Outcome], now: float) -> list[Publication]:
        """The driver fetched (or failed to): report what changed."""
        changed = [self.apps.fetched(outcome, now) for outcome in outcomes]
        return [self._report(now)] if any(changed) else []

    def _report(self, now: float) -> Publication:
        state = dict(self.state)
        if len(self.apps):
            state["apps"] = self.apps.report()
        # Only the newest reported state matters: an older one resent after it would
        # undo it at the hub (a real agent's outbox keeps one state, too).
        self.outbox.drop(Up.REPORTED)
        seq = self.outbox.next_seq()
        reported = Reported(seq=seq, desired_version=self.desired_version, state=state)
        return self._outbox(seq, Up.REPORTED, reported.encode(), now)

    def _answer(self, command: Command, now: float) -> list[Publication]:
        seq = self.outbox.next_seq()
        if command.deadline and now > command.deadline:
            reply = Reply(seq, command.id, ok=False, error="the command's deadline had passed")
        elif command.name == "ping":
            result = {"pong": True, "time": now, "agent_version": __version__, "simulated": True}
            reply = Reply(seq, command.id, ok=True, result=result)
        else:
            error = f"unknown command {command.name!r}; this simulated device knows ping"
            reply = Reply(seq, command.id, ok=False, error=error)
        self.commands_answered += 1
        return [self._outbox(seq, Up.REPLY, reply.encode(), now)]

    def _outbox(self, seq: int, kind: Up, payload: bytes, now: float) -> Publication:
        self.outbox.put(seq, kind, payload, now)
        return self._up(kind, payload)

    def _up(self, kind: Up, payload: bytes) -> Publication:
        return Publication(topics.up(self.device_id, kind), payload, qos=1)
