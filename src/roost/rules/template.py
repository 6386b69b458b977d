"""Action templates: ``{{ event.data.systolic }}`` placeholders in an action's fields.

The syntax is deliberately tiny: ``{{ path }}`` where a path is a root (``event``,
``device``, ``rule`` or ``window``) followed by ``.name`` or ``[index]`` steps. There are
no expressions, filters, loops or calls, so a template can read a value of the firing and
nothing else; that is why this is not Jinja (whose sandbox is a large surface to trust).
Conditions belong in the rule's CEL condition.

Rendering: a string is written as is, a number as Python writes it, ``true``/``false``
for booleans, lists and maps as compact JSON; a missing value renders as the empty
string (a missing field must not lose the alert it sits in). In *payload* fields
(``body``, ``payload``, ``args``, ``input``, ``data``) a string that is exactly one
placeholder gives the value itself, keeping its JSON type: ``"{{ event.data }}"`` is the
data map, not its text. ``{{`` always opens a placeholder. Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROOTS = ("event", "device", "rule", "window")

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"\s*([A-Za-z_]\w*)((?:\.[A-Za-z_][\w-]*|\[\d+\])*)\s*$")
_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")

Path = tuple[str | int, ...]


class TemplateProblem(Exception):
    """A template that cannot be read; ``column`` is 1-based inside the string."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Template:
    """Literal text and paths, alternating: ``parts[0]``, ``paths[0]``, ``parts[1]`` ..."""

    source: str
    parts: tuple[str, ...]
    paths: tuple[Path, ...]

    def render(self, context: Mapping[str, Any]) -> str:
        out = [self.parts[0]]
        for path, text in zip(self.paths, self.parts[1:], strict=True):
            out += [as_text(lookup(context, path)), text]
        return "".join(out)

    def value(self, context: Mapping[str, Any]) -> Any:
        """The value itself when the template is one placeholder alone, else its text."""
        if len(self.paths) == 1 and self.parts == ("", ""):
            return lookup(context, self.paths[0])
        return self.render(context)


def parse(text: str) -> Template | str:
    """A ``Template``, or the string itself when it has no placeholder."""
    if "{{" not in text:
        return text
    parts: list[str] = []
    paths: list[Path] = []
    start = 0
    for match in _PLACEHOLDER.finditer(text):
        literal = text[start : match.start()]
        if "{{" in literal:
            raise TemplateProblem("'{{' without its closing '}}'", start + literal.index("{{") + 1)
        parts.append(literal)
        paths.append(_path(match.group(1), match.start() + 1))
        start = match.end()
    rest = text[start:]
    if "{{" in rest:
        raise TemplateProblem("'{{' without its closing '}}'", start + rest.index("{{") + 1)
    parts.append(rest)
    return Template(text, tuple(parts), tuple(paths))


def _path(inner: str, column: int) -> Path:
    match = _PATH.match(inner)
    if match is None:
        raise TemplateProblem(
            f"'{{{{{inner}}}}}' is not a path like {{{{ event.data.name }}}} "
            "(templates read values; conditions go in the rule's condition)",
            column,
        )
    root = match.group(1)
    if root not in ROOTS:
        raise TemplateProblem(f"unknown name '{root}' (use {', '.join(ROOTS)})", column)
    steps: list[str | int] = [root]
    for name, index in _STEP.findall(match.group(2)):
        steps.append(name if name else int(index))
    return tuple(steps)


def lookup(context: Mapping[str, Any], path: Path) -> Any:
    """The value at ``path``, or None when any step is missing."""
    value: Any = context
    for step in path:
        # type() first: the common case, without the slower ABC check
        if type(value) is dict or (isinstance(step, str) and isinstance(value, Mapping)):
            value = value.get(step)
        elif isinstance(step, int) and isinstance(value, Sequence) and not isinstance(value, str):
            value = value[step] if step < len(value) else None
        else:
            return None
    return value


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def has_template(value: Any) -> bool:
    """Whether a template stands anywhere inside ``value`` (nested lists and maps)."""
    if isinstance(value, Template):
        return True
    if isinstance(value, list):
        return any(has_template(v) for v in value)
    if isinstance(value, dict):
        return any(has_template(v) for v in value.values())
    return False


def renderer(value: Any, typed: bool) -> Callable[[Mapping[str, Any]], Any]:
    """A function that renders ``value`` (templates inside lists and maps too) against a
    context; with ``typed`` a lone placeholder keeps its value's type. Parts without a
    template are returned as they are, shared between renderings: read them, never change
    them."""
    if isinstance(value, Template):
        if value.parts == ("", ""):  # one placeholder alone
            path = value.paths[0]
            if typed:
                return lambda context: lookup(context, path)
            return lambda context: as_text(lookup(context, path))
        return value.render
    if isinstance(value, list) and has_template(value):
        items = [renderer(v, typed) for v in value]
        return lambda context: [render(context) for render in items]
    if isinstance(value, dict) and has_template(value):
        entries = [(k, renderer(v, typed)) for k, v in value.items()]
        return lambda context: {k: render(context) for k, render in entries}
    return lambda _context: value


def render_value(value: Any, context: Mapping[str, Any], typed: bool) -> Any:
    """Render ``value`` once (``renderer`` when the same value is rendered again and again)."""
    return renderer(value, typed)(context)
