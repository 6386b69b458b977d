"""Label selectors: ``role=router,site=hq``, ``tier!=test``, ``gpu`` (has the label).

Pure. Every term must hold for a device to match; the empty selector matches all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from roost.errors import ValidationError


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # "=", "!=" or "exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        terms: list[Term] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "!=" in part:
                key, value = part.split("!=", 1)
                op = "!="
            elif "=" in part:
                key, value = part.split("=", 1)
                op = "="
            else:
                key, value, op = part, "", "exists"
            key = key.strip()
            if not key:
                raise ValidationError(f"selector term {part!r} has no label key")
            terms.append(Term(key, op, value.strip()))
        return cls(tuple(terms))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(term.matches(labels) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(
            t.key if t.op == "exists" else f"{t.key}{t.op}{t.value}" for t in self.terms
        )
