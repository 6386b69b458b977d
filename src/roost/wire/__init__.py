"""The hub⇄agent contract: topics and messages. Pure, standard library only."""

from roost.wire import topics
from roost.wire.messages import (
    Ack,
    Birth,
    Command,
    Desired,
    Event,
    Heartbeat,
    Reply,
    Reported,
    Status,
)

__all__ = [
    "Ack",
    "Birth",
    "Command",
    "Desired",
    "Event",
    "Heartbeat",
    "Reply",
    "Reported",
    "Status",
    "topics",
]
