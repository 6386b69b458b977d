"""The hub⇄agent messages: every one round-trips, every malformed payload is a WireError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import WireError
from roost.wire import Ack, Birth, Command, Desired, Event, Heartbeat, Reply, Reported, Status

LIMIT = 64 * 1024
MESSAGE_TYPES: list[type[Any]] = [
    Birth,
    Status,
    Heartbeat,
    Reported,
    Reply,
    Event,
    Desired,
    Command,
    Ack,
]

CLOUDEVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "/apps/thermo",
    "type": "temperature.high",
    "data": {"celsius": 81.5},
}

# One valid message of each type, spelled out.
EXAMPLES: list[Any] = [
    Birth(epoch=3, agent_version="0.1.0", inventory={"cpus": 4, "arch": "arm64"}, labels={}),
    Birth(
        epoch=0,
        agent_version="",
        inventory={},
        labels={"room": "attic", "zone": ""},
        desired_version=17,
    ),
    Status(online=False, epoch=3),
    Status(online=True, epoch=0),
    Heartbeat(time=1_700_000_000.25, metrics={"cpu": 0.5, "load": [0.1, 0.2, 0.3]}),
    Heartbeat(time=0.0, metrics={}),
    Reported(seq=1, desired_version=4, state={"apps": {"web": {"version": "1.2"}}}),
    Reply(seq=2, id="c-1", ok=True, result={"uptime": 12}),
    Reply(seq=3, id="c-2", ok=False, error="no such app"),
    Reply(seq=4, id="c-3", ok=True, result=[1, "two", None, 3.5, False]),
    Event(seq=5, event=CLOUDEVENT),
    Desired(version=4, state={"apps": {}, "config": {"hb": 30}}),
    Desired(version=0, state={}),
    Command(id="c-1", name="reboot"),
    Command(id="c-2", name="logs", args={"lines": 50, "app": "web"}, deadline=1_700_000_010.5),
    Ack(seqs=[]),
    Ack(seqs=[1, 2, 5, 2**40]),
]


def payload(message: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(message.encode())
    return decoded


def example_of(cls: type[Any]) -> Any:
    return next(m for m in EXAMPLES if type(m) is cls)


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- round trips ---------------------------------------------------------------------


def test_every_message_type_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_examples_round_trip(message: Any) -> None:
    encoded = message.encode()
    assert isinstance(encoded, bytes)
    assert type(message).decode(encoded, LIMIT) == message


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_encoding_is_compact_json_of_the_fields(message: Any) -> None:
    encoded = message.encode()
    assert b", " not in encoded
    assert b'": ' not in encoded
    assert set(payload(message)) == set(type(message).__dataclass_fields__)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_the_limit_is_inclusive(message: Any) -> None:
    encoded = message.encode()
    assert type(message).decode(encoded, len(encoded)) == message
    with pytest.raises(WireError, match="exceeds"):
        type(message).decode(encoded, len(encoded) - 1)


def test_unknown_fields_are_ignored() -> None:
    # Newer agents may send more; older hubs must still read what they know.
    obj = payload(example_of(Status)) | {"future": {"x": 1}}
    assert Status.decode(raw(obj), LIMIT) == example_of(Status)


@pytest.mark.parametrize(
    ("cls", "obj", "expected"),
    [
        (
            Birth,
            {"epoch": 1, "agent_version": "1", "inventory": {}},
            Birth(epoch=1, agent_version="1", inventory={}, labels={}, desired_version=0),
        ),
        (Reply, {"seq": 1, "id": "c", "ok": True}, Reply(seq=1, id="c", ok=True)),
        (Command, {"id": "c", "name": "n"}, Command(id="c", name="n", args={}, deadline=0.0)),
        (Command, {"id": "c", "name": "n", "deadline": 5}, Command(id="c", name="n", deadline=5.0)),
        (Heartbeat, {"time": 7, "metrics": {"n": 1}}, Heartbeat(time=7.0, metrics={"n": 1})),
    ],
)
def test_optional_fields_take_their_defaults(cls: type[Any], obj: Any, expected: Any) -> None:
    decoded = cls.decode(raw(obj), LIMIT)
    assert decoded == expected
    if hasattr(decoded, "deadline"):
        assert isinstance(decoded.deadline, float)
    if hasattr(decoded, "time"):
        assert isinstance(decoded.time, float)


@pytest.mark.parametrize(
    ("cls", "obj", "field", "limit"),
    [
        (Birth, {"epoch": 1, "agent_version": "v" * 500, "inventory": {}}, "agent_version", 64),
        (Reply, {"seq": 1, "id": "i" * 500, "ok": False}, "id", 64),
        (Reply, {"seq": 1, "id": "c", "ok": False, "error": "e" * 9000}, "error", 2000),
    ],
)
def test_long_strings_are_cut(cls: type[Any], obj: Any, field: str, limit: int) -> None:
    decoded = cls.decode(raw(obj), LIMIT)
    assert getattr(decoded, field) == obj[field][:limit]


# Hypothesis: JSON values without NaN (NaN != NaN) and with integers JSON can carry.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
ints = st.integers(-(2**63), 2**63)
finite = st.floats(allow_nan=False, allow_infinity=False)
str_maps = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5)
events = st.fixed_dictionaries(
    {k: st.text(min_size=1, max_size=12) for k in ("id", "source", "type")},
    optional={"data": json_values, "specversion": st.just("1.0")},
)

messages = st.one_of(
    st.builds(
        Birth,
        epoch=ints,
        agent_version=st.text(max_size=64),
        inventory=json_objects,
        labels=str_maps,
        desired_version=ints,
    ),
    st.builds(Status, online=st.booleans(), epoch=ints),
    st.builds(
        Heartbeat,
        time=finite,
        metrics=st.dictionaries(st.text(max_size=8), finite | st.lists(finite, max_size=4)),
    ),
    st.builds(Reported, seq=ints, desired_version=ints, state=json_objects),
    st.builds(
        Reply,
        seq=ints,
        id=st.text(max_size=64),
        ok=st.booleans(),
        result=json_values,
        error=st.text(max_size=100),
    ),
    st.builds(Event, seq=ints, event=events),
    st.builds(Desired, version=ints, state=json_objects),
    st.builds(
        Command,
        id=st.text(max_size=40),
        name=st.text(max_size=40),
        args=json_objects,
        deadline=finite,
    ),
    st.builds(Ack, seqs=st.lists(ints, max_size=20)),
)


@given(messages)
def test_any_message_round_trips(message: Any) -> None:
    assert type(message).decode(message.encode(), 1 << 20) == message


# --- malformed payloads --------------------------------------------------------------

NOT_JSON = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"not json", id="text"),
    pytest.param(b'{"epoch": 1,}', id="trailing-comma"),
    pytest.param(b'{"a": 1}}', id="trailing-garbage"),
    pytest.param(b"\xff\xfe\xfd\xfc{}", id="not-utf8"),
    pytest.param(b'{"a": "\xc3"}', id="broken-utf8-in-string"),
    pytest.param(b"{'a': 1}", id="python-dict"),
]

NOT_AN_OBJECT = [
    pytest.param(b"[]", id="array"),
    pytest.param(b'[{"epoch": 1}]', id="array-of-object"),
    pytest.param(b"1", id="number"),
    pytest.param(b'"{}"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="bool"),
]


@pytest.mark.parametrize("cls", MESSAGE_TYPES)
@pytest.mark.parametrize("data", NOT_JSON)
def test_not_json_is_refused(cls: type[Any], data: bytes) -> None:
    with pytest.raises(WireError, match="not JSON"):
        cls.decode(data, LIMIT)


@pytest.mark.parametrize("cls", MESSAGE_TYPES)
@pytest.mark.parametrize("data", NOT_AN_OBJECT)
def test_not_an_object_is_refused(cls: type[Any], data: bytes) -> None:
    with pytest.raises(WireError, match="not a JSON object"):
        cls.decode(data, LIMIT)


@pytest.mark.parametrize("cls", MESSAGE_TYPES)
def test_oversized_is_refused_before_parsing(cls: type[Any]) -> None:
    # Not even JSON: the size check comes first, so a huge payload costs no parsing.
    with pytest.raises(WireError, match="exceeds the 1024-byte limit"):
        cls.decode(b"x" * 1025, 1024)


REQUIRED = {
    Birth: ["epoch", "agent_version", "inventory"],
    Status: ["online", "epoch"],
    Heartbeat: ["time", "metrics"],
    Reported: ["seq", "desired_version", "state"],
    Reply: ["seq", "id", "ok"],
    Event: ["seq", "event"],
    Desired: ["version", "state"],
    Command: ["id", "name"],
    Ack: ["seqs"],
}


def test_required_table_covers_every_type() -> None:
    assert set(REQUIRED) == set(MESSAGE_TYPES)


@pytest.mark.parametrize(
    ("cls", "field"), [(cls, field) for cls, fields in REQUIRED.items() for field in fields]
)
def test_missing_field_is_refused(cls: type[Any], field: str) -> None:
    obj = payload(example_of(cls))
    del obj[field]
    with pytest.raises(WireError, match=f"{field!r} is missing"):
        cls.decode(raw(obj), LIMIT)


INT_WRONG = ["1", 1.5, 1.0, True, False, None, [], {}]
STR_WRONG = [1, 1.5, True, None, [], {}]
BOOL_WRONG = [1, 0, "true", None, [], {}]
NUMBER_WRONG = ["1", True, False, None, [], {}]
OBJECT_WRONG = [[], "{}", 1, True, None]
LIST_WRONG = [{}, "1,2", 1, True, None]

FIELD_KINDS: dict[type[Any], dict[str, list[Any]]] = {
    Birth: {
        "epoch": INT_WRONG,
        "agent_version": STR_WRONG,
        "inventory": OBJECT_WRONG,
        "labels": [*OBJECT_WRONG, {"a": 1}, {"a": None}, {"a": ["x"]}, {"a": True}],
        "desired_version": INT_WRONG,
    },
    Status: {"online": BOOL_WRONG, "epoch": INT_WRONG},
    Heartbeat: {
        "time": NUMBER_WRONG,
        "metrics": [*OBJECT_WRONG, {"cpu": "high"}, {"cpu": None}, {"cpu": True}],
    },
    Reported: {"seq": INT_WRONG, "desired_version": INT_WRONG, "state": OBJECT_WRONG},
    Reply: {"seq": INT_WRONG, "id": STR_WRONG, "ok": BOOL_WRONG, "error": STR_WRONG},
    Event: {"seq": INT_WRONG, "event": OBJECT_WRONG},
    Desired: {"version": INT_WRONG, "state": OBJECT_WRONG},
    Command: {
        "id": STR_WRONG,
        "name": STR_WRONG,
        "args": OBJECT_WRONG,
        "deadline": NUMBER_WRONG,
    },
    Ack: {"seqs": [*LIST_WRONG, [1, "2"], [1.5], [True], [None], [[1]]]},
}


def test_wrong_type_table_covers_every_field() -> None:
    for cls in MESSAGE_TYPES:
        assert set(FIELD_KINDS[cls]) == set(cls.__dataclass_fields__) - {"result"}, cls


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        pytest.param(cls, field, value, id=f"{cls.__name__}.{field}={value!r}")
        for cls, fields in FIELD_KINDS.items()
        for field, values in fields.items()
        for value in values
    ],
)
def test_wrong_type_is_refused(cls: type[Any], field: str, value: Any) -> None:
    obj = payload(example_of(cls)) | {field: value}
    with pytest.raises(WireError):
        cls.decode(raw(obj), LIMIT)


@pytest.mark.parametrize(
    "event",
    [
        {k: v for k, v in CLOUDEVENT.items() if k != "id"},
        {k: v for k, v in CLOUDEVENT.items() if k != "source"},
        {k: v for k, v in CLOUDEVENT.items() if k != "type"},
        CLOUDEVENT | {"id": ""},
        CLOUDEVENT | {"type": 7},
        CLOUDEVENT | {"source": None},
    ],
)
def test_event_must_be_a_cloudevent(event: dict[str, Any]) -> None:
    with pytest.raises(WireError, match="event field"):
        Event.decode(raw({"seq": 1, "event": event}), LIMIT)


# Bugs in roost.wire.messages, kept here until they are fixed (strict: a fix makes
# these fail, and the marker should then go).
@pytest.mark.parametrize("cls", [Reported, Desired])
def test_deep_nesting_is_a_wire_error(cls: type[Any]) -> None:
    data = b'{"state":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(WireError):
        cls.decode(data, 1 << 20)


def test_huge_integer_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        Status.decode(b'{"online":true,"epoch":' + b"9" * 5000 + b"}", LIMIT)


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (Heartbeat, b'{"metrics":{},"time":1' + b"0" * 400 + b"}"),
        (Command, b'{"id":"c","name":"n","deadline":1' + b"0" * 400 + b"}"),
    ],
)
def test_huge_time_is_a_wire_error(cls: type[Any], data: bytes) -> None:
    with pytest.raises(WireError):
        cls.decode(data, LIMIT)


def test_bool_inside_metric_list_is_refused() -> None:
    with pytest.raises(WireError):
        Heartbeat.decode(raw({"time": 1, "metrics": {"up": [True, False]}}), LIMIT)


# --- fuzz: nothing but a message or a WireError ---------------------------------------

FIELD_NAMES = sorted({name for cls in MESSAGE_TYPES for name in cls.__dataclass_fields__})


@given(cls=st.sampled_from(MESSAGE_TYPES), data=st.binary(max_size=200))
def test_random_bytes_decode_or_raise_wire_error(cls: type[Any], data: bytes) -> None:
    with contextlib.suppress(WireError):
        cls.decode(data, LIMIT)


@given(
    cls=st.sampled_from(MESSAGE_TYPES),
    obj=st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), json_values),
)
def test_random_objects_decode_or_raise_wire_error(cls: type[Any], obj: dict[str, Any]) -> None:
    try:
        message = cls.decode(raw(obj), LIMIT)
    except WireError:
        return
    # What was accepted is a valid message: it survives its own round trip.
    assert cls.decode(message.encode(), LIMIT) == message
