"""The hub⇄agent messages: frozen values, JSON on the wire, validated on decode.

Pure: encoding and decoding only, no sockets and no clock (times are passed in). The
agent imports this module, so it stays on the standard library (no pydantic).

Delivery: heartbeats are QoS 0 and latest-wins. Reported state, command replies and
events go through the agent's outbox; each carries the outbox ``seq`` and stays in the
outbox until the hub answers with an ``Ack`` naming it, so a broker crash or a hub
restart loses nothing (at least once; the hub's writes are idempotent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Self

from roost.errors import WireError

JSON = dict[str, Any]


def _load(payload: bytes, max_bytes: int) -> JSON:
    if len(payload) > max_bytes:
        raise WireError(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError) as err:  # ValueError covers bad UTF-8 and JSON
        raise WireError(f"payload is not JSON: {str(err)[:200]}") from err
    if not isinstance(value, dict):
        raise WireError("payload is not a JSON object")
    return value


def _get(obj: JSON, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise WireError(f"field {key!r} is missing")
        return default
    value = obj[key]
    # bool is an int in Python; a number field must not take true/false.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise WireError(f"field {key!r} has the wrong type")
    if not isinstance(value, kind):
        raise WireError(f"field {key!r} has the wrong type")
    return value


def _number(obj: JSON, key: str, default: Any = ...) -> float:
    value = _get(obj, key, (int, float), default)
    try:
        return float(value)
    except OverflowError as err:
        raise WireError(f"field {key!r} is out of range") from err


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise WireError(f"{what} must map strings to strings")
    return dict(value)


class _Message:
    def encode(self) -> bytes:
        # Field values are JSON values already: read them as they are. ``asdict`` deep-copied
        # every nested dict and list first, the biggest cost of a heartbeat at 10k/s.
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return json.dumps(values, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Birth(_Message):
    """Sent on every connect. ``epoch`` orders connections of the same device."""

    epoch: int
    agent_version: str
    inventory: JSON
    labels: dict[str, str]
    desired_version: int = 0

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        return cls(
            epoch=_get(obj, "epoch", int),
            agent_version=_get(obj, "agent_version", str)[:64],
            inventory=_get(obj, "inventory", dict),
            labels=_str_map(_get(obj, "labels", dict, {}), "labels"),
            desired_version=_get(obj, "desired_version", int, 0),
        )


@dataclass(frozen=True, slots=True)
class Status(_Message):
    """The last will: the connection of ``epoch`` is gone."""

    online: bool
    epoch: int

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        return cls(online=_get(obj, "online", bool), epoch=_get(obj, "epoch", int))


@dataclass(frozen=True, slots=True)
class Heartbeat(_Message):
    """Metrics, sent every heartbeat interval (QoS 0)."""

    time: float
    metrics: dict[str, float | list[float]]

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        metrics = _get(obj, "metrics", dict)
        for key, value in metrics.items():
            ok = _is_number(value) or (isinstance(value, list) and all(map(_is_number, value)))
            if not ok:
                raise WireError(f"metric {key!r} is not a number")
        return cls(time=_number(obj, "time"), metrics=metrics)


@dataclass(frozen=True, slots=True)
class Reported(_Message):
    """The agent's reported twin state after applying ``desired_version``."""

    seq: int
    desired_version: int
    state: JSON

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        return cls(
            seq=_get(obj, "seq", int),
            desired_version=_get(obj, "desired_version", int),
            state=_get(obj, "state", dict),
        )


@dataclass(frozen=True, slots=True)
class Reply(_Message):
    """A command's answer: ``result`` when ``ok``, else ``error``."""

    seq: int
    id: str
    ok: bool
    result: Any = None
    error: str = ""

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        return cls(
            seq=_get(obj, "seq", int),
            id=_get(obj, "id", str)[:64],
            ok=_get(obj, "ok", bool),
            result=obj.get("result"),
            error=str(_get(obj, "error", str, ""))[:2000],
        )


CLOUDEVENT_REQUIRED = ("id", "source", "type")


@dataclass(frozen=True, slots=True)
class Event(_Message):
    """A CloudEvents 1.0 event (structured JSON form) travelling through the outbox."""

    seq: int
    event: JSON

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        event = _get(obj, "event", dict)
        for key in CLOUDEVENT_REQUIRED:
            if not isinstance(event.get(key), str) or not event[key]:
                raise WireError(f"event field {key!r} is missing")
        return cls(seq=_get(obj, "seq", int), event=event)


@dataclass(frozen=True, slots=True)
class Desired(_Message):
    """The desired twin state, retained on the device's ``down/desired`` topic."""

    version: int
    state: JSON

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        return cls(version=_get(obj, "version", int), state=_get(obj, "state", dict))


@dataclass(frozen=True, slots=True)
class Command(_Message):
    """A command request; the agent answers with a ``Reply`` of the same ``id``."""

    id: str
    name: str
    args: JSON = field(default_factory=dict)
    deadline: float = 0.0

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        return cls(
            id=_get(obj, "id", str),
            name=_get(obj, "name", str),
            args=_get(obj, "args", dict, {}),
            deadline=_number(obj, "deadline", 0.0),
        )


@dataclass(frozen=True, slots=True)
class Ack(_Message):
    """Outbox sequence numbers the hub has stored for good."""

    seqs: list[int]

    @classmethod
    def decode(cls, payload: bytes, max_bytes: int) -> Self:
        obj = _load(payload, max_bytes)
        seqs = _get(obj, "seqs", list)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seqs):
            raise WireError("ack seqs must be integers")
        return cls(seqs=seqs)
