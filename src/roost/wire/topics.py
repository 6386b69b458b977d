"""The MQTT topic table: the one place that knows how topics are spelled.

Devices publish under ``roost/v1/d/{device}/up/{kind}`` and receive under
``roost/v1/d/{device}/down/{kind}``; the broker's ACL lets a device write only its own
``up`` and read only its own ``down``. Pure: no I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from roost.errors import WireError

PREFIX = "roost/v1/d"
# Device ids are made by the hub: "d" + 20 lowercase base32 characters.
DEVICE_ID_RE = re.compile(r"d[a-z2-7]{20}")
# The hub's own MQTT identity; it can never be a device id.
HUB_IDENTITY = "roost-hub"


class Up(enum.StrEnum):
    """What a device sends."""

    BIRTH = "birth"  # on every connect: epoch, inventory, labels
    STATUS = "status"  # last will: offline
    HEARTBEAT = "hb"  # metrics, QoS 0, latest wins
    REPORTED = "reported"  # outbox: reported twin state
    REPLY = "reply"  # outbox: a command's answer
    EVENT = "event"  # outbox: a CloudEvent from the device or its apps


class Down(enum.StrEnum):
    """What the hub sends to a device."""

    DESIRED = "desired"  # retained
    COMMAND = "cmd"
    ACK = "ack"  # outbox sequence numbers the hub has stored
    MESSAGE = "msg"  # a rule's publish action: a payload for the device (JSON)


OUTBOX_KINDS = frozenset({Up.REPORTED, Up.REPLY, Up.EVENT})
# Built once: ``parse`` runs for every message the hub receives.
_KINDS = {"up": frozenset(k.value for k in Up), "down": frozenset(k.value for k in Down)}


def is_device_id(value: str) -> bool:
    return DEVICE_ID_RE.fullmatch(value) is not None


def up(device_id: str, kind: Up) -> str:
    return f"{PREFIX}/{device_id}/up/{kind}"


def down(device_id: str, kind: Down) -> str:
    return f"{PREFIX}/{device_id}/down/{kind}"


def device_down_filter(device_id: str) -> str:
    """What an agent subscribes to."""
    return f"{PREFIX}/{device_id}/down/+"


# What the hub subscribes to (a shared subscription when several hubs run).
HUB_UP_FILTER = f"{PREFIX}/+/up/+"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    device_id: str
    direction: str
    kind: str


def parse(topic: str) -> ParsedTopic:
    """Split a Roost topic; anything else is a ``WireError``."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:3]) != PREFIX or parts[4] not in ("up", "down"):
        raise WireError(f"not a Roost topic: {topic[:120]!r}")
    device_id, direction, kind = parts[3], parts[4], parts[5]
    if not is_device_id(device_id):
        raise WireError(f"bad device id in topic: {device_id[:40]!r}")
    if kind not in _KINDS[direction]:
        raise WireError(f"unknown {direction} message kind {kind[:40]!r}")
    return ParsedTopic(device_id, direction, kind)
