"""Where a function runs and what starts it, as written and as placed on devices."""

from __future__ import annotations

import pytest

from roost.errors import ValidationError
from roost.functions.edge import wanted
from roost.functions.service import Start


def test_edge_functions_go_to_the_devices_their_selectors_pick() -> None:
    functions = [("door", 3, "role=sensor"), ("all", 1, ""), ("cams", 2, "role=camera,site=hq")]
    assert wanted(functions, {"role": "sensor"}) == {"all": {"version": 1}, "door": {"version": 3}}
    assert wanted(functions, {"role": "camera", "site": "hq"}) == {
        "all": {"version": 1},
        "cams": {"version": 2},
    }


def test_on_names_the_hub_every_device_or_a_selector() -> None:
    assert Start.parse("hub", None, "").on_hub
    assert Start.parse("all", None, "").placement == ""
    start = Start.parse(
        " role = sensor ", {"type": "app.door.*", "subject": ["front"]}, "0 * * * *"
    )
    assert start.placement == "role=sensor"
    assert start.trigger is not None
    assert start.trigger.to_dict() == {"type": ["app.door.*"], "source": [], "subject": ["front"]}
    assert start.describe() == "on devices role=sensor, events app.door.*, cron '0 * * * *'"


@pytest.mark.parametrize(
    ("on", "trigger", "cron", "message"),
    [
        ("", None, "", '--on must be "hub", "all" or a label selector'),
        ("=x", None, "", "has no label key"),
        ("hub", {"kind": ["x"]}, "", "a trigger has type, source and subject"),
        ("hub", {"subject": ["x"]}, "", "needs at least one event type pattern"),
        ("hub", {"type": [""]}, "", "patterns of 1 to 200 characters"),
        ("hub", None, "every minute", "is not a cron expression"),
    ],
)
def test_bad_placements_triggers_and_crons_are_named(
    on: str, trigger: dict[str, list[str]] | None, cron: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Start.parse(on, trigger, cron)
