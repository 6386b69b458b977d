"""The kinds of action a rule can take, and the fields each one has.

Declarations only: ``roost.rules.spec`` checks a rules file against them, and
``roost.rules.engine`` renders an action's templates when its rule fires. Delivering an
action (HTTP, SMTP, MQTT, a device command, a function, a new event) is the shell's job,
through the durable outbox; what the engine hands over is a ``RenderedAction``.

Field types:

- ``text``: a string, templates allowed;
- ``texts``: one string or a list of them (e-mail addresses), templates allowed;
- ``payload``: any YAML value, templates allowed in its strings, a lone placeholder keeps
  its value's JSON type;
- ``headers``: a map of strings to strings, templates allowed in the values;
- ``name``: a plain name without templates (a secret, a function);
- ``duration``: ``500ms``, ``10s``, ``2m`` ... within the field's bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEXT, TEXTS, PAYLOAD, HEADERS, NAME, DURATION = (
    "text",
    "texts",
    "payload",
    "headers",
    "name",
    "duration",
)


@dataclass(frozen=True)
class Field:
    type: str
    required: bool = False
    default: Any = None
    bounds: tuple[float, float] = (0.0, 0.0)  # seconds, for durations


# The whole event, for payloads left out: what a receiver most often wants.
_EVENT = "{{ event }}"

KINDS: Mapping[str, Mapping[str, Field]] = {
    # HTTP POST of ``body`` (JSON), signed with HMAC-SHA256 under the named secret.
    "webhook": {
        "url": Field(TEXT, required=True),
        "body": Field(PAYLOAD, default=_EVENT),
        "headers": Field(HEADERS, default={}),
        "secret": Field(NAME, default=""),
        "timeout": Field(DURATION, default=10.0, bounds=(0.1, 60.0)),
    },
    "email": {
        "to": Field(TEXTS, required=True),
        "cc": Field(TEXTS, default=[]),
        "subject": Field(TEXT, required=True),
        "body": Field(TEXT, default=""),
    },
    # To an MQTT topic outside Roost's own ``roost/`` tree, or to the devices a selector picks.
    "publish": {
        "topic": Field(TEXT, default=""),
        "devices": Field(TEXT, default=""),
        "payload": Field(PAYLOAD, default=_EVENT),
    },
    "command": {
        "device": Field(TEXT, default="{{ device }}"),
        "name": Field(TEXT, required=True),
        "args": Field(PAYLOAD, default={}),
        "timeout": Field(DURATION, default=30.0, bounds=(1.0, 600.0)),
    },
    "invoke": {
        "function": Field(NAME, required=True),
        "input": Field(PAYLOAD, default=_EVENT),
    },
    # A new event; its source is the rule (``roost://rules/<id>``).
    "emit": {
        "type": Field(TEXT, required=True),
        "subject": Field(TEXT, default=""),
        "data": Field(PAYLOAD, default=None),
    },
}


@dataclass(frozen=True)
class RenderedAction:
    """One action of a firing, its templates filled in, ready for the outbox.

    ``key`` is the idempotency key: the same event, rule and action always give the same
    key, so a receiver (or the outbox) can drop a second delivery.
    """

    kind: str
    key: str
    fields: Mapping[str, Any]
