"""Label selectors, table-driven: parsing, matching and printing back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import ValidationError
from roost.fleet.selectors import Selector, Term

PARSE = [
    ("", ()),
    ("  ,  ,", ()),
    ("role=router", (Term("role", "=", "router"),)),
    (" role = router ", (Term("role", "=", "router"),)),
    ("tier!=test", (Term("tier", "!=", "test"),)),
    ("gpu", (Term("gpu", "exists"),)),
    (
        "role=router,site!=hq,gpu",
        (Term("role", "=", "router"), Term("site", "!=", "hq"), Term("gpu", "exists")),
    ),
    ("role=", (Term("role", "=", ""),)),
    # Only the first operator splits; the rest belongs to the value.
    ("expr=a=b", (Term("expr", "=", "a=b"),)),
    ("a!=b=c", (Term("a", "!=", "b=c"),)),
    ("example.com/zone=eu-1", (Term("example.com/zone", "=", "eu-1"),)),
]


@pytest.mark.parametrize(("text", "terms"), PARSE)
def test_parse(text: str, terms: tuple[Term, ...]) -> None:
    assert Selector.parse(text).terms == terms


@pytest.mark.parametrize("text", ["=router", " = router", "!=test", "role=a,=b"])
def test_a_term_without_a_key_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="no label key"):
        Selector.parse(text)


LABELS = {"role": "router", "site": "hq", "gpu": "", "empty": ""}

MATCH = [
    ("", True),
    ("role=router", True),
    ("role=nas", False),
    ("role!=nas", True),
    ("role!=router", False),
    # != also holds when the label is absent, as in Kubernetes.
    ("tier!=test", True),
    ("tier=test", False),
    ("gpu", True),
    ("tpu", False),
    # An empty value is a value: the label exists and equals "".
    ("empty=", True),
    ("missing=", False),
    ("role=router,site=hq", True),
    ("role=router,site=branch", False),
    ("role=router,gpu,tier!=test", True),
    ("role=router,tpu", False),
    # Values compare exactly: no prefix, no case folding.
    ("role=route", False),
    ("role=Router", False),
]


@pytest.mark.parametrize(("text", "expected"), MATCH)
def test_matches(text: str, expected: bool) -> None:
    assert Selector.parse(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("", ""),
        ("role=router", "role=router"),
        (" role = router , gpu ,tier!=test", "role=router,gpu,tier!=test"),
    ],
)
def test_str_is_the_normal_form(text: str, printed: str) -> None:
    assert str(Selector.parse(text)) == printed


_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=12)
_term = st.one_of(
    st.builds(Term, _key, st.sampled_from(["=", "!="]), _value),
    st.builds(Term, _key, st.just("exists")),
)


@given(st.lists(_term, max_size=5), st.dictionaries(_key, _value, max_size=5))
def test_printing_and_parsing_again_keeps_the_meaning(
    terms: list[Term], labels: dict[str, str]
) -> None:
    selector = Selector(tuple(terms))
    again = Selector.parse(str(selector))
    assert again == selector
    assert again.matches(labels) == all(t.matches(labels) for t in terms)
