"""The CEL expressions of rules: compiled and type-checked once, refused when too costly.

A rule has up to four expressions: its ``condition`` and, in a window, ``group_by``,
``value`` and ``threshold``. Each is compiled here with ``cel-expr-python`` (the C++ CEL
runtime) against the variables its place allows, its result type is checked, and its
worst-case cost is bounded (see ``roost.rules.cost``). A compile error carries its
position inside the expression; ``roost.rules.spec`` turns that into a position in the
rules file (only the first error of an expression is reported: the rest often follow
from it).

A call into the runtime costs ~1.6 µs whatever the expression (``true`` included), and a
typical condition only ~0.2–0.8 µs more, so the engine also compiles the conditions one
event type reaches as one list (``compile_batch``) and evaluates them in one call.

Pure: compiling and evaluating touch no files, sockets or clocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel

from roost.rules import cost

# The variables each kind of expression sees. ``event`` is the CloudEvent as a map,
# ``device`` the device it is from or about (``roost.rules.engine.device_of``).
_EVENT = {"event": cel.Type.Map(cel.Type.STRING, cel.Type.DYN), "device": cel.Type.STRING}
# Aggregates are dyn so ``avg > 30`` compares a double with an int at run time (the
# checker refuses ``double > int`` between declared types).
_COUNT_ONLY = {"count": cel.Type.INT}
_AGGREGATES = {"count": cel.Type.INT} | dict.fromkeys(("sum", "avg", "min", "max"), cel.Type.DYN)

_ENVS: dict[str, Any] = {}

# The result types a place accepts (CEL type names), dyn being checked at run time.
BOOL = frozenset({"bool", "dyn"})
KEY = frozenset({"string", "int", "uint", "bool", "dyn"})
NUMBER = frozenset({"int", "uint", "double", "dyn"})

_ERROR = re.compile(r"<input>:(\d+):(\d+): (.*)")
_EXPECTING = re.compile(r" expecting (\{[^}]*\}|\S+)")


class ExprProblem(Exception):
    """A refused expression; ``line`` and ``column`` (1-based) are inside the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def _env(scope: str) -> Any:
    env = _ENVS.get(scope)
    if env is None:
        variables = {"event": _EVENT, "count": _COUNT_ONLY, "aggregates": _AGGREGATES}[scope]
        env = _ENVS[scope] = cel.NewEnv(variables=variables)
    return env


@dataclass(frozen=True, eq=False)
class Expr:
    """A compiled expression: ``program.eval(activation)`` gives a ``cel.Value``."""

    source: str
    program: Any
    result: str
    names: frozenset[str]
    cost: int


def compile_expr(source: str, scope: str, accepts: frozenset[str], what: str) -> Expr:
    """Compile ``source`` in ``scope`` ("event", "count" or "aggregates").

    Raises ``ExprProblem`` for a syntax or type error, a result type not in ``accepts``
    (``what`` names what was wanted, e.g. "a bool"), or a cost over the limit.
    """
    if not source.strip():
        raise ExprProblem("empty expression")
    if len(source) > cost.MAX_SOURCE:
        raise ExprProblem(f"longer than {cost.MAX_SOURCE} characters ({len(source)})")
    try:
        program = _env(scope).compile(source)
    except RuntimeError as err:
        raise _first_problem(str(err)) from None
    result = program.return_type().name().lower()
    if result not in accepts:
        raise ExprProblem(f"must be {what}, this is {result}")
    estimate = cost.estimate(program.serialize())
    if estimate.refused:
        line, column = _line_column(source, estimate.offset)
        raise ExprProblem(estimate.refused, line, column)
    return Expr(source, program, result, estimate.names, estimate.cost)


def bind(variables: Mapping[str, Any]) -> Any:
    """The bindings of one evaluation, built once and shared by the expressions that use them."""
    return _env("event").Activation(variables)


def evaluate(expr: Expr, bindings: Any) -> Any:
    """The plain Python value of ``expr``; raises ``EvalError`` when it fails on these values."""
    try:
        value = expr.program.eval(bindings)
    except RuntimeError as err:  # the iteration budget, raised rather than returned
        raise EvalError(_runtime_message(str(err))) from None
    plain = value.value()
    if plain is True or plain is False:  # the common case, and never an error
        return plain
    if value.type() == cel.Type.ERROR:
        raise EvalError(_runtime_message(str(plain)))
    if isinstance(plain, list | dict):
        return value.plain_value()
    if isinstance(plain, bytearray):
        return bytes(plain)
    return plain


def compile_batch(exprs: Sequence[Expr]) -> Any:
    """One program giving the list of the values of ``exprs`` (each compiled already), or
    None if the runtime will not take them together."""
    try:
        return _env("event").compile("[" + ",\n".join(f"({e.source})" for e in exprs) + "]")
    except RuntimeError:
        return None


def evaluate_batch(program: Any, bindings: Any) -> list[Any] | None:
    """The values of a ``compile_batch`` program, or None when any of them failed."""
    try:
        value = program.eval(bindings)
    except RuntimeError:  # the iteration budget, shared by the whole list
        return None
    if value.type() == cel.Type.ERROR:
        return None
    plain: list[Any] = value.plain_value()
    return plain


class EvalError(Exception):
    """An expression that failed on this event (a missing key, a division by zero ...)."""


def _first_problem(text: str) -> ExprProblem:
    """The first error of a CEL compile message, without its snippet or token lists."""
    match = _ERROR.search(text)
    if match is None:
        return ExprProblem(text.removeprefix("INVALID_ARGUMENT: ").strip())
    message = match.group(3).removesuffix(" [INVALID_ARGUMENT]")
    message = _EXPECTING.sub("", message).replace(" (in container '')", "")
    return ExprProblem(message, int(match.group(1)), int(match.group(2)))


def _runtime_message(text: str) -> str:
    """``NOT_FOUND: Key not found in map : "x" [INTERNAL]`` -> ``Key not found in map: "x"``."""
    text = re.sub(r" \[[A-Z_]+\]$", "", text.strip())
    return re.sub(r"^[A-Z_]+: ", "", text).replace(" : ", ": ")


def _line_column(source: str, offset: int) -> tuple[int, int]:
    before = source[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1
