"""Rules files: what parses, and every problem named by its path, position and caret."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from roost.errors import RuleError
from roost.events.patterns import Pattern
from roost.rules import spec
from roost.rules.spec import parse_rules
from roost.rules.template import Template

BASE: dict[str, Any] = {
    "id": "r1",
    "trigger": {"type": "app.reading"},
    "condition": "event.data.x > 1",
    "actions": [{"kind": "webhook", "url": "https://example.org/hook"}],
}
DELETE = object()


def rule_file(path: tuple[str | int, ...] = (), value: Any = None, **top: Any) -> str:
    """BASE with the value at ``path`` replaced (or removed with DELETE), as YAML."""
    rule = copy.deepcopy(BASE)
    if path:
        parent: Any = rule
        for step in path[:-1]:
            parent = parent[step]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return yaml.safe_dump({"rules": [rule], **top}, sort_keys=False)


def problems(text: str) -> list[str]:
    with pytest.raises(RuleError) as caught:
        parse_rules(text, "rules.yaml")
    return caught.value.problems


def heads(text: str) -> list[str]:
    """Each problem's first line without its ``file:line:col:`` prefix."""
    return [p.split("\n")[0].split(": ", 1)[1] for p in problems(text)]


WINDOW = {"over": "30d", "threshold": "count >= 10"}

# (what is wrong, the file, the problem expected: path and message)
REFUSED: list[tuple[str, str, str]] = [
    (
        "not YAML",
        "rules: [\n",
        "not valid YAML: expected the node content, but found '<stream end>'",
    ),
    ("a list at the top", "- 1\n", "must be a rule (a mapping with an id) or 'rules:' and a list"),
    ("rules not a list", "rules: 3\n", "rules: must be a list of rules"),
    ("rules empty", "rules: []\n", "rules: must be a list of rules"),
    ("unknown top field", rule_file(extra=1), "extra: unknown field (expected rules)"),
    ("rule not a mapping", "rules: [3]\n", "rules[0]: must be a rule (a mapping), not 3"),
    ("no id", rule_file(("id",), DELETE), "rules[0]: missing required 'id'"),
    ("no trigger", rule_file(("trigger",), DELETE), "rules[0]: missing required 'trigger'"),
    ("no actions", rule_file(("actions",), DELETE), "rules[0]: missing required 'actions'"),
    (
        "bad id",
        rule_file(("id",), "Bad Id"),
        "rules[0].id: 'Bad Id' is not a rule id (a-z, 0-9, '.', '_', '-')",
    ),
    (
        "unknown rule field",
        rule_file(("when",), "x"),
        (
            "rules[0].when: unknown field (expected id, description, enabled, trigger, condition, "
            "window, actions)"
        ),
    ),
    ("description", rule_file(("description",), 5), "rules[0].description: must be a str, not 5"),
    (
        "enabled",
        rule_file(("enabled",), "yes please"),
        "rules[0].enabled: must be a bool, not 'yes please'",
    ),
    (
        "trigger a string",
        rule_file(("trigger",), "app.x"),
        "rules[0].trigger: must be a mapping with type (and source, subject), not 'app.x'",
    ),
    (
        "trigger field",
        rule_file(("trigger", "typ"), "x"),
        "rules[0].trigger.typ: unknown field (expected type, source, subject)",
    ),
    (
        "trigger type",
        rule_file(("trigger", "type"), DELETE),
        "rules[0].trigger: missing required 'type'",
    ),
    (
        "empty pattern",
        rule_file(("trigger", "subject"), ""),
        "rules[0].trigger.subject: must be a pattern or a list of patterns (strings, '*' for any)",
    ),
    (
        "pattern number",
        rule_file(("trigger", "source"), [1]),
        "rules[0].trigger.source: must be a pattern or a list of patterns (strings, '*' for any)",
    ),
    (
        "condition number",
        rule_file(("condition",), 5),
        "rules[0].condition: must be a CEL expression (a string), not 5",
    ),
    (
        "condition syntax",
        rule_file(("condition",), "event.data.x >"),
        "rules[0].condition: Syntax error: mismatched input '<EOF>'",
    ),
    (
        "condition undeclared",
        rule_file(("condition",), "evnt.data.x > 1"),
        "rules[0].condition: undeclared reference to 'evnt.data.x'",
    ),
    (
        "condition types",
        rule_file(("condition",), "1 + 'a' == 2"),
        "rules[0].condition: found no matching overload for '_+_' applied to '(int, string)'",
    ),
    (
        "condition not bool",
        rule_file(("condition",), "1 + 2"),
        "rules[0].condition: must be a bool, this is int",
    ),
    ("condition empty", rule_file(("condition",), " "), "rules[0].condition: empty expression"),
    (
        "condition long",
        rule_file(("condition",), "true" + " && true" * 300),
        "rules[0].condition: longer than 2000 characters (2404)",
    ),
    (
        "condition large",
        rule_file(("condition",), " || ".join(["event.x == 1"] * 80)),
        "rules[0].condition: too large: 399 nodes, at most 300",
    ),
    (
        "condition costly",
        rule_file(("condition",), "event.data.xs.exists(x, x in event.data.ys)"),
        (
            "rules[0].condition: too costly: 'in' searches a list, once for each element of a "
            "loop (estimated cost 100,100,006, limit 1,000,000)"
        ),
    ),
    (
        "window a string",
        rule_file(("window",), "30d"),
        "rules[0].window: must be a mapping with over and threshold, not '30d'",
    ),
    (
        "window field",
        rule_file(("window",), {**WINDOW, "size": 3}),
        (
            "rules[0].window.size: unknown field (expected over, kind, group_by, value, "
            "threshold, reset)"
        ),
    ),
    (
        "window no over",
        rule_file(("window",), {"threshold": "count > 1"}),
        "rules[0].window: missing required 'over'",
    ),
    (
        "window no threshold",
        rule_file(("window",), {"over": "1h"}),
        "rules[0].window: missing required 'threshold'",
    ),
    (
        "window over",
        rule_file(("window",), {**WINDOW, "over": "a month"}),
        (
            "rules[0].window.over: 'a month' is not a duration from 1s to 400d (like 30s, 15m, "
            "1h, 30d)"
        ),
    ),
    (
        "window too long",
        rule_file(("window",), {**WINDOW, "over": "60w"}),
        "rules[0].window.over: '60w' is not a duration from 1s to 400d (like 30s, 15m, 1h, 30d)",
    ),
    (
        "window too short",
        rule_file(("window",), {**WINDOW, "over": "500ms"}),
        "rules[0].window.over: '500ms' is not a duration from 1s to 400d (like 30s, 15m, 1h, 30d)",
    ),
    (
        "window kind",
        rule_file(("window",), {**WINDOW, "kind": "hopping"}),
        "rules[0].window.kind: 'hopping' is not one of sliding, tumbling",
    ),
    (
        "window reset",
        rule_file(("window",), {**WINDOW, "reset": "yes!"}),
        "rules[0].window.reset: must be true or false, not 'yes!'",
    ),
    (
        "window group",
        rule_file(("window",), {**WINDOW, "group_by": "[event.subject]"}),
        "rules[0].window.group_by: must be a string, number or bool, this is list<dyn>",
    ),
    (
        "window value",
        rule_file(("window",), {**WINDOW, "value": "event.subject + 'x'"}),
        "rules[0].window.value: must be a number, this is string",
    ),
    (
        "window threshold",
        rule_file(("window",), {**WINDOW, "threshold": "count"}),
        "rules[0].window.threshold: must be a bool, this is int",
    ),
    (
        "threshold needs value",
        rule_file(("window",), {**WINDOW, "threshold": "avg > 3"}),
        "rules[0].window.threshold: 'avg' needs the window's value (value: event.data...)",
    ),
    (
        "threshold sees no event",
        rule_file(("window",), {**WINDOW, "threshold": "event.x > 3"}),
        "rules[0].window.threshold: undeclared reference to 'event.x'",
    ),
    (
        "actions empty",
        rule_file(("actions",), []),
        "rules[0].actions: must be a list of one or more actions",
    ),
    (
        "action a string",
        rule_file(("actions",), ["webhook"]),
        "rules[0].actions[0]: must be an action (a mapping with a kind), not 'webhook'",
    ),
    (
        "action no kind",
        rule_file(("actions",), [{"url": "https://x.org"}]),
        "rules[0].actions[0]: missing required 'kind'",
    ),
    (
        "action kind",
        rule_file(("actions",), [{"kind": "sms", "to": "+1555"}]),
        (
            "rules[0].actions[0].kind: 'sms' is not one of webhook, email, publish, command, "
            "invoke, emit"
        ),
    ),
    (
        "action field",
        rule_file(("actions", 0, "method"), "PUT"),
        (
            "rules[0].actions[0].method: unknown field (expected kind, url, body, headers, "
            "secret, timeout)"
        ),
    ),
    (
        "action required",
        rule_file(("actions", 0, "url"), DELETE),
        "rules[0].actions[0]: missing required 'url'",
    ),
    (
        "webhook url",
        rule_file(("actions", 0, "url"), "ftp://x.org"),
        "rules[0].actions[0].url: 'ftp://x.org' is not an http:// or https:// URL",
    ),
    (
        "webhook timeout",
        rule_file(("actions", 0, "timeout"), "5m"),
        "rules[0].actions[0].timeout: '5m' is not a duration from 0.1s to 60s",
    ),
    (
        "webhook secret",
        rule_file(("actions", 0, "secret"), "{{ event.data.key }}"),
        (
            "rules[0].actions[0].secret: '{{ event.data.key }}' is not a name (a-z, 0-9, '.', "
            "'_', '-')"
        ),
    ),
    (
        "webhook headers",
        rule_file(("actions", 0, "headers"), {"X-N": 5}),
        "rules[0].actions[0].headers: header values must be strings",
    ),
    (
        "webhook headers shape",
        rule_file(("actions", 0, "headers"), ["X-N"]),
        "rules[0].actions[0].headers: must be a mapping of header names to strings, not a list",
    ),
    (
        "template root",
        rule_file(("actions", 0, "body"), "{{ evnt.data }}"),
        "rules[0].actions[0].body: unknown name 'evnt' (use event, device, rule, window)",
    ),
    (
        "template path",
        rule_file(("actions", 0, "body"), "{{ event.data.x + 1 }}"),
        (
            "rules[0].actions[0].body: '{{ event.data.x + 1 }}' is not a path like {{ "
            "event.data.name }} (templates read values; conditions go in the rule's condition)"
        ),
    ),
    (
        "template open",
        rule_file(("actions", 0, "body"), "x {{ event.id"),
        "rules[0].actions[0].body: '{{' without its closing '}}'",
    ),
    (
        "template nested",
        rule_file(("actions", 0, "body"), {"a": ["{{ nope }}"]}),
        "rules[0].actions[0].body.a[0]: unknown name 'nope' (use event, device, rule, window)",
    ),
    (
        "email to",
        rule_file(("actions",), [{"kind": "email", "to": "bob", "subject": "s"}]),
        "rules[0].actions[0].to: 'bob' is not an e-mail address",
    ),
    (
        "email cc",
        rule_file(
            ("actions",),
            [{"kind": "email", "to": "a@x.org", "cc": ["b@x.org", "c"], "subject": "s"}],
        ),
        "rules[0].actions[0].cc[1]: 'c' is not an e-mail address",
    ),
    (
        "email to list",
        rule_file(("actions",), [{"kind": "email", "to": ["a@x.org", 3], "subject": "s"}]),
        "rules[0].actions[0].to: must be a string or a list of strings",
    ),
    (
        "email subject",
        rule_file(("actions",), [{"kind": "email", "to": "a@x.org", "subject": ["s"]}]),
        "rules[0].actions[0].subject: must be a string, not a list",
    ),
    (
        "publish neither",
        rule_file(("actions",), [{"kind": "publish"}]),
        "rules[0].actions[0]: needs exactly one of 'topic' (MQTT) or 'devices' (a selector)",
    ),
    (
        "publish both",
        rule_file(("actions",), [{"kind": "publish", "topic": "a/b", "devices": "x=y"}]),
        "rules[0].actions[0]: needs exactly one of 'topic' (MQTT) or 'devices' (a selector)",
    ),
    (
        "publish roost topic",
        rule_file(("actions",), [{"kind": "publish", "topic": "roost/v1/d/x/down/cmd"}]),
        (
            "rules[0].actions[0].topic: 'roost/v1/d/x/down/cmd' is not a topic a rule may publish "
            "to (no wildcards; roost/ is Roost's own)"
        ),
    ),
    (
        "publish wildcard",
        rule_file(("actions",), [{"kind": "publish", "topic": "home/+/light"}]),
        (
            "rules[0].actions[0].topic: 'home/+/light' is not a topic a rule may publish to (no "
            "wildcards; roost/ is Roost's own)"
        ),
    ),
    (
        "publish selector",
        rule_file(("actions",), [{"kind": "publish", "devices": "=x"}]),
        "rules[0].actions[0].devices: selector term '=x' has no label key",
    ),
    (
        "command name",
        rule_file(("actions",), [{"kind": "command", "device": "d1"}]),
        "rules[0].actions[0]: missing required 'name'",
    ),
    (
        "command timeout",
        rule_file(("actions",), [{"kind": "command", "name": "x", "timeout": 5}]),
        "rules[0].actions[0].timeout: 5 is not a duration from 1s to 600s",
    ),
    (
        "invoke function",
        rule_file(("actions",), [{"kind": "invoke", "function": "Not A Name"}]),
        "rules[0].actions[0].function: 'Not A Name' is not a name (a-z, 0-9, '.', '_', '-')",
    ),
    (
        "emit roost type",
        rule_file(("actions",), [{"kind": "emit", "type": "roost.device.online"}]),
        "rules[0].actions[0].type: 'roost.device.online': roost.* events are the hub's own",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused_with_its_path_and_message(text: str, expected: str) -> None:
    assert expected in heads(text)


def test_too_many_actions_and_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    many = rule_file(("actions",), [BASE["actions"][0]] * 17)
    assert "rules[0].actions: 17 actions, at most 16 in one rule" in heads(many)
    monkeypatch.setattr(spec, "MAX_RULES", 1)
    two = yaml.safe_dump({"rules": [BASE, {**BASE, "id": "r2"}]})
    assert "rules: 2 rules, at most 1 in one file" in heads(two)


def test_duplicate_ids_and_keys() -> None:
    text = yaml.safe_dump({"rules": [BASE, BASE]})
    assert heads(text) == ["rules[1].id: 'r1' is used by an earlier rule"]
    assert heads("id: a\nid: b\n")[0] == "id: duplicate key"


def test_a_missing_part_does_not_hide_problems_in_the_others() -> None:
    text = yaml.safe_dump({"id": "Bad", "actions": [{"kind": "sms"}]})
    assert heads(text) == [
        "missing field 'trigger'",
        "id: 'Bad' is not a rule id (a-z, 0-9, '.', '_', '-')",
        "actions[0].kind: 'sms' is not one of webhook, email, publish, command, invoke, emit",
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = rule_file(("actions",), [{"kind": "sms"}, {"kind": "webhook"}])
    assert heads(text) == [
        (
            "rules[0].actions[0].kind: 'sms' is not one of webhook, email, publish, command, "
            "invoke, emit"
        ),
        "rules[0].actions[1]: missing required 'url'",
    ]


def test_cel_error_is_marked_in_the_file() -> None:
    text = (
        "id: bp\n"
        "trigger: {type: app.reading.bp}\n"
        "condition: event.data.systolic > 140 || evnt.data.diastolic > 90\n"
        "actions: [{kind: webhook, url: 'https://x.org'}]\n"
    )
    assert problems(text) == [
        "rules.yaml:3:50: condition: undeclared reference to 'evnt.data.diastolic'\n"
        "    condition: event.data.systolic > 140 || evnt.data.diastolic > 90\n"
        "                                                     ^"
    ]


def test_cel_error_in_a_quoted_string_and_a_block() -> None:
    quoted = (
        'id: a\ntrigger: {type: t}\ncondition: "event.x >"\nactions: [{kind: invoke, function: '
        "f}]\n"
    )
    assert problems(quoted)[0].startswith("rules.yaml:3:22: condition: Syntax error")
    assert problems(quoted)[0].endswith('    condition: "event.x >"\n                         ^')
    block = (
        "rules:\n"
        "  - id: a\n"
        "    trigger: {type: t}\n"
        "    condition: |\n"
        "      event.data.state == 'forced' &&\n"
        "        event.data.count + 'a' > 1\n"
        "    actions: [{kind: invoke, function: f}]\n"
    )
    assert problems(block) == [
        "rules.yaml:6:32: rules[0].condition: found no matching overload for '_>_' "
        "applied to '(string, int)'\n"
        "            event.data.count + 'a' > 1\n"
        "                                   ^"
    ]


def test_cel_error_in_a_folded_string_shows_the_expression() -> None:
    folded = (
        "id: a\ntrigger: {type: t}\ncondition: >\n  event.x >\n  > event.y\n"
        "actions: [{kind: invoke, function: f}]\n"
    )
    (problem,) = problems(folded)
    head, line, caret = problem.split("\n")
    assert head.startswith("rules.yaml:3:12: condition: Syntax error: extraneous input '>'")
    assert line == "    event.x > > event.y"
    assert caret == "    " + " " * 10 + "^"


def test_unknown_field_points_at_its_key() -> None:
    text = "id: a\ntrigger:\n  type: t\n  subjct: x\nactions: [{kind: invoke, function: f}]\n"
    assert problems(text) == [
        "rules.yaml:4:3: trigger.subjct: unknown field (expected type, source, subject)\n"
        "      subjct: x\n"
        "      ^"
    ]


def test_single_rule_and_defaults() -> None:
    (rule,) = parse_rules(yaml.safe_dump(BASE))
    assert rule.id == "r1"
    assert rule.enabled
    assert rule.window is None
    assert rule.trigger.types == (Pattern("app.reading"),)
    (action,) = rule.actions
    assert action.fields["timeout"] == 10.0
    assert isinstance(action.fields["body"], Template)
    assert action.fields["body"].source == "{{ event }}"


def test_window_defaults_and_durations() -> None:
    (rule,) = parse_rules(rule_file(("window",), WINDOW))
    assert rule.window is not None
    assert rule.window.over == 30 * 86400
    assert rule.window.kind == "sliding"
    assert not rule.window.reset
    assert rule.window.group_by is None
    assert [spec.seconds(t) for t in ("500ms", "2m", "1.5h", "2w", "3 d", "3")] == [
        0.5,
        120,
        5400,
        14 * 86400,
        None,
        None,
    ]


PATTERNS = [
    ("app.reading.bp", "app.reading.bp", True),
    ("app.reading.bp", "app.reading.bpx", False),
    ("app.reading.*", "app.reading.bp", True),
    ("app.reading.*", "app.reading.", True),
    ("app.reading.*", "app.readings", False),
    ("alice/*", "alice/arm/left", True),
    ("alice/*", "bob/alice/arm", False),
    ("*", "", True),
    ("*.bp", "app.reading.bp", True),
    ("a*c*e", "abcde", True),
    ("a*c*e", "abcd", False),
    ("a.c", "abc", False),  # a dot is a dot
    ("[x]?", "[x]?", True),  # only * is special
]


@pytest.mark.parametrize(("pattern", "value", "matches"), PATTERNS)
def test_patterns(pattern: str, value: str, matches: bool) -> None:
    assert Pattern(pattern).matches(value) is matches


def test_window_fingerprint_follows_its_meaning() -> None:
    def fingerprint(**window: Any) -> str:
        (rule,) = parse_rules(rule_file(("window",), {**WINDOW, **window}))
        assert rule.window is not None
        return rule.window.fingerprint

    same = fingerprint()
    assert fingerprint(threshold="count >= 11") == same  # what counts is unchanged
    assert fingerprint(reset=True) == same
    assert fingerprint(over="29d") != same
    assert fingerprint(kind="tumbling") != same
    assert fingerprint(group_by="device") != same
    assert fingerprint(value="event.data.x") != same


def test_the_examples_in_the_docs_are_valid() -> None:
    docs = Path(__file__).parents[2] / "docs" / "rules.md"
    blocks = re.findall(r"```yaml\n(.*?)```", docs.read_text(), re.DOTALL)
    assert len(blocks) == 3
    assert [len(parse_rules(block)) for block in blocks] == [1, 1, 2]
