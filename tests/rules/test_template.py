"""Action templates: reading, rendering as text and as values, and what they refuse."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.rules.template import Template, TemplateProblem, parse, render_value

CONTEXT: dict[str, Any] = {
    "event": {
        "id": "e1",
        "subject": "alice/arm",
        "data": {"systolic": 150, "ratio": 1.5, "ok": True, "tags": ["a", "b"], "none": None},
    },
    "device": "d1",
    "rule": {"id": "r1"},
    "window": {"count": 10},
}

RENDER = [
    ("plain text", "plain text"),
    ("{{ event.data.systolic }}", "150"),
    ("{{event.data.systolic}}/{{ event.data.ratio }}", "150/1.5"),
    ("BP {{ event.data.systolic }} on {{ device }}", "BP 150 on d1"),
    ("{{ event.data.ok }}", "true"),
    ("{{ event.data.tags }}", '["a","b"]'),
    ("{{ event.data.tags[1] }}", "b"),
    ("{{ event.data.tags[7] }}", ""),
    ("{{ event.data.none }}", ""),
    ("{{ event.data.missing.deeper }}", ""),
    ("{{ event.subject.length }}", ""),  # no methods: a string has no fields
    ("{{ rule.id }}: {{ window.count }}", "r1: 10"),
    ("{{ event.data }}", '{"none":null,"ok":true,"ratio":1.5,"systolic":150,"tags":["a","b"]}'),
    ("}} alone", "}} alone"),
    ("{{\n  device\n}}", "d1"),
]


@pytest.mark.parametrize(("text", "expected"), RENDER)
def test_render(text: str, expected: str) -> None:
    template = parse(text)
    rendered = template.render(CONTEXT) if isinstance(template, Template) else template
    assert rendered == expected


VALUES = [
    ("{{ event.data.systolic }}", 150),
    ("{{ event.data.tags }}", ["a", "b"]),
    ("{{ event.data.ok }}", True),
    ("{{ event.data.missing }}", None),
    (" {{ event.data.systolic }}", " 150"),  # not alone: text
    ({"n": "{{ window.count }}", "l": ["{{ device }}", 3]}, {"n": 10, "l": ["d1", 3]}),
]


@pytest.mark.parametrize(("raw", "expected"), VALUES)
def test_payload_values_keep_their_type(raw: Any, expected: Any) -> None:
    compiled = {k: _compile(v) for k, v in raw.items()} if isinstance(raw, dict) else _compile(raw)
    assert render_value(compiled, CONTEXT, typed=True) == expected


def _compile(value: Any) -> Any:
    if isinstance(value, list):
        return [_compile(v) for v in value]
    return parse(value) if isinstance(value, str) else value


def test_text_fields_stay_text() -> None:
    assert render_value([parse("{{ window.count }}")], CONTEXT, typed=False) == ["10"]


REFUSED = [
    ("{{ evnt.id }}", "unknown name 'evnt' (use event, device, rule, window)", 1),
    (
        "x {{ event.data.x + 1 }}",
        "'{{ event.data.x + 1 }}' is not a path like {{ event.data.name }}",
        3,
    ),
    ("{{ event.data['x'] }}", "is not a path like", 1),
    ("{{ }}", "is not a path like", 1),
    ("{{ event.data | upper }}", "is not a path like", 1),
    ("{{ event.__class__.__mro__ }}", None, 0),  # a path: reads nothing but data
    ("ab {{ event.id", "'{{' without its closing '}}'", 4),
    ("{{ event.id }} {{", "'{{' without its closing '}}'", 16),
    ("{{ {{ event.id }}", "'{{ {{ event.id }}' is not a path", 1),
]


@pytest.mark.parametrize(("text", "message", "column"), REFUSED)
def test_refused(text: str, message: str | None, column: int) -> None:
    if message is None:
        template = parse(text)
        assert isinstance(template, Template)
        assert template.render(CONTEXT) == ""
        return
    with pytest.raises(TemplateProblem) as caught:
        parse(text)
    assert message in caught.value.message
    assert caught.value.column == column


@given(st.text().filter(lambda t: "{{" not in t))
def test_text_without_placeholders_is_itself(text: str) -> None:
    assert parse(text) == text


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=30))
def test_a_lone_placeholder_renders_its_string(value: str) -> None:
    template = parse("{{ event.subject }}")
    assert isinstance(template, Template)
    assert template.render({"event": {"subject": value}}) == value
