"""A worst-case cost for a compiled CEL expression, so costly ones are refused up front.

``cel-expr-python`` offers no cost estimate, only the runtime's own iteration budget:
one evaluation may run at most ``SIZE`` (10,000) comprehension iterations in all, nested
or not, and fails past it. That budget does not bound the work done *per* iteration, and
measured on this runtime, with an event list of 9,000 numbers or a 60 KB string:

- ``xs.map(x, x)`` took 3.9 s: ``map`` (and ``filter``) append to their result list by
  copying it, quadratic in the list;
- ``xs.exists(x, x in event.data.ys)`` 0.6 s, ``xs.exists(x, s.matches('a*b'))`` 0.9 s,
  ``xs.exists(x, size(s + s) < 0)`` 2.6 s, ``xs.exists(x, (xs + xs).size() < 0)`` 18 s.

So the estimate walks the checked AST (the ``CheckedExpr`` protobuf that
``Expression.serialize()`` returns, read here with a small wire-format reader) and charges
every node 1, and ``SIZE`` for an operation whose work grows with the size of a *big*
operand: ``+`` of strings, bytes or lists; ``in``; ``matches``, ``contains``,
``startsWith``, ``endsWith``; a comparison of two big values. A value is *small* when it
is a literal, or derived from a loop's own element (which may be long only once over the
whole loop, since an event is bounded); anything else read from the event, and a loop's
accumulator, is big. A loop's body costs its own nodes once per iteration, and at most
``SIZE`` iterations run in all, so the total is::

    cost = (nodes outside loops + SIZE per big operation there)
         + SIZE * (the costliest loop body, per iteration)

An expression is refused when that passes ``COST_LIMIT`` (a cheap loop body of up to ~100
nodes over an event list passes; a big operation inside a loop never does), when it has
more than ``MAX_NODES`` nodes, or when its text is longer than ``MAX_SOURCE``. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

SIZE = 10_000
COST_LIMIT = 1_000_000
MAX_NODES = 300
MAX_SOURCE = 2_000

# ``_+_`` overloads that do constant work; the others join strings, bytes or lists.
_CONSTANT_ADD = frozenset(
    {
        "add_int64",
        "add_uint64",
        "add_double",
        "add_duration_duration",
        "add_duration_timestamp",
        "add_timestamp_duration",
    }
)
_COMPARISONS = frozenset({"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_"})
_TEXT = frozenset({"matches", "contains", "startsWith", "endsWith"})
_ACCUMULATORS = frozenset({"@result", "__result__"})


@dataclass(frozen=True)
class Estimate:
    """The cost of an expression, the identifiers it reads, and why it is refused ("")."""

    cost: int
    names: frozenset[str]
    refused: str = ""
    offset: int = 0  # where in the source the refusal points (code points)


def estimate(serialized: bytes) -> Estimate:
    """Estimate the cost of a ``cel.Expression`` from its ``serialize()`` bytes."""
    any_message = _message(serialized)
    checked = _message(_one(any_message, 2))
    overloads: dict[int, frozenset[str]] = {}
    for entry in checked.get(2, []):
        fields = _message(_bytes(entry))
        reference = _message(_one(fields, 2))
        overloads[_int(fields, 1)] = frozenset(_text(v) for v in reference.get(3, []))
    positions: dict[int, int] = {}
    source_info = _message(_one(checked, 5)) if 5 in checked else {}
    for entry in source_info.get(4, []):
        fields = _message(_bytes(entry))
        positions[_int(fields, 1)] = _int(fields, 2)
    walk = _Walk(overloads)
    total = walk.expr(_one(checked, 4), frozenset())
    cost = total.once + SIZE * total.per_iteration
    names = frozenset(walk.names)
    if walk.nodes > MAX_NODES:
        return Estimate(cost, names, f"too large: {walk.nodes} nodes, at most {MAX_NODES}")
    if cost <= COST_LIMIT:
        return Estimate(cost, names)
    loop = f"a loop does {total.per_iteration} steps for each of up to {SIZE:,} elements"
    reason, node = walk.culprit or (loop if total.per_iteration else "too much work", 0)
    message = f"too costly: {reason} (estimated cost {cost:,}, limit {COST_LIMIT:,})"
    return Estimate(cost, names, message, positions.get(node, 0))


@dataclass
class _Cost:
    once: int
    per_iteration: int = 0
    small: bool = False
    accumulator: bool = False  # a loop's own result so far (what map and filter append to)


@dataclass
class _Walk:
    overloads: dict[int, frozenset[str]]
    nodes: int = 0
    names: set[str] = field(default_factory=set)
    culprit: tuple[str, int] | None = None
    _loop_depth: int = 0

    def expr(self, raw: bytes, small_names: frozenset[str]) -> _Cost:
        self.nodes += 1
        fields = _message(raw)
        node = _int(fields, 2)
        if 3 in fields:  # a literal
            return _Cost(1, small=True)
        if 4 in fields:
            name = _text(_one(_message(_one(fields, 4)), 1))
            self.names.add(name)
            return _Cost(1, small=name in small_names, accumulator=name in _ACCUMULATORS)
        if 5 in fields:
            select = _message(_one(fields, 5))
            operand = self.expr(_one(select, 1), small_names)
            return _Cost(1 + operand.once, operand.per_iteration, operand.small)
        if 6 in fields:
            return self._call(node, _message(_one(fields, 6)), small_names)
        if 7 in fields:
            elements = _message(_one(fields, 7)).get(1, [])
            return self._sum([self.expr(_bytes(e), small_names) for e in elements])
        if 8 in fields:
            parts: list[_Cost] = []
            for entry in _message(_one(fields, 8)).get(2, []):
                entry_fields = _message(_bytes(entry))
                parts += [self.expr(_bytes(v), small_names) for v in entry_fields.get(3, [])]
                parts += [self.expr(_bytes(v), small_names) for v in entry_fields.get(4, [])]
            return self._sum(parts)
        if 9 in fields:
            return self._comprehension(_message(_one(fields, 9)), small_names)
        return _Cost(1)

    def _sum(self, parts: list[_Cost]) -> _Cost:
        return _Cost(
            1 + sum(p.once for p in parts),
            max((p.per_iteration for p in parts), default=0),
            all(p.small for p in parts),
        )

    def _call(
        self, node: int, call: dict[int, list[bytes | int]], small_names: frozenset[str]
    ) -> _Cost:
        function = _text(_one(call, 2)) if 2 in call else ""
        operands = [self.expr(_bytes(t), small_names) for t in call.get(1, [])]
        operands += [self.expr(_bytes(a), small_names) for a in call.get(3, [])]
        total = self._sum(operands)
        reason = self._linear(node, function, operands)
        if reason:
            total.once += SIZE
            if self._loop_depth and self.culprit is None:
                repeated = "" if reason.startswith("map()") else ", once for each element of a loop"
                self.culprit = (reason + repeated, node)
        return total

    def _linear(self, node: int, function: str, operands: list[_Cost]) -> str:
        """Why this call's work grows with the size of an operand, or ""."""
        big = [not o.small for o in operands]
        overloads = self.overloads.get(node)
        if function == "_+_" and any(big) and not (overloads and overloads <= _CONSTANT_ADD):
            if any(o.accumulator for o in operands):
                return (
                    "map() and filter() copy the list they build at every element; "
                    "test the elements with exists(), all() or exists_one() instead"
                )
            return "'+' may join strings or lists (convert numbers with int() or double())"
        if function == "@in" and len(big) == 2 and big[1]:
            return "'in' searches a list"
        if function in _COMPARISONS and all(big):
            return f"'{function.strip('_')}' compares two values read from the event"
        if function in _TEXT and any(big):
            return f"'{function}' scans a string read from the event"
        return ""

    def _comprehension(
        self, loop: dict[int, list[bytes | int]], small_names: frozenset[str]
    ) -> _Cost:
        iter_range = self.expr(_one(loop, 2), small_names)
        init = self.expr(_one(loop, 4), small_names)
        inner = small_names | {_text(v) for k in (1, 8) for v in loop.get(k, []) if v}
        self._loop_depth += 1
        body = [self.expr(_one(loop, k), inner) for k in (5, 6)]
        self._loop_depth -= 1
        result = self.expr(_one(loop, 7), small_names)
        per_iteration = sum(b.once for b in body)
        return _Cost(
            1 + iter_range.once + init.once + result.once,
            max(per_iteration, *(p.per_iteration for p in (iter_range, init, result, *body))),
        )


# A minimal protobuf wire-format reader: enough for the CheckedExpr of cel.expr.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            length, i = _varint(buf, i)
            yield number, buf[i : i + length]
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def _message(buf: bytes) -> dict[int, list[bytes | int]]:
    fields: dict[int, list[bytes | int]] = {}
    for number, value in _fields(buf):
        fields.setdefault(number, []).append(value)
    return fields


def _one(fields: dict[int, list[bytes | int]], number: int) -> bytes:
    values = fields.get(number)
    return _bytes(values[-1]) if values else b""


def _bytes(value: bytes | int) -> bytes:
    return value if isinstance(value, bytes) else b""


def _int(fields: dict[int, list[bytes | int]], number: int) -> int:
    values = fields.get(number)
    value = values[-1] if values else 0
    return value if isinstance(value, int) else 0


def _text(value: bytes | int) -> str:
    return value.decode() if isinstance(value, bytes) else ""
