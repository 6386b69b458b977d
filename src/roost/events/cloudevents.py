"""CloudEvents 1.0 in structured JSON form: what Roost accepts from people and programs.

Pure. ``parse_event`` checks one event as ``POST /v1/events`` receives it and returns the
row the event store keeps, or raises one ``ValidationError`` line naming the attribute
at fault. Roost keeps the core attributes (``id``, ``source``, ``type``, ``subject``,
``time``, ``data``); an attribute it would not keep is refused rather than dropped.

Whoever sends an event speaks only for itself: the stored ``source`` is the sender's
(``roost://api/<given source>`` for API callers, ``roost://devices/<id>/...`` for
devices), so nobody can pass an event off as the hub's or a device's.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from roost.errors import ValidationError

API_SOURCE_PREFIX = "roost://api/"
MAX_ID = 128
MAX_SOURCE = 200
MAX_TYPE = 256
MAX_SUBJECT = 256
TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype"}
)


def parse_event(
    raw: Any, tenant_id: str, max_data_bytes: int, now: dt.datetime, where: str = "event"
) -> dict[str, Any]:
    """A row for the event store from one CloudEvent an API caller sent."""
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where} must be a JSON object (a CloudEvent)")
    unknown = sorted(set(raw) - ATTRIBUTES)
    if unknown:
        raise ValidationError(
            f"{where}.{unknown[0]}: not an attribute Roost keeps "
            "(id, source, type, subject, time, data)"
        )
    if raw.get("specversion", "1.0") != "1.0":
        raise ValidationError(f"{where}.specversion: only CloudEvents 1.0 is understood")
    if raw.get("datacontenttype", "application/json") != "application/json":
        raise ValidationError(f"{where}.datacontenttype: data must be JSON")
    event_type = _text(raw, "type", where, MAX_TYPE, required=True)
    if not TYPE_RE.fullmatch(event_type):
        raise ValidationError(
            f"{where}.type: {event_type[:80]!r} must be letters, digits and . _ : / -"
        )
    event_id = _text(raw, "id", where, MAX_ID) or str(uuid.uuid4())
    source = _text(raw, "source", where, MAX_SOURCE) or "default"
    data = raw.get("data")
    size = len(json.dumps(data, separators=(",", ":")))
    if size > max_data_bytes:
        raise ValidationError(
            f"{where}.data: {size} bytes is more than the {max_data_bytes}-byte limit"
        )
    return {
        "tenant_id": tenant_id,
        "event_id": event_id,
        "source": API_SOURCE_PREFIX + source,
        "type": event_type,
        "subject": _text(raw, "subject", where, MAX_SUBJECT),
        "device_id": None,
        "time": _time(raw.get("time"), where, now),
        "data": data,
        "received_at": now,
    }


def emitted_event(
    emitted: Mapping[str, Any],
    event_id: str,
    tenant_id: str,
    max_data_bytes: int,
    now: dt.datetime,
    where: str = "event",
) -> dict[str, Any]:
    """A row for the event store from what a function emitted with ``ctx.emit``
    (``{"type", "subject", "data"}``), under ``event_id``; ``ValidationError`` when it is
    not an event, or claims a ``roost.*`` type (those are Roost's own: a function could
    otherwise pass for the hub or for a device's report of an invocation)."""
    raw = {
        "id": event_id,
        "type": emitted.get("type"),
        "subject": emitted.get("subject") or None,
        "data": emitted.get("data"),
    }
    row = parse_event(raw, tenant_id, max_data_bytes, now, where)
    if row["type"].startswith("roost."):
        raise ValidationError(f"{where}.type: {row['type']!r}: roost.* events are the hub's own")
    return row


def _text(raw: Mapping[str, Any], key: str, where: str, limit: int, required: bool = False) -> str:
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{where}.{key}: a non-empty string is required")
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise ValidationError(f"{where}.{key}: at most {limit} characters, no control characters")
    return value


def _time(value: Any, where: str, now: dt.datetime) -> dt.datetime:
    if value is None:
        return now
    if not isinstance(value, str):
        raise ValidationError(f"{where}.time: an RFC 3339 timestamp is required")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{where}.time: {value[:40]!r} is not an RFC 3339 timestamp"
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError(f"{where}.time: the timestamp needs a time zone (Z or +hh:mm)")
    return parsed.astimezone(dt.UTC)


def device_time(value: Any, default: dt.datetime) -> dt.datetime:
    """A time a device reported, leniently: as it says when it reads as ISO 8601 (with no
    zone, UTC), else ``default``. For records of what happened, where a device's odd
    clock text should not cost the record; an event's own ``time`` is checked instead."""
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return default
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return default
