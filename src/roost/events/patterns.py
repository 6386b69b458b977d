"""Which events something reacts to: glob-like patterns over an event's type, source and
subject. A rule's trigger and a function's are the same thing.

A pattern is exact text, or has ``*`` matching any run of characters (``/`` and ``.``
included). Pure and standard library only: the agent matches its edge functions' triggers
with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pattern:
    """A glob-like pattern: exact text, or ``*`` for any run of characters."""

    text: str
    _prefix: str | None = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stars = self.text.count("*")
        prefix = self.text[:-1] if stars == 1 and self.text.endswith("*") else None
        regex = None
        if stars and prefix is None:
            regex = re.compile(".*".join(re.escape(p) for p in self.text.split("*")), re.DOTALL)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_regex", regex)

    @property
    def exact(self) -> bool:
        return "*" not in self.text

    def matches(self, value: str) -> bool:
        if self._prefix is not None:  # "alice/*", "app.reading.*": the common patterns
            return value.startswith(self._prefix)
        if self._regex is not None:
            return self._regex.fullmatch(value) is not None
        return value == self.text


@dataclass(frozen=True)
class Trigger:
    """Which events reach a rule: any of ``types``, and of ``sources`` and ``subjects`` if set."""

    types: tuple[Pattern, ...]
    sources: tuple[Pattern, ...] = ()
    subjects: tuple[Pattern, ...] = ()

    @property
    def filtered(self) -> bool:
        """Whether source or subject patterns narrow the types."""
        return bool(self.sources or self.subjects)

    def matches(self, event: Mapping[str, Any]) -> bool:
        return any(p.matches(str(event.get("type", ""))) for p in self.types) and self.admits(event)

    def admits(self, event: Mapping[str, Any]) -> bool:
        """Source and subject match (the type is the router's concern)."""
        if self.sources and not any(p.matches(str(event.get("source", ""))) for p in self.sources):
            return False
        return not self.subjects or any(
            p.matches(str(event.get("subject") or "")) for p in self.subjects
        )

    def to_dict(self) -> dict[str, list[str]]:
        """The trigger as written: ``{"type": [...], "source": [...], "subject": [...]}``."""
        return {
            "type": [p.text for p in self.types],
            "source": [p.text for p in self.sources],
            "subject": [p.text for p in self.subjects],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trigger:
        """The inverse of ``to_dict``; missing keys are empty."""

        def patterns(key: str) -> tuple[Pattern, ...]:
            return tuple(Pattern(str(text)) for text in data.get(key) or ())

        return cls(patterns("type"), patterns("source"), patterns("subject"))
