"""The cost limit: what it lets through, what it refuses and why, and where it points."""

from __future__ import annotations

import pytest

from roost.rules import cost
from roost.rules.expressions import BOOL, ExprProblem, compile_expr

ADMITTED = [
    ("event.data.systolic > 140 || event.data.diastolic > 90", 11),
    ("event.data.state == 'forced'", 5),
    ("'urgent' in event.data.tags", 5 + cost.SIZE),  # once, outside any loop
    ("event.subject + '/x' == 'a/x'", 6 + cost.SIZE),
    ("event.data.xs.exists(x, x in ['a', 'b'])", None),  # a literal list is small
    ("event.data.xs.exists(x, x.name.startsWith('a'))", None),  # the element's own string
    ("event.data.xs.exists(x, x == event.data.t)", None),  # one side is the element
    ("event.data.xs.exists(x, int(x.a) + int(x.b) > 10)", None),
    ("event.data.xs.exists(x, x.a + x.b > 10)", None),  # both from the element
    ("event.data.xs.exists_one(x, x > 3)", None),  # adds ints to its count
    ("event.data.xs.all(x, x.v > 0 && x.w < 10 && x.name == 'a')", None),
    # Nested loops share the runtime's 10,000 iterations: cheap bodies are fine.
    ("event.data.xs.exists(x, event.data.ys.exists(y, x == y))", None),
]


@pytest.mark.parametrize(("source", "expected"), ADMITTED)
def test_admitted(source: str, expected: int | None) -> None:
    expr = compile_expr(source, "event", BOOL, "a bool")
    assert expr.cost <= cost.COST_LIMIT
    if expected is not None:
        assert expr.cost == expected


MAP = (
    "map() and filter() copy the list they build at every element; "
    "test the elements with exists(), all() or exists_one() instead"
)
LOOP = ", once for each element of a loop"
REFUSED = [
    ("event.data.xs.map(x, x).size() > 0", MAP, 18),
    ("event.data.xs.filter(x, x > 1).size() > 0", MAP, 21),
    ("[1, 2].map(x, x * 2) == [2, 4]", MAP, 11),
    ("event.data.xs.exists(x, x in event.data.ys)", "'in' searches a list" + LOOP, 27),
    (
        "event.data.xs.exists(x, event.data.s.matches('a*b'))",
        "'matches' scans a string read from the event" + LOOP,
        45,
    ),
    (
        "event.data.xs.exists(x, event.data.s.contains(x))",
        "'contains' scans a string read from the event" + LOOP,
        46,
    ),
    (
        "event.data.xs.exists(x, size(event.data.s + x) < 0)",
        "'+' may join strings or lists (convert numbers with int() or double())" + LOOP,
        43,
    ),
    (
        "event.data.xs.all(x, event.data.a == event.data.b)",
        "'==' compares two values read from the event" + LOOP,
        35,
    ),
]


@pytest.mark.parametrize(("source", "reason", "column"), REFUSED)
def test_refused(source: str, reason: str, column: int) -> None:
    with pytest.raises(ExprProblem) as caught:
        compile_expr(source, "event", BOOL, "a bool")
    assert caught.value.message.startswith(f"too costly: {reason} (estimated cost ")
    assert caught.value.message.endswith(f", limit {cost.COST_LIMIT:,})")
    assert (caught.value.line, caught.value.column) == (1, column)


def test_a_long_loop_body_is_refused() -> None:
    def body(terms: int) -> str:
        return "event.data.xs.all(x, " + " && ".join([f"x.f{i} > 0" for i in range(terms)]) + ")"

    compile_expr(body(15), "event", BOOL, "a bool")
    with pytest.raises(ExprProblem) as caught:
        compile_expr(body(30), "event", BOOL, "a bool")
    assert caught.value.message == (
        "too costly: a loop does 153 steps for each of up to 10,000 elements "
        "(estimated cost 1,530,006, limit 1,000,000)"
    )


def test_names_read() -> None:
    expr = compile_expr("count >= 3 && avg > 2", "aggregates", BOOL, "a bool")
    assert expr.names == {"count", "avg"}
