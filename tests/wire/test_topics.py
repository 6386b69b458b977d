"""The topic table: spelling, parsing, and what the subscription filters match."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import WireError
from roost.wire import topics
from roost.wire.topics import Down, Up

DEVICE = "d" + "a" * 20
OTHER = "d" + "b2" * 10
device_ids = st.from_regex(topics.DEVICE_ID_RE, fullmatch=True)


def mqtt_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching, enough for ``+`` and a trailing ``#``."""
    want, have = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(want):
        if level == "#":
            return True
        if index >= len(have) or level not in ("+", have[index]):
            return False
    return len(want) == len(have)


def test_spelling() -> None:
    assert topics.up(DEVICE, Up.BIRTH) == f"roost/v1/d/{DEVICE}/up/birth"
    assert topics.up(DEVICE, Up.HEARTBEAT) == f"roost/v1/d/{DEVICE}/up/hb"
    assert topics.down(DEVICE, Down.COMMAND) == f"roost/v1/d/{DEVICE}/down/cmd"
    assert topics.device_down_filter(DEVICE) == f"roost/v1/d/{DEVICE}/down/+"
    assert topics.HUB_UP_FILTER == "roost/v1/d/+/up/+"


def test_outbox_kinds_are_the_acknowledged_up_kinds() -> None:
    assert {Up.REPORTED, Up.REPLY, Up.EVENT} == topics.OUTBOX_KINDS


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (DEVICE, True),
        ("d" + "234567" * 3 + "ab", True),
        ("d" + "a" * 19, False),  # too short
        ("d" + "a" * 21, False),  # too long
        ("e" + "a" * 20, False),  # wrong lead letter
        ("D" + "a" * 20, False),
        ("d" + "A" * 20, False),  # upper case
        ("d" + "a" * 19 + "1", False),  # 0, 1, 8, 9 are not base32
        ("d" + "a" * 19 + "8", False),
        pytest.param(DEVICE + "\n", False, id="trailing-newline"),
        (topics.HUB_IDENTITY, False),
        ("", False),
        ("+", False),
        ("#", False),
    ],
)
def test_is_device_id(value: str, ok: bool) -> None:
    assert topics.is_device_id(value) is ok


@pytest.mark.parametrize("kind", list(Up))
def test_parse_up_topics(kind: Up) -> None:
    parsed = topics.parse(topics.up(DEVICE, kind))
    assert parsed == topics.ParsedTopic(DEVICE, "up", kind.value)


@pytest.mark.parametrize("kind", list(Down))
def test_parse_down_topics(kind: Down) -> None:
    parsed = topics.parse(topics.down(DEVICE, kind))
    assert parsed == topics.ParsedTopic(DEVICE, "down", kind.value)


@given(device=device_ids, kind=st.sampled_from(list(Up)))
def test_up_topics_round_trip(device: str, kind: Up) -> None:
    topic = topics.up(device, kind)
    parsed = topics.parse(topic)
    assert (parsed.device_id, parsed.direction, parsed.kind) == (device, "up", kind)
    assert topics.up(parsed.device_id, Up(parsed.kind)) == topic


@given(device=device_ids, kind=st.sampled_from(list(Down)))
def test_down_topics_round_trip(device: str, kind: Down) -> None:
    topic = topics.down(device, kind)
    parsed = topics.parse(topic)
    assert (parsed.device_id, parsed.direction, parsed.kind) == (device, "down", kind)
    assert topics.down(parsed.device_id, Down(parsed.kind)) == topic


BAD_TOPICS = [
    pytest.param("", id="empty"),
    pytest.param("roost", id="prefix-only"),
    pytest.param(f"roost/v1/d/{DEVICE}/up", id="no-kind"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/birth/extra", id="extra-level"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/birth/", id="trailing-slash"),
    pytest.param(f"/roost/v1/d/{DEVICE}/up/birth", id="leading-slash"),
    pytest.param(f"roost/v2/d/{DEVICE}/up/birth", id="other-version"),
    pytest.param(f"roost/v1/x/{DEVICE}/up/birth", id="not-devices"),
    pytest.param(f"Roost/v1/d/{DEVICE}/up/birth", id="prefix-case"),
    pytest.param(f"roost/v1/d/{DEVICE}/sideways/birth", id="bad-direction"),
    pytest.param(f"roost/v1/d/{DEVICE}/UP/birth", id="direction-case"),
    pytest.param("roost/v1/d/dAAAAAAAAAAAAAAAAAAAA/up/birth", id="bad-device"),
    pytest.param(f"roost/v1/d/{topics.HUB_IDENTITY}/up/birth", id="hub-identity"),
    pytest.param("roost/v1/d//up/birth", id="empty-device"),
    pytest.param(f"roost/v1/d/{DEVICE}\n/up/birth", id="device-newline"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/", id="empty-kind"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/nope", id="unknown-up-kind"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/cmd", id="down-kind-going-up"),
    pytest.param(f"roost/v1/d/{DEVICE}/down/birth", id="up-kind-going-down"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/BIRTH", id="kind-case"),
    pytest.param(topics.HUB_UP_FILTER, id="hub-filter"),
    pytest.param(topics.device_down_filter(DEVICE), id="device-filter"),
    pytest.param(f"roost/v1/d/{DEVICE}/up/#", id="hash-wildcard"),
    pytest.param(f"$share/hubs/roost/v1/d/{DEVICE}/up/birth", id="shared-subscription"),
]


@pytest.mark.parametrize("topic", BAD_TOPICS)
def test_parse_refuses(topic: str) -> None:
    with pytest.raises(WireError):
        topics.parse(topic)


def test_parse_errors_stay_short() -> None:
    # A hostile topic must not flood the log through the error message.
    huge = "roost/v1/d/" + "x" * 100_000 + "/up/birth"
    with pytest.raises(WireError) as caught:
        topics.parse(huge)
    assert len(str(caught.value)) < 200
    with pytest.raises(WireError) as caught:
        topics.parse(f"roost/v1/d/{DEVICE}/up/" + "k" * 100_000)
    assert len(str(caught.value)) < 200


@given(st.text(alphabet=st.sampled_from("roostv1dup/abc+#2hbirth"), max_size=60) | st.text())
def test_parse_is_total(topic: str) -> None:
    """Any string either parses into a topic that spells the same, or is a WireError."""
    try:
        parsed = topics.parse(topic)
    except WireError:
        return
    if parsed.direction == "up":
        assert topics.up(parsed.device_id, Up(parsed.kind)) == topic
    else:
        assert topics.down(parsed.device_id, Down(parsed.kind)) == topic


def test_parsed_topic_is_frozen() -> None:
    parsed = topics.parse(topics.up(DEVICE, Up.BIRTH))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.device_id = OTHER  # type: ignore[misc]


@pytest.mark.parametrize("kind", list(Up))
def test_hub_filter_takes_every_up_topic_and_no_down_topic(kind: Up) -> None:
    assert mqtt_matches(topics.HUB_UP_FILTER, topics.up(DEVICE, kind))
    for down_kind in Down:
        assert not mqtt_matches(topics.HUB_UP_FILTER, topics.down(DEVICE, down_kind))


@pytest.mark.parametrize("kind", list(Down))
def test_device_filter_takes_only_its_own_down_topics(kind: Down) -> None:
    mine = topics.device_down_filter(DEVICE)
    assert mqtt_matches(mine, topics.down(DEVICE, kind))
    assert not mqtt_matches(mine, topics.down(OTHER, kind))
    for up_kind in Up:
        assert not mqtt_matches(mine, topics.up(DEVICE, up_kind))
