"""A rules file as its author wrote it: YAML values with where each one stands.

``Source`` loads the YAML once (safe loader: plain data only) and keeps, for every path
(``("rules", 0, "actions", 1, "kind")``), the position of its key and of its value, so a
problem can be reported as ``rules.yaml:12:11: rules[0].actions[1].kind: ...`` followed
by the file's line and a caret under the spot. A CEL error's position inside an expression
is moved to its position in the file when the expression is written so that the two line
up (plain, quoted without escapes, or a ``|`` block); otherwise the expression itself is
shown with the caret. Pure: it reads the text it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from roost.errors import RuleError

PathKey = tuple[str | int, ...]


def spell(path: PathKey) -> str:
    """``("rules", 0, "kind")`` -> ``rules[0].kind``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


@dataclass
class Source:
    text: str
    filename: str = "<rules>"
    data: Any = None
    problems: list[str] = field(default_factory=list)
    _values: dict[PathKey, yaml.Node] = field(default_factory=dict)
    _keys: dict[PathKey, yaml.Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        loader = yaml.SafeLoader(self.text)
        try:
            node = loader.get_single_node()
            if node is not None:
                self._index(node, ())
                self.data = loader.construct_document(node)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            self._add(where, "", f"not valid YAML: {err.problem or err.context}")
        except yaml.YAMLError as err:
            self._add((1, 1), "", f"not valid YAML: {err}")
        finally:
            loader.dispose()

    def _index(self, node: yaml.Node, path: PathKey) -> None:
        self._values[path] = node
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                step = str(key.value)
                if (*path, step) in self._keys:
                    self._add(self._start(key), spell((*path, step)), "duplicate key")
                self._keys[(*path, step)] = key
                self._index(value, (*path, step))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, (*path, index))

    def problem(self, path: PathKey, message: str, at_key: bool = False) -> None:
        """Record a problem with the value at ``path`` (or its key)."""
        node = (self._keys if at_key else self._values).get(path) or self._nearest(path)
        self._add(self._start(node), spell(path), message)

    def expression_problem(self, path: PathKey, message: str, line: int, column: int) -> None:
        """Record a problem at ``line``:``column`` (1-based) inside the expression at ``path``."""
        node = self._values.get(path)
        where = self._inside(node, line, column) if isinstance(node, yaml.ScalarNode) else None
        if where is not None:
            self._add(where, spell(path), message)
            return
        expression = str(node.value if node is not None else "").split("\n")
        snippet = expression[line - 1] if line <= len(expression) else ""
        start = self._start(node) if node is not None else (1, 1)
        self._add(start, spell(path), message, (snippet, column))

    def raise_if_any(self) -> None:
        if self.problems:
            raise RuleError(self.problems)

    def _nearest(self, path: PathKey) -> yaml.Node | None:
        while path and path not in self._values:
            path = path[:-1]
        return self._values.get(path)

    @staticmethod
    def _start(node: yaml.Node | None) -> tuple[int, int]:
        if node is None:
            return (1, 1)
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def _inside(self, node: yaml.ScalarNode, line: int, column: int) -> tuple[int, int] | None:
        """Where in the file a position inside a scalar's value is, if the text lines up."""
        lines = self.text.split("\n")
        mark = node.start_mark
        if node.style == "|":
            at = mark.line + line  # the block's text starts on the line after the '|'
            if at >= len(lines) or mark.line + 1 >= len(lines):
                return None
            opening = lines[mark.line + 1]
            indent = len(opening) - len(opening.lstrip(" "))
            wanted = node.value.split("\n")[line - 1]
            return (at + 1, indent + column) if lines[at][indent:] == wanted else None
        if line != 1 or "\n" in node.value:
            return None
        quote = 1 if node.style in ("'", '"') else 0
        written = lines[mark.line][mark.column + quote : mark.column + quote + len(node.value)]
        return (mark.line + 1, mark.column + quote + column) if written == node.value else None

    def _add(
        self,
        where: tuple[int, int],
        path: str,
        message: str,
        snippet: tuple[str, int] | None = None,
    ) -> None:
        line, column = where
        head = f"{self.filename}:{line}:{column}: " + (f"{path}: " if path else "") + message
        if snippet is None:
            lines = self.text.split("\n")
            snippet = (lines[line - 1] if line <= len(lines) else "", column)
        text, caret = snippet
        self.problems.append(f"{head}\n    {text}\n    {' ' * (caret - 1)}^")
