"""What the rules tests share: events, times, and the two examples of the issue."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from fleet.conftest import acme, db, owner  # noqa: F401  (fixtures: a database, two tenants)

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
_ids = itertools.count(1)

# "When Alice's blood pressure goes over 140/90, send an alert to her doctor's phone and
# copy the family in."
BLOOD_PRESSURE = """\
id: alice-blood-pressure
trigger: {type: app.reading.bp, subject: "alice/*"}
condition: event.data.systolic > 140 || event.data.diastolic > 90
actions:
  - kind: webhook                         # the doctor's SMS gateway
    url: https://sms.example.org/send
    secret: doctor-sms
    body: {to: "+15550100", text: "Alice: {{ event.data.systolic }}/{{ event.data.diastolic }}"}
  - kind: email
    to: [bob@example.org, carol@example.org]
    subject: "Alice's blood pressure is {{ event.data.systolic }}/{{ event.data.diastolic }}"
"""

# "If this device's door sensor reports `forced` 10 times within 30 days, disable its
# guest access and tell the owner."
DOOR_FORCED = """\
id: door-forced
trigger: {type: app.door.state}
condition: event.data.state == "forced"
window: {over: 30d, group_by: device, threshold: count >= 10}
actions:
  - {kind: command, name: guest-access.disable}
  - kind: email
    to: owner@example.org
    subject: "{{ device }}: door forced {{ window.count }} times in 30 days; guest access is off"
"""


def event(
    event_type: str = "app.reading",
    data: Any = None,
    subject: str = "",
    source: str = "roost://devices/d1/app",
    **extra: Any,
) -> dict[str, Any]:
    """A CloudEvents 1.0 event with a fresh id."""
    return {
        "specversion": "1.0",
        "id": f"e{next(_ids)}",
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": T0.isoformat(),
        "data": data,
        **extra,
    }


def days(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def seconds(n: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=n)
